"""Redis faults under load, on the embedded Redis Cluster (3 masters, one replica each) and
the Serve app on it (``tests/redis_cluster_app.py``, after ``tests/test_redis_cluster.py``):
a short soak, a master's writes paused, a master asleep, a master killed. Every turn of
every simulated user is audited afterwards (``bench.audit``).

The load is modest for two shared cores (``USERS`` users thinking ~``THINK_S`` s between
turns). Each fault is measured: the longest time without progress (no token, no turn
ending) from the fault on, turns lost, failed and runs re-tried (an attempt past the
first means a run was taken from its replica). Figures are printed for
docs/reliability.md (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter

import httpx
import pytest
import redis

from agents.keys import STORE_TAG
from agents.local.redis_cluster import EmbeddedRedisCluster
from agents.local.redis_server import EmbeddedRedis
from agents.settings import ApiSettings
from bench.audit import audit
from bench.loadgen import LoadConfig, LoadGenerator, ModelTime, TurnRecord
from bench.soak import Soak, changed, growth
from bench.stats import percentile
from serve_app.keys import running_key

pytestmark = pytest.mark.timeout(900)
USERS, THINK_S = 24, 3.0
WARM_S, AFTER_S = 4.0, 8.0  # load before the fault (the soak warmed the app), and after
SLEEP_S = 4  # DEBUG SLEEP: past a lease (3 s), short of the sockets' timeout (5 s)
STORE_KEY = STORE_TAG  # the long-term store's master (the corpus's too, on 3 shards)
POOL_KEY = running_key(ApiSettings().run_pool)  # the run pool's: leases and queue


def load_config() -> LoadConfig:
    return LoadConfig(think_s=THINK_S, ramp_s=THINK_S, approval_share=0.1, memory_share=0.2,
                      approval_delay_s=0.5, turns_per_thread=4, turn_timeout_s=90)


@pytest.fixture
def model(stub_admin) -> ModelTime:
    """A short, steady model time (so a stall, not the model, is what shows)."""
    stub_admin.post("/config", json={"ttft_ms": 50, "tokens_per_s": 400})
    return ModelTime({}, {})


def holder(cluster: EmbeddedRedisCluster, key: str) -> EmbeddedRedis:
    """The live master that holds ``key``'s slot now (a failover moves it)."""
    for node in cluster.nodes:
        with contextlib.suppress(redis.RedisError), node_client(node) as client:
            slot = client.cluster("keyslot", key)
            for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end and master[1] == node.port:
                    return node
    raise LookupError(f"no live master holds {key!r}")


def moved(cluster: EmbeddedRedisCluster, key: str, node: EmbeddedRedis) -> bool:
    """Whether a master other than ``node`` holds ``key``'s slot (none may, mid-failover)."""
    with contextlib.suppress(LookupError):
        return holder(cluster, key) is not node
    return False


def node_client(node: EmbeddedRedis) -> redis.Redis:
    return redis.Redis(host=node.host, port=node.port, socket_timeout=30)


def progress_gap(records: list[TurnRecord], since: float) -> float:
    """The longest time from ``since`` with no token streamed and no turn ending, all
    users together (threads on the other shards go on through a fault of one)."""
    moments = sorted([t for r in records for run in r.runs
                      for t in (run.first_token, run.last_token) if t] +
                     [r.finished for r in records if r.finished and r.ok])
    later = [since] + [t for t in moments if t > since]
    return max((b - a for a, b in itertools.pairwise(later)), default=0.0)


def worst_turn_s(records: list[TurnRecord], start: float, end: float) -> float:
    """The longest turn (think and approval time apart) in flight during [start, end]: what
    a user on the faulty shard waited."""
    return max((r.finished - r.started - r.approval_wait for r in records
                if r.finished and r.started <= end and r.finished >= start), default=0.0)


async def attempts(base_url: str, records: list[TurnRecord]) -> Counter[int]:
    """Runs of every thread the users wrote to, by attempt (2+: taken from a replica)."""
    seen: Counter[int] = Counter()
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        for thread_id in {r.thread_id for r in records}:
            reply = await http.get(f"/threads/{thread_id}/runs", params={"limit": 100})
            seen.update(run.get("attempt", 1) for run in reply.json())
    return seen


async def under_load(base_url: str, fault, after_s: float = AFTER_S) -> dict:
    """``USERS`` users; ``fault()`` (a coroutine) once they are warm; the figures."""
    async with LoadGenerator(base_url, load_config()) as gen:
        gen.set_users(USERS)
        await asyncio.sleep(WARM_S)
        at = time.perf_counter()
        measured = await fault() or {}
        over = time.perf_counter()
        await asyncio.sleep(after_s)
        await gen.stop(drain_s=90)
        records = gen.records
    found = await audit(base_url, records)
    failed = Counter(r.error for r in records if r.error and not r.refused)
    before = [r.finished - r.started - r.approval_wait for r in records
              if r.finished and r.finished < at]
    figures = {"turns": len(records), "progress_gap_s": round(progress_gap(records, at), 2),
               "worst_turn_s": round(worst_turn_s(records, at, over), 2),
               "turn_p95_before_s": round(percentile(before, 95) or 0, 2),
               **measured, "failed": dict(failed),
               "attempts": dict(await attempts(base_url, records)),
               **{k: found[k] for k in ("ok", "lost", "duplicated", "unanswered",
                                         "wrong_answer", "busy_threads", "read_errors")}}
    print(f"\n{fault.__doc__}: {figures}")
    return figures


