"""The tools against a real Redis (RediSearch + RedisJSON) and real subprocesses."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from agents.settings import Settings
from agents.tools import build_toolbox, prepare_tools
from agents.tools.backoffice import (
    CUSTOMER_COUNT,
    EFFECTS,
    ORDER_COUNT,
    ORDERS,
    REFUNDS,
    effect_counts,
    order_amount,
    records_key,
    seed_backoffice,
)
from agents.tools.backoffice import backoffice_tools as build_backoffice_tools
from agents.tools.corpus import INDEX, PREFIX, VERSION_KEY, index_corpus, load_corpus
from agents.tools.sandbox import run_sandboxed

TOOL_NAMES = {"search_corpus", "read_document", "run_python", "review_code", "issue_refund",
              "delete_records", "remember", "recall"}
CORPUS_DIR = Path(__file__).resolve().parent.parent / "data" / "corpus"


@pytest.fixture(scope="session")
async def toolbox(redis_client: Redis, settings: Settings) -> dict:
    await prepare_tools(redis_client, settings)
    return build_toolbox(redis_client, settings)


async def call(toolbox: dict, name: str, **args) -> dict:
    return json.loads(await toolbox[name].ainvoke(args))


def limited(settings: Settings, **sandbox) -> Settings:
    return settings.model_copy(update={"sandbox": settings.sandbox.model_copy(update=sandbox)})


def alive(pid: int) -> bool:
    """Running (a zombie counts as dead: it only waits to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone, or reaped while being read
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def eventually_dead(pid: int, timeout_s: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return not alive(pid)


# --------------------------------------------------------------------------- the toolbox


def test_toolbox_has_every_tool_with_a_progress_line(toolbox):
    assert set(toolbox) == TOOL_NAMES
    samples = {"query": "aof", "doc_id": "redis-streams", "code": "x", "amount": 5,
               "order_id": "42", "customer_id": "7", "reason": "r", "persist": False,
               "preference": "tea"}
    for name, tool in toolbox.items():
        assert tool.coroutine is not None, name
        progress = tool.metadata["progress"].format(**samples)
        assert progress.endswith("...") and "{" not in progress, name
        fields = tool.args_schema.model_fields
        assert fields and all(f.description for f in fields.values()), name
    assert toolbox["issue_refund"].metadata["progress"].format(**samples) == (
        "Issuing a refund of $5 to order 42..."
    )


# --------------------------------------------------------------------------- corpus


@pytest.mark.parametrize(("query", "expected"), [
    ("how Redis persistence works", "redis-persistence"),
    ("redis persistence", "redis-persistence"),
    ("What does appendfsync everysec lose?", "redis-persistence"),
    ("redis streams", "redis-streams"),
    ("human in the loop approval", "langgraph-interrupts"),
    ("max ongoing requests autoscaling", "ray-serve-autoscaling"),
    ("refund policy", "refund-policy"),
])
async def test_search_ranks_the_right_document_first(toolbox, query, expected):
    out = await call(toolbox, "search_corpus", query=query)
    assert out["query"] == query
    hits = out["hits"]
    assert hits[0]["doc_id"] == expected
    assert 1 <= len(hits) <= 3
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    for hit in hits:
        assert set(hit) == {"doc_id", "title", "snippet", "score"}
        assert 0 < len(hit["snippet"]) <= 200


async def test_search_limit(toolbox):
    assert len((await call(toolbox, "search_corpus", query="redis", limit=5))["hits"]) == 5
    with pytest.raises(ValueError):  # pydantic's ValidationError is a ValueError
        await call(toolbox, "search_corpus", query="redis", limit=0)


@pytest.mark.parametrize("query", [
    "foo|bar -@{}", "*", "Persistência 日本語 🚀 é", "@title:{x} ~y %z% \"q", "(", "-", "\"",
    "no such doc",  # a union of RediSearch stop words that crashes its 2.10 server
    "is not such", "the", "a | b", "x" * 500, "$param =>{$weight: 2}", "redis* -aof ~rdb",
])
async def test_weird_queries_never_break_the_search(toolbox, redis_client, query):
    out = await call(toolbox, "search_corpus", query=query)
    assert isinstance(out["hits"], list)
    assert await redis_client.ping()  # the server is still up


async def test_a_query_of_only_stop_words_still_searches_its_words(toolbox):
    out = await call(toolbox, "search_corpus", query="how does it work")
    assert out["hits"]


@pytest.mark.parametrize("query", ["", "   \n"])
async def test_empty_query_raises(toolbox, query):
    with pytest.raises(ValueError, match="empty"):
        await call(toolbox, "search_corpus", query=query)


async def test_read_document(toolbox):
    doc = await call(toolbox, "read_document", doc_id="redis-persistence")
    assert doc["doc_id"] == "redis-persistence"
    assert doc["title"].startswith("Redis persistence")
    assert "appendfsync" in doc["text"] and "everysec" in doc["text"]
    with pytest.raises(ValueError, match="no document 'nope'; use search_corpus"):
        await call(toolbox, "read_document", doc_id="nope")


def test_the_corpus_is_well_formed():
    docs = load_corpus(CORPUS_DIR)
    assert 10 <= len(docs) <= 12
    for doc in docs:
        text = (CORPUS_DIR / f"{doc.doc_id}.md").read_text()
        assert text.startswith("# "), doc.doc_id
        assert 150 <= len(text.split()) <= 400, doc.doc_id


async def test_prepare_tools_is_idempotent_and_safe_concurrently(toolbox, redis_client, settings):
    before = await call(toolbox, "search_corpus", query="redis streams")
    await redis_client.delete(VERSION_KEY)  # force a re-index that every caller races to do
    clients = [Redis.from_url(settings.redis_url) for _ in range(4)]
    try:
        wrote = await asyncio.gather(*(index_corpus(c, CORPUS_DIR) for c in clients))
        await asyncio.gather(*(prepare_tools(c, settings) for c in clients))
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    assert sorted(wrote) == [False, False, False, True]
    assert await index_corpus(redis_client, CORPUS_DIR) is False  # unchanged: no re-index
    info = await redis_client.ft(INDEX).info()
    assert int(info["num_docs"]) == len(load_corpus(CORPUS_DIR))
    # Each document indexed once: the same scores as before (double indexing skews them).
    assert await call(toolbox, "search_corpus", query="redis streams") == before


async def test_a_changed_corpus_is_reindexed_and_stale_docs_removed(toolbox, redis_client,
                                                                    tmp_path):
    (tmp_path / "only-doc.md").write_text("# Only doc\n\nZebras are striped.\n")
    try:
        assert await index_corpus(redis_client, tmp_path) is True
        out = await call(toolbox, "search_corpus", query="zebras")
        assert [h["doc_id"] for h in out["hits"]] == ["only-doc"]
        assert not await redis_client.exists(f"{PREFIX}redis-persistence")
    finally:
        assert await index_corpus(redis_client, CORPUS_DIR) is True
    assert not await redis_client.exists(f"{PREFIX}only-doc")
    top = await call(toolbox, "search_corpus", query="how Redis persistence works")
    assert top["hits"][0]["doc_id"] == "redis-persistence"


# --------------------------------------------------------------------------- run_python


async def test_run_python_success(toolbox):
    out = await call(toolbox, "run_python", code="print(6 * 7)")
    assert out == {"exit_code": 0, "stdout": "42\n", "stderr": "", "timed_out": False,
                   "duration_ms": out["duration_ms"]}
    assert 0 < out["duration_ms"] < 10_000


async def test_run_python_failure_is_a_result_not_an_exception(toolbox):
    out = await call(toolbox, "run_python", code="print('before')\n1 / 0\n")
    assert out["exit_code"] == 1 and out["stdout"] == "before\n" and not out["timed_out"]
    assert "ZeroDivisionError" in out["stderr"]
    assert (await call(toolbox, "run_python", code="raise SystemExit(3)"))["exit_code"] == 3


async def test_run_python_empty_code_raises(toolbox):
    with pytest.raises(ValueError, match="code is empty"):
        await call(toolbox, "run_python", code="  ")


async def test_run_python_timeout_kills_it(settings, redis_client):
    tools = build_toolbox(redis_client, limited(settings, timeout_s=0.5))
    started = time.monotonic()
    out = await call(tools, "run_python", code="print('start', flush=True)\nwhile True:\n pass\n")
    assert out["timed_out"] and out["exit_code"] != 0 and out["stdout"] == "start\n"
    assert time.monotonic() - started < 3


async def test_run_python_memory_limit(settings, redis_client):
    tools = build_toolbox(redis_client, limited(settings, memory_mb=128))
    out = await call(tools, "run_python", code="data = bytearray(400 * 1024 * 1024)\nprint('ok')")
    assert out["exit_code"] != 0 and out["stdout"] == ""
    assert "MemoryError" in out["stderr"]


async def test_run_python_output_is_truncated(settings, redis_client):
    tools = build_toolbox(redis_client, limited(settings, max_output_chars=500))
    code = "import sys\nprint('x' * 100_000)\nsys.stderr.write('e' * 100_000 + 'LAST')\n"
    out = await call(tools, "run_python", code=code)
    assert out["exit_code"] == 0
    assert len(out["stdout"]) <= 500 and out["stdout"].startswith("xxx")
    assert len(out["stderr"]) <= 500 and out["stderr"].endswith("LAST")  # the end is kept
    assert "truncated" in out["stdout"] and "truncated" in out["stderr"]


async def test_run_python_temp_dir_is_removed_and_env_is_minimal(toolbox, monkeypatch):
    monkeypatch.setenv("AGENT_CLUSTER_TEST_SECRET", "hunter2")
    code = ("import os, pathlib\npathlib.Path('f.txt').write_text('x')\n"
            "print(os.getcwd())\nprint(sorted(os.environ))\n")
    out = await call(toolbox, "run_python", code=code)
    cwd, env = out["stdout"].splitlines()
    assert Path(cwd).name.startswith("sandbox-")
    assert not Path(cwd).exists()
    assert "AGENT_CLUSTER_TEST_SECRET" not in env and "PATH" in env


async def test_run_python_persist_writes_to_the_workspace(settings, redis_client, tmp_path):
    workspace = tmp_path / "does" / "not" / "exist"
    tools = build_toolbox(redis_client, settings.model_copy(update={"workspace_dir": workspace}))
    code = "from pathlib import Path\nPath('notes.txt').write_text('kept')\nprint('saved')\n"
    out = await call(tools, "run_python", code=code, persist=True)
    assert out["exit_code"] == 0, out["stderr"]
    assert (workspace / "notes.txt").read_text() == "kept"
    assert sorted(p.name for p in workspace.iterdir()) == ["notes.txt"]  # no script left


async def test_sandbox_kills_leftover_processes(settings):
    code = ("import subprocess, sys\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'],\n"
            "                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
            "print(p.pid)\n")
    result = await run_sandboxed(code, settings.sandbox)
    assert result.exit_code == 0 and not result.timed_out
    assert await eventually_dead(int(result.stdout))


async def test_cancelling_a_run_kills_the_process(settings, tmp_path):
    code = "import os, time\nopen('pid', 'w').write(str(os.getpid()))\ntime.sleep(30)\n"
    task = asyncio.create_task(run_sandboxed(code, settings.sandbox, cwd=tmp_path))
    pid_file = tmp_path / "pid"
    for _ in range(100):
        if pid_file.exists() and pid_file.read_text():
            break
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await eventually_dead(int(pid_file.read_text()))


# --------------------------------------------------------------------------- review_code

GOOD = "def inc(x: int) -> int:\n    return x + 1\n\n\nassert inc(1) == 2\n"


async def test_review_approves_good_code(toolbox):
    out = await call(toolbox, "review_code", code=GOOD)
    assert out["verdict"] == "approve", out
    assert out["checks"] == {"compiles": True, "asserts": "passed", "ruff": "clean"}
    assert out["reasons"]


async def test_review_rejects_a_failing_assert(toolbox):
    out = await call(toolbox, "review_code", code=GOOD.replace("x + 1", "x + 2"))
    assert out["verdict"] == "changes_requested"
    assert out["checks"]["asserts"] == "failed" and out["checks"]["compiles"]
    assert any("AssertionError" in reason and "line 5" in reason for reason in out["reasons"])


async def test_review_rejects_a_syntax_error(toolbox):
    out = await call(toolbox, "review_code", code="def inc(x:\n    return x\n")
    assert out["verdict"] == "changes_requested"
    assert out["checks"]["compiles"] is False and out["checks"]["asserts"] == "none"
    assert any("does not compile" in reason for reason in out["reasons"])


async def test_review_rejects_lint_errors(toolbox):
    out = await call(toolbox, "review_code", code="import os\n\n" + GOOD)
    assert out["verdict"] == "changes_requested"
    assert out["checks"] == {"compiles": True, "asserts": "passed", "ruff": "issues"}
    assert any("F401" in reason for reason in out["reasons"])


async def test_review_without_asserts_says_so(toolbox):
    out = await call(toolbox, "review_code", code="def inc(x):\n    return x + 1\n")
    assert out["verdict"] == "approve" and out["checks"]["asserts"] == "none"
    assert any("no asserts" in reason for reason in out["reasons"])


# --------------------------------------------------------------------------- back office


@pytest.fixture
async def office(settings: Settings):
    """Database 1 of the session's Redis, emptied of its keys: back-office tests own it.
    Not FLUSHDB: RediSearch drops its indexes in every database on a flush."""
    client = Redis.from_url(settings.redis_url.rsplit("/", 1)[0] + "/1")

    async def empty() -> None:
        keys = [key async for key in client.scan_iter(count=1000)]
        if keys:
            await client.delete(*keys)

    await empty()
    yield client
    await empty()
    await client.aclose()


@pytest.fixture
async def office_tools(office: Redis) -> dict:
    await seed_backoffice(office)
    return {tool.name: tool for tool in build_backoffice_tools(office)}


async def test_seed_backoffice_once_even_concurrently(office):
    assert sorted(await asyncio.gather(*(seed_backoffice(office) for _ in range(5)))) == [
        False, False, False, False, True]
    assert await office.hlen(ORDERS) == ORDER_COUNT
    for customer in range(1, CUSTOMER_COUNT + 1):
        assert await office.llen(records_key(str(customer))) == 3
    await office.delete(records_key("7"))
    assert await seed_backoffice(office) is False
    assert not await office.exists(records_key("7"))  # a re-seed never undoes a deletion


async def test_issue_refund(office, office_tools):
    assert order_amount(42) >= 500  # the demo's "Refund $500 to order 42" must be allowed
    out = await call(office_tools, "issue_refund", amount=120.5, order_id="42",
                     reason="damaged on arrival")
    assert out == {"refund_id": out["refund_id"], "amount": 120.5, "order_id": "42",
                   "reason": "damaged on arrival", "status": "refunded"}
    stored = json.loads(await office.lindex(REFUNDS, -1))
    assert stored["refund_id"] == out["refund_id"] and stored["amount"] == 120.5
    assert await effect_counts(office) == {"issue_refund": 1}


@pytest.mark.parametrize(("amount", "order_id", "match"), [
    (order_amount(42) + 0.01, "42", "exceeds order 42's amount"),
    (0, "42", "positive"),
    (-5, "42", "positive"),
    (10, "9999", "no order '9999'"),
])
async def test_issue_refund_rejects_bad_input(office, office_tools, amount, order_id, match):
    with pytest.raises(ValueError, match=match):
        await call(office_tools, "issue_refund", amount=amount, order_id=order_id, reason="r")
    assert await effect_counts(office) == {}
    assert await office.llen(REFUNDS) == 0


async def test_delete_records(office, office_tools):
    out = await call(office_tools, "delete_records", customer_id="3", reason="GDPR request")
    assert out == {"customer_id": "3", "deleted": 3}
    assert not await office.exists(records_key("3"))
    again = await call(office_tools, "delete_records", customer_id="3", reason="again")
    assert again == {"customer_id": "3", "deleted": 0}
    with pytest.raises(ValueError, match="no customer '999'"):
        await call(office_tools, "delete_records", customer_id="999", reason="r")
    assert await effect_counts(office) == {"delete_records": 2}
    assert await office.hget(EFFECTS, "issue_refund") is None



async def test_search_rebuilds_a_lost_index(settings, redis_client):
    """A FLUSHDB in any database drops RediSearch indexes; search heals itself."""
    tools = build_toolbox(redis_client, settings)
    await redis_client.ft(INDEX).dropindex(delete_documents=False)
    out = json.loads(await tools["search_corpus"].ainvoke({"query": "redis persistence"}))
    assert out["hits"][0]["doc_id"] == "redis-persistence"
