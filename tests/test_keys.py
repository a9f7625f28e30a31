"""Every Redis key is built in one of two modules: ``agents/keys.py`` (the graph's) and
``serve_app/keys.py`` (the serving layer's). A scan of the code fails on a key string built
anywhere else: a literal of the ``ac:`` prefix, a hash tag (``{...}`` in a key), or the keys
modules' ``PREFIX`` taken elsewhere. Docstrings and comments may name keys."""

from __future__ import annotations

import ast
import json
import re
import uuid
from pathlib import Path

from redis.asyncio import Redis

from agents import keys as graph_keys
from agents.settings import PROJECT_ROOT
from serve_app import keys as serving_keys
from serve_app.ops.leaks import find_orphans

KEYS_MODULES = {"agents/keys.py", "serve_app/keys.py"}
SCANNED = ("agents", "serve_app")
HOLE = "\0"  # where an f-string's replacement field was
PREFIXED = re.compile(r"\bac:")
# In an f-string a literal brace is deliberate ({{): one before a name starts a hash tag.
F_TAG = re.compile(r"\{[\w*\0]")
# In a plain string ``{name}`` is often a format field: a tag is one followed by ``:``,
# ``_`` or the end, at the start or after a ``:``.
TAG = re.compile(r"(?:^|:)\{[\w:*.-]+\}(?=[:_]|$)")


def docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring constants of a module, its classes and functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) \
                and node.body and isinstance(node.body[0], ast.Expr) \
                and isinstance(node.body[0].value, ast.Constant):
            found.add(id(node.body[0].value))
    return found


def key_shape(node: ast.AST) -> str | None:
    """What makes a string literal a key: None when nothing does."""
    if isinstance(node, ast.JoinedStr):
        text = "".join(part.value if isinstance(part, ast.Constant) else HOLE
                       for part in node.values)
        if F_TAG.search(text):
            return "a hash tag"
    elif isinstance(node, ast.Constant) and isinstance(node.value, str):
        text = node.value
        if TAG.search(text):
            return "a hash tag"
    else:
        return None
    return "the ac: prefix" if PREFIXED.search(text) else None


def violations_in(path: Path, root: Path = PROJECT_ROOT) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = docstrings(tree)
    where = path.relative_to(root).as_posix()
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.JoinedStr):
            skip |= {id(part) for part in node.values}  # judged as one string
        shape = key_shape(node)
        if isinstance(node, ast.ImportFrom) and node.module in ("agents.keys", "serve_app.keys") \
                and any(alias.name == "PREFIX" for alias in node.names):
            shape = "the keys module's PREFIX"
        if shape:
            found.append((node.lineno, f"{where}:{node.lineno}: a key built outside the keys "
                                       f"modules ({shape})"))
    return [message for _, message in sorted(found)]


def violations(root: Path = PROJECT_ROOT) -> list[str]:
    found = []
    for package in SCANNED:
        for path in sorted((root / package).rglob("*.py")):
            if path.relative_to(root).as_posix() not in KEYS_MODULES:
                found += violations_in(path, root)
    return found


def test_every_key_is_built_in_a_keys_module():
    assert violations() == []


def test_a_key_built_elsewhere_is_seen(tmp_path: Path):
    """The scan itself, over a copy of the layout: each shape planted in a module is
    reported with its file and line; a format template, JSON, a docstring naming a key and
    the keys modules are not."""
    (tmp_path / "serve_app" / "runs").mkdir(parents=True)
    (tmp_path / "serve_app" / "keys.py").write_text('A = "ac:threads"\n')  # where keys belong
    probe = tmp_path / "serve_app" / "runs" / "_key_probe.py"
    probe.write_text('"""Docstrings may say ``ac:{<thread>}:thread``."""\n'
                     'from serve_app.keys import PREFIX\n'
                     'A = "ac:regressions"\n'
                     'B = "{crons}:all"\n'
                     'C = f"ac:{{{A}}}:thread"\n'
                     'D = f"{{shard{B}}}"\n'
                     'E = "{url}/api/chat".format(url=A)\n'
                     'F = f\'{{"query": {A}}}\'\n')
    assert violations(tmp_path) == [
        f"serve_app/runs/_key_probe.py:{line}: a key built outside the keys modules ({shape})"
        for line, shape in [(2, "the keys module's PREFIX"), (3, "the ac: prefix"),
                            (4, "a hash tag"), (5, "a hash tag"), (6, "a hash tag")]]


def test_every_key_of_a_thread_is_under_its_prefix():
    """What deleting a thread and the leak check rely on: the thread's keys, its
    checkpoints' and its specialists' effect ledger entries start with its prefix."""
    thread, sub = "t:1", "t:1/coder/task-7"
    prefix = serving_keys.thread_prefix(thread)
    built = [serving_keys.thread_key(thread), serving_keys.run_key(thread, "r"),
             serving_keys.audit_key(thread), graph_keys.checkpoints_key(thread),
             graph_keys.effect_key(thread, "call_1"), graph_keys.effect_key(sub, "call_1")]
    assert all(key.startswith(prefix) for key in built), built
    assert len(set(built)) == len(built)
    assert graph_keys.checkpoints_key(sub) == graph_keys.checkpoints_key(thread)  # one hash
    assert {serving_keys.split_thread_key(key)[0] for key in built} == {thread}
    for other in (serving_keys.ready_key("default"), serving_keys.user_runs_key("alice"),
                  serving_keys.assistant_key("a"), serving_keys.ALL_THREADS):
        assert serving_keys.split_thread_key(other) is None


async def test_the_leak_check_reads_ledger_entries_as_keys_of_their_thread(redis_client: Redis):
    """A deleted thread's ledger entry is an orphan, unless an audit list kept by policy
    names it; a live thread's is not (no special case for the ledger's layout)."""
    prefix = f"keys-{uuid.uuid4().hex[:8]}"
    live, gone, kept = (f"{prefix}-{name}" for name in ("live", "gone", "kept"))
    await redis_client.hset(serving_keys.thread_key(live), "status", "idle")
    entries = {t: graph_keys.effect_key(f"{t}/coder/task-1", "call_1") for t in (live, gone, kept)}
    for key in entries.values():
        await redis_client.set(key, "refund issued", ex=60)
    audit = serving_keys.audit_key(kept)
    await redis_client.rpush(audit, json.dumps({"effect_key": entries[kept]}))
    await redis_client.expire(audit, 60)
    try:
        assert await find_orphans(redis_client, prefix) == [(entries[gone], "its thread is gone")]
    finally:
        await redis_client.delete(serving_keys.thread_key(live), audit, *entries.values())
