"""Every Redis key the serving layer writes, in one place (prefix ``ac:``); the graph's
(checkpoints, effect ledger, store, corpus) are in ``agents.keys``. ``tests/test_keys.py``
fails on a key built anywhere else.

Keys of one thread carry the thread's hash tag (``ac:{<thread id>}:...``,
``agents.keys``): its record, its runs' records and event streams, its run queue, lease,
fencing counter, approval log and audit list live in one hash slot with its checkpoints and
its specialists' sub-threads, so a Lua script over them stays valid on a Redis Cluster.
Keys of a run pool (the replicas that execute runs from one queue) carry the pool's tag
(``ac:{pool:<name>}:...``). Crons and webhooks have a tag each (one slot each), without
the prefix (their layout predates it).
"""

from __future__ import annotations

import hashlib

from agents.keys import PREFIX, spend_key, tagged, untagged

# Cross-thread indexes: one key each, so in one slot (one shard) of a cluster by design,
# touched by single-key commands only (never in a script or MULTI with a thread's keys); at
# ~60 bytes a thread, one shard holds millions.
ALL_THREADS = f"{PREFIX}threads"  # every thread by creation time, for search
RUN_SEQUENCE = f"{PREFIX}seq"  # creation order of runs
THREAD_EXPIRY = f"{PREFIX}expiry"  # threads with a TTL, by when they expire (s)


def _thread(thread_id: str) -> str:
    return f"{PREFIX}{tagged(thread_id)}"


def thread_key(thread_id: str) -> str:
    return f"{_thread(thread_id)}:thread"


def thread_runs_key(thread_id: str) -> str:
    """Every run of the thread, by creation time."""
    return f"{_thread(thread_id)}:runs"


def queue_key(thread_id: str) -> str:
    """The thread's non-terminal runs in order; only the head may run."""
    return f"{_thread(thread_id)}:queue"


def thread_lease_key(thread_id: str) -> str:
    """``<run id>:<fence>`` of the run that holds the thread."""
    return f"{_thread(thread_id)}:active"


def fence_key(thread_id: str) -> str:
    return f"{_thread(thread_id)}:fence"


def audit_key(thread_id: str) -> str:
    """Approval decisions (and their effects' results) of the thread's pruned specialist
    runs, kept for audit (``retention.audit_ttl_days``)."""
    return f"{_thread(thread_id)}:audit"


def thread_prefix(thread_id: str) -> str:
    """What every key of the thread starts with: the serving layer's, and its and its
    sub-threads' checkpoints and effect ledger entries (``agents.keys``)."""
    return f"{_thread(thread_id)}:"


def split_thread_key(key: str) -> tuple[str, str] | None:
    """``(thread id, what follows its prefix)`` of a key of a thread; None for any other
    key (a pool's, a user's, the assistants', an index)."""
    if not key.startswith(f"{PREFIX}{{") or key.startswith(_NOT_THREADS):
        return None
    tag, found, rest = key[len(PREFIX):].partition("}:")
    return (untagged(f"{tag}}}"), rest) if found else None


def approvals_key(thread_id: str) -> str:
    """The thread's approval log: a Redis Stream, append-only, one entry per decision of a
    pending approval (who, when, action, original and edited args, reason, interrupt)."""
    return f"{_thread(thread_id)}:approvals"


def run_key(thread_id: str, run_id: str) -> str:
    return f"{_thread(thread_id)}:run:{run_id}"


def events_key(thread_id: str, run_id: str) -> str:
    return f"{_thread(thread_id)}:run:{run_id}:events"


def run_scoped_keys(thread_id: str, run_id: str) -> list[str]:
    """Every key of one run: what deleting the run (or its thread) removes. A new per-run
    key belongs here, or DELETE leaves it behind (``python -m serve_app.ops.leaks`` shows it)."""
    return [run_key(thread_id, run_id), events_key(thread_id, run_id),
            responses_key(thread_id, run_id), spend_key(thread_id, run_id)]


def responses_key(thread_id: str, run_id: str) -> str:
    """The model's responses in a run (run telemetry; kept for feedback on the run)."""
    return f"{_thread(thread_id)}:responses:{run_id}"


_POOLS = f"{PREFIX}{{pool:"


