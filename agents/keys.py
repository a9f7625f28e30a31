"""Every Redis key the graph side writes, in one place; the serving layer's are in
``serve_app.keys``, built on this module's hash tag (``tests/test_keys.py`` fails on a key
built anywhere else).

Every key of a thread carries one hash tag: the thread id up to its first ``/``. A
specialist's sub-thread is ``<thread>/<role>/<task id>`` (``agents.supervisor.sub_thread_id``),
so its checkpoints and effect ledger entries land in its parent's slot, under its parent's
prefix ``ac:{<thread>}:``, and every Lua script or MULTI over a thread's keys stays within
one slot of a Redis Cluster (``agents.slots``). Keys of what no thread owns (the long-term
store, the corpus, the demo back office) carry a tag each, so each is one slot.
"""

from __future__ import annotations

import hashlib

PREFIX = "ac:"


def tagged(thread_id: str) -> str:
    """``thread_id`` with its hash tag in braces: ``{t}`` for ``t``, ``{t}/role/task`` for
    a sub-thread of ``t``. Unique per id, and identical to ``{t}`` for ids without ``/``."""
    root, slash, rest = thread_id.partition("/")
    return f"{{{root}}}{slash}{rest}"


def untagged(text: str) -> str:
    """The id back from ``tagged(id)`` (its first pair of braces removed)."""
    return text.replace("{", "", 1).replace("}", "", 1)


def _root(thread_id: str) -> str:
    """``ac:{<thread>}``: where the keys of a thread and of its sub-threads start."""
    return f"{PREFIX}{tagged(thread_id.partition('/')[0])}"


def _suffix(thread_id: str) -> str:
    """What follows the thread id in a sub-thread's id (``/<role>/<task id>``), or ""."""
    _, slash, rest = thread_id.partition("/")
    return f"{slash}{rest}"


# The checkpointer's keys (``agents.redis_saver``): a thread's checkpoints and their pending
# writes, and its sub-threads', in one hash under the thread's tag. A checkpoint's field is
# ``<sub-thread suffix>#<ns>#<checkpoint id>`` (the suffix is empty for the thread); a
# write's is ``!`` then its checkpoint's field, ``#<task id>:<idx>``; a message's (kept once
# for every checkpoint of the (sub-)thread that holds it) ``~<suffix>#<digest>``.
LATEST = "latest"  # the checkpoint id field naming a namespace's latest checkpoint
WRITE = "!"  # what a write's field starts with
MESSAGE = "~"  # what a stored message's field starts with (``message_field``)


def checkpoints_key(thread_id: str) -> str:
    return f"{_root(thread_id)}:checkpoints"


def checkpoint_field(thread_id: str, ns: str, checkpoint_id: str) -> str:
    return f"{_suffix(thread_id)}#{ns}#{checkpoint_id}"


def checkpoint_write_field(thread_id: str, ns: str, checkpoint_id: str, task_id: str,
                           idx: int) -> str:
    return f"{WRITE}{checkpoint_field(thread_id, ns, checkpoint_id)}#{task_id}:{idx}"


def message_field(thread_id: str, digest: str) -> str:
    """A message of a (sub-)thread's message lists, stored once by the digest of its bytes
    (``agents.redis_saver``): ``~<sub-thread suffix>#<digest>``."""
    return f"{MESSAGE}{_suffix(thread_id)}#{digest}"


def parse_message_field(thread_id: str, field: str) -> tuple[str, str]:
    """(thread or sub-thread id, digest) of a ``message_field`` of ``thread_id``'s hash."""
    suffix, _, digest = field[len(MESSAGE):].rpartition("#")
    return thread_id.partition("/")[0] + suffix, digest


def parse_checkpoint_field(thread_id: str, field: str) -> tuple[str, str, str, str]:
    """(thread or sub-thread id, namespace, checkpoint id, ``<task id>:<idx>`` of a write or
    "" for the checkpoint itself) of a field of ``checkpoints_key(thread_id)``; of a
    message's field, (its thread or sub-thread id, "", "", "")."""
    if field.startswith(MESSAGE):
        return parse_message_field(thread_id, field)[0], "", "", ""
    if field.startswith(WRITE):
        suffix, ns, checkpoint_id, task = field[len(WRITE):].rsplit("#", 3)
    else:
        (suffix, ns, checkpoint_id), task = field.rsplit("#", 2), ""
    return thread_id.partition("/")[0] + suffix, ns, checkpoint_id, task


def effect_key(thread_id: str, tool_call_id: str) -> str:
    """A sensitive tool call's effect ledger entry (``agents.effects``): tool call ids repeat
    across threads, not within one; ``ac:{<thread>}:effect<sub-thread suffix>:<call id>``,
    under the thread's prefix, so what goes with the thread finds it."""
    return f"{_root(thread_id)}:effect{_suffix(thread_id)}:{tool_call_id}"


def shard_tag(n: int) -> str:
    """The ``n``-th hash tag tried in search of one that falls in a given shard's slots."""
    return f"{{shard{n}}}"


STORE_TAG = "{store}"  # the long-term store's prefix on a Redis Cluster (``agents.memory``)

# The researcher's corpus (``agents.tools.corpus``): documents, index, version and lock in
# one slot (RediSearch loads only the documents in its index name's slot).
CORPUS_INDEX = "idx:{corpus}"
CORPUS_DOC = "corpus:{corpus}:doc:"  # + document id: a hash (title, body)
CORPUS_VERSION = "corpus:{corpus}:version"
CORPUS_LOCK = "corpus:{corpus}:lock"


def backoffice_key(name: str) -> str:
    """A key of the demo back office (``agents.tools.backoffice``, standing for an external
    system): ``seeded``, ``customers``, ``orders``, ``refunds``, ``effects``,
    ``customer:<id>:records``, ``receipt:<digest>``; one slot, so its MULTI/EXECs hold."""
    return f"backoffice:{{bo}}:{name}"


# Budgets (``agents.budgets``) and the model's circuit breaker (``agents.breaker``).
def spend_key(thread_id: str, run_id: str | None = None) -> str:
    """What a thread (all its runs), or one of its runs, spent on the model: a hash
    (``tokens``, ``cost_usd``, ``steps``) under the thread's prefix, so it goes with it."""
    return f"{_root(thread_id)}:spend" + (f":{run_id}" if run_id else "")


def user_spend_key(identity: str, window: int) -> str:
    """What a user spent in the ``window``-th budgets.user.window_s since the epoch, in
    the user's slot (``serve_app.keys``: the same digest of the identity)."""
    digest = hashlib.sha256(identity.encode()).hexdigest()[:24]
    return f"{PREFIX}{{user:{digest}}}:spend:{window}"


def breaker_key(endpoint: str) -> str:
    """A model endpoint's circuit breaker (a hash: failures, open_until, cause)."""
    return f"{PREFIX}{{breaker}}:{endpoint}"