def assert_nothing_lost(figures: dict) -> None:
    for name in ("lost", "duplicated", "unanswered", "wrong_answer", "busy_threads",
                 "read_errors"):
        assert figures[name] == 0, (name, figures)
    assert figures["ok"] > USERS, figures


async def test_short_soak_holds_fds_connections_and_keys(served, redis_cluster, model):
    """A minute of steady load: past the warm-up (the first period) fds and TCP
    connections of the serving processes stay flat, Redis keys all but; nothing is lost."""
    soak = Soak(served, redis_cluster.url, True, model, USERS, THINK_S, period_s=12)
    result = await soak.run(periods=4)
    grew = growth(result["rows"], since=2)
    print(f"\nshort soak: growth {grew}, audit {result['audit']}")
    assert result["audit"]["lost"] == result["audit"]["duplicated"] == 0, result["audit"]
    assert sum(row["errors"] for row in result["rows"]) == 0, result["rows"]
    for name in ("fds", "connections"):
        assert grew[name] < 0.05, (name, grew, changed(result["rows"], 2, name))
    # Users keep their threads; effect records apart. A thread's approvals and audit lists
    # come with its first refund, still arriving here (+2 keys a thread at most); a key
    # left per turn would be +60 % (~330 turns on ~500 keys).
    assert grew["keys"] < 0.10, grew


async def test_writes_paused_5s_nothing_retried_or_lost(served, redis_cluster, model):
    """CLIENT PAUSE 5000 WRITE on the master of the run pool (its queue and run leases):
    reads go on, writes wait 5 s, longer than a lease (``api.lease_ttl_s``)."""
    node = holder(redis_cluster, POOL_KEY)

    async def pause() -> None:
        """CLIENT PAUSE WRITE 5 s"""
        node_client(node).execute_command("CLIENT", "PAUSE", 5000, "WRITE")
    figures = await under_load(served, pause)
    assert_nothing_lost(figures)
    assert figures["failed"] == {}, figures
    assert set(figures["attempts"]) == {1}, figures


async def test_master_asleep_nothing_retried_or_lost(served, redis_cluster, model):
    """DEBUG SLEEP on the run pool's master: it answers nothing for ``SLEEP_S`` (longer than
    a lease), its replica told not to take over (a stall, not a failover)."""
    node = holder(redis_cluster, POOL_KEY)
    replica = next(n for n in redis_cluster.nodes if _replicates(n, node))

    async def sleep() -> None:
        """DEBUG SLEEP"""
        with node_client(replica) as client:
            client.config_set("cluster-replica-no-failover", "yes")
        await asyncio.to_thread(node_client(node).execute_command, "DEBUG", "SLEEP", SLEEP_S)
        with node_client(replica) as client:
            client.config_set("cluster-replica-no-failover", "no")
    figures = await under_load(served, sleep)
    assert_nothing_lost(figures)
    assert figures["failed"] == {}, figures
    assert set(figures["attempts"]) == {1}, figures


def _replicates(replica: EmbeddedRedis, master: EmbeddedRedis) -> bool:
    with node_client(replica) as client:
        return client.info("replication").get("master_port") == master.port


async def test_master_killed_replica_takes_over_under_load(served, redis_cluster, model):
    """SIGKILL of the master holding the long-term store and the corpus: its replica is
    promoted, runs go on, and every client follows (the store's included)."""
    node = holder(redis_cluster, STORE_KEY)

    async def kill() -> dict:
        """master SIGKILL (failover)"""
        node.kill()
        killed = time.perf_counter()
        while not await asyncio.to_thread(moved, redis_cluster, STORE_KEY, node):
            await asyncio.sleep(0.1)
        return {"promoted_after_s": round(time.perf_counter() - killed, 2)}
    figures = await under_load(served, kill)  # after the replica's promotion
    assert moved(redis_cluster, STORE_KEY, node)
    assert_nothing_lost(figures)
    async with httpx.AsyncClient(base_url=served, timeout=60) as http:
        for i in range(6):  # requests spread over the replicas: each one's store client
            item = {"namespace": ["failover"], "key": f"k{i}", "value": {"n": i}}
            assert (await http.put("/store/items", json=item)).status_code == 204
            got = await http.get("/store/items", params={"namespace": "failover",
                                                         "key": f"k{i}"})
            assert got.status_code == 200 and got.json()["value"] == {"n": i}, got.text
        found = await http.post("/store/items/search", json={"namespace_prefix": ["failover"]})
        assert found.status_code == 200 and len(found.json()["items"]) == 6, found.text