def _pool(pool: str) -> str:
    return f"{_POOLS}{pool}}}"


POOL_KEYS = f"{_POOLS}*"  # a SCAN pattern: every pool's keys


def ready_key(pool: str) -> str:
    """Runs at the head of their thread, waiting for a free slot, by enqueue time."""
    return f"{_pool(pool)}:ready"


def running_key(pool: str) -> str:
    """Runs some replica executes, scored by when their lease expires (ms)."""
    return f"{_pool(pool)}:running"


def delayed_key(pool: str) -> str:
    """Runs asked to start later (``after_seconds``), by when they may start (ms)."""
    return f"{_pool(pool)}:delayed"


def pending_key(pool: str) -> str:
    """Every non-terminal run of the pool by creation time: what the sweeper checks."""
    return f"{_pool(pool)}:pending"


def started_key(pool: str) -> str:
    """How many runs the pool has taken, ever: its drain rate, for admission."""
    return f"{_pool(pool)}:started"


def replicas_key(pool: str) -> str:
    """Live replicas of the pool, scored by when their heartbeat expires (ms)."""
    return f"{_pool(pool)}:replicas"


def cancel_channel(pool: str) -> str:
    return f"{_pool(pool)}:cancel"


def run_ref(thread_id: str, run_id: str) -> str:
    """A run as a member of the pool's sets: run ids are UUIDs (no ':'), thread ids any."""
    return f"{run_id}:{thread_id}"


def parse_ref(ref: str | bytes) -> tuple[str, str]:
    """``(thread_id, run_id)`` of a ``run_ref``."""
    text = ref.decode() if isinstance(ref, bytes) else ref
    run_id, _, thread_id = text.partition(":")
    return thread_id, run_id


_USERS = f"{PREFIX}{{user:"


def _user(identity: str) -> str:
    """A user's keys: tagged by a digest of the identity (any string, braces included)."""
    digest = hashlib.sha256(identity.encode()).hexdigest()[:24]
    return f"{_USERS}{digest}}}"


def user_bucket_key(identity: str) -> str:
    """The user's run-rate token bucket (a hash: tokens, stamp)."""
    return f"{_user(identity)}:bucket"


def user_runs_key(identity: str) -> str:
    """The user's runs not yet seen ended (``run_ref``s by creation time)."""
    return f"{_user(identity)}:runs"


def user_threads_key(identity: str) -> str:
    """Threads the user created, by creation time."""
    return f"{_user(identity)}:threads"


_ASSISTANTS = f"{PREFIX}{{assistants}}"  # every stored assistant's keys: one slot
ALL_ASSISTANTS = f"{_ASSISTANTS}:all"  # stored assistants by creation time


def assistant_key(assistant_id: str) -> str:
    """The assistant's current version (JSON)."""
    return f"{_ASSISTANTS}:assistant:{assistant_id}"


def assistant_versions_key(assistant_id: str) -> str:
    """Every version of the assistant: a hash, version number -> JSON."""
    return f"{_ASSISTANTS}:versions:{assistant_id}"


_NOT_THREADS = (_POOLS, _USERS, _ASSISTANTS)

# Crons (``serve_app.resources.crons``)
CRONS_ALL = "{crons}:all"  # cron id -> created (epoch seconds)
CRONS_DUE = "{crons}:due"  # cron id -> its next tick (epoch seconds)
CRON_PREFIX = "{crons}:cron:"  # + cron id: the cron (JSON)
CRON_TICK_PREFIX = "{crons}:tick:"  # + "<cron id>:<tick epoch>": the tick's lease

# Webhooks' outbox (``serve_app.resources.webhooks``)
WEBHOOKS_DUE = "{webhooks}:due"  # delivery id -> when to look at it next (epoch seconds)
WEBHOOK_ENTRY_PREFIX = "{webhooks}:entry:"  # + delivery id: what to deliver (JSON)

REGRESSION_CASES = f"{PREFIX}regressions"  # case id -> a failed run kept as a case (JSON)


def feed_wake_key(feed_id: str) -> str:
    """The stream a process's event feed writes to wake its own blocked read."""
    return f"{PREFIX}feed:{feed_id}:wake"
