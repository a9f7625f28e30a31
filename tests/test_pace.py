"""The pacing of cluster-wide background work: each replica waits the interval times the
live replicas, jittered, so the cluster polls about once per interval whatever its size."""

import asyncio
import random
import statistics

import pytest

from serve_app.runs.pace import JITTER, one_replica, pause, wait_s


def waits(interval_s: float, replicas: int, draws: int = 2000) -> list[float]:
    rng = random.Random(10)
    return [wait_s(interval_s, replicas, rng.uniform(*JITTER)) for _ in range(draws)]


@pytest.mark.parametrize("replicas", [1, 2, 134])
def test_a_replica_waits_the_interval_times_the_replicas_jittered(replicas):
    found = waits(0.5, replicas)
    low, high = (0.5 * replicas * j for j in JITTER)
    assert all(low <= w <= high for w in found)
    assert statistics.mean(found) == pytest.approx(0.5 * replicas, rel=0.05)
    assert statistics.pstdev(found) > 0.1 * 0.5 * replicas  # jittered: polls interleave


def test_the_cluster_polls_about_once_per_interval_whatever_its_size():
    for replicas in (1, 2, 134):
        polls_per_s = replicas / statistics.mean(waits(1.0, replicas))
        assert polls_per_s == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("unknown", [0, -1])
def test_an_unknown_count_is_one_replica(unknown):
    assert wait_s(0.5, unknown, 1.0) == wait_s(0.5, one_replica(), 1.0) == 0.5


async def test_a_shrinking_cluster_is_not_left_waiting_the_bigger_ones_wait():
    counts = iter([100_000])  # then 1: the cluster shrank during the wait
    asked = []

    def replicas() -> int:
        asked.append(next(counts, 1))
        return asked[-1]
    # 100,000 replicas x 10 ms would be ~17 minutes; one replica is ~10 ms
    await asyncio.wait_for(pause(0.01, replicas, random.Random(1)), timeout=30)
    assert asked[0] == 100_000 and asked[-1] == 1
