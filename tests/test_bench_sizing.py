"""The sizing for 10,000 users and what feeds it: the arithmetic of ``bench/sizing.py``, the
Redis capture and replay (``bench/redis_replay.py``) on the session's embedded Redis and on
embedded clusters, the plots and the report's section. Real Redis and real commands: a
checkpointer's writes and searches, a script, blocking reads."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage
from langgraph.graph import END, START, MessagesState, StateGraph

from agents.checkpoint import close_redis, create_checkpointer, create_redis
from agents.local.redis_cluster import EmbeddedRedisCluster
from agents.settings import RedisSettings
from bench.console import Progress
from bench.plots import SHARDS, TTFT, write_plots
from bench.redis_replay import (
    PIPELINE_GAP_S,
    Capture,
    Trace,
    parse_monitor_line,
    replay,
    replay_on_cluster,
    replayable,
    scaling,
)
from bench.report import sizing_section
from bench.run import Plan, smoke_plan, stages
from bench.sizing import Assumptions, Measured, measured, size, sizing_report

# ---------------------------------------------------------------------- sizing


def figures(**changes) -> Measured:
    base = dict(target="cluster-2", think_s=30.0, users=50, within_goal=True, runs_per_s=2.0,
                turns_per_s=1.6, turn_s=7.5, serving_cpu_pct=100.0, marginal_cpu_s_per_run=0.2,
                redis_cpu_ms_per_run=20.0, shard_runs_per_s=100.0, shards_replayed=2,
                shard_scaling=0.9, kib_per_thread=16.0, turns_per_thread=4.0,
                replica_rss_mib=200.0, node_rss_mib=1000.0)
    return Measured(**{**base, **changes})


def test_sizing_from_measured_figures():
    """Numbers worked out by hand for ``figures()`` (not the formula restated)."""
    z = size(figures(), Assumptions(cores_per_node=16, shard_utilisation=0.5, redis_replicas=1))
    # a user: 2 / 1.6 = 1.25 runs a turn, a turn every 30 + 7.5 s: 1/30 runs/s; 10,000 users
    assert z.user_runs_per_s == pytest.approx(1 / 30)
    assert z.runs_per_s == pytest.approx(333.333, rel=1e-5)
    # serving CPU without Redis's: 100 % - 20 ms x 2 runs/s = 96 %: 2.083 runs/s a core
    assert z.runs_per_core_at_slo == pytest.approx(2.08333, rel=1e-5)
    assert z.cores_at_slo == pytest.approx(160.0)
    assert z.cores_marginal == pytest.approx(60.0)  # (0.2 - 0.02 s) x 333.3 runs/s
    assert z.cores == pytest.approx(160.0)  # the larger of the two
    assert (z.replicas, z.nodes) == (160, 10)  # 160 cores on 16-core nodes
    assert z.shards == 7  # 333.3 runs/s over shards held at 50 of their 100 runs/s
    assert z.redis_memory_gib == pytest.approx(0.30517578125)  # 10,000 x 16 KiB x 2 copies
    assert z.app_memory_gib == pytest.approx(41.015625)  # 160 x 200 + 10 x 1000 MiB
    assert z.memory_per_user_kib == pytest.approx(4332.8)  # 32 KiB + 42,000 MiB / 10,000
    assert any("16 cores" in line for line in z.assumptions)


def test_sizing_with_figures_missing():
    z = size(figures(marginal_cpu_s_per_run=None, shard_runs_per_s=None, kib_per_thread=None))
    assert z.cores_marginal is None and z.cores == z.cores_at_slo and z.nodes >= 1
    assert z.shards is None and z.redis_memory_gib is None and z.memory_per_user_kib is None


def step(users: int, passed: bool, runs: float, p95: float) -> dict:
    procs = [{"process": "replica supervisor", "peak_rss_mib": 220.0},
             {"process": "replica researcher", "peak_rss_mib": 240.0},
             {"process": "serve proxy", "peak_rss_mib": 140.0},
             {"process": "stub model", "peak_rss_mib": 50.0}]
    return {"users": users, "passed": passed, "runs_per_s": runs, "turns_per_s": runs / 1.1,
            "turn_ms": {"mean": 6000.0}, "ttft_overhead_ms": {"p95": p95},
            "procs": {"serving_cpu_pct": 40.0 * runs, "processes": procs}}


def a_report() -> dict:
    return {
        "command": ".venv/bin/python -m bench.run --smoke",
        "plan": {"load": {"think_s": 30.0}, "steps": {"budget_ms": 300.0}},
        "targets": {
            "cluster-2": {
                "steps": [step(50, True, 1.6, 120.0), step(100, True, 3.1, 250.0),
                          step(200, False, 4.0, 900.0)],
                "capacity": {"marginal_serving_cpu_s_per_run": 0.3},
                "redis_load": {"cpu_ms_per_run": 10.0},
                "redis": {"used_memory_growth_per_thread_kib": 15.0,
                          "mean_turns_per_thread": 4.5}},
            "floor": {"steps": [step(50, True, 1.6, 80.0), step(100, False, 3.0, 400.0)]}},
        "redis_replay": {
            "trace": {"runs": 20, "commands_per_run": 180.0, "bytes_per_run": 90_000.0,
                      "source": {"users": 4, "turns": 18},
                      "mix": [{"command": "EVALSHA", "key": "ac:{T}:active", "per_run": 10.0,
                               "bytes_per_call": 1900.0}]},
            "results": [
                {"shards": 1, "copies": 32, "runs_per_s": 40.0, "commands_per_s": 7200.0,
                 "shard_cpu_ms_per_run": [8.0], "shard_cpu_pct": [32.0],
                 "ceiling_runs_per_s": 125.0, "driver_cpu_pct": 100.0, "errors": {}},
                {"shards": 2, "copies": 32, "runs_per_s": 42.0, "commands_per_s": 7500.0,
                 "shard_cpu_ms_per_run": [5.0, 4.0], "shard_cpu_pct": [21.0, 17.0],
                 "ceiling_runs_per_s": 200.0, "driver_cpu_pct": 100.0, "errors": {}}],
            "scaling": {"2": {"measured": 0.525, "ceiling": 0.8}}},
    }


def test_measured_reads_the_capacity_step_and_the_widest_replay():
    m = measured(a_report())
    assert m.target == "cluster-2" and m.users == 100 and m.within_goal
    assert m.runs_per_s == 3.1 and m.turn_s == 6.0 and m.redis_cpu_ms_per_run == 10.0
    assert m.shard_runs_per_s == 100.0 and m.shards_replayed == 2 and m.shard_scaling == 0.8
    assert m.replica_rss_mib == 230.0 and m.node_rss_mib == 140.0  # the stub is not the app's
    assert measured({"plan": {}, "targets": {"x": {"steps": []}}}) is None


def test_the_report_section_and_the_plots(tmp_path: Path):
    report = a_report()
    old = sizing_section(report | {"redis_replay": {}})  # a report from before the sizing
    assert "No sizing in this run" in old and "Redis replay: not in this run" in old
    report["sizing"] = sizing_report(report)
    report["plots"] = write_plots(report, tmp_path)
    assert report["plots"] == [TTFT, SHARDS]
    for name in report["plots"]:
        assert (tmp_path / name).read_text().lstrip().startswith("<?xml")
    text = sizing_section(report)
    assert "| Redis Cluster masters |" in text and "Assumptions:" in text
    assert f"![p95 TTFT overhead against users, per target](bench/plots/{TTFT})" in text
    assert "2 shards: 52% measured, 80% ceiling" in text
    assert write_plots({"plan": {}}, tmp_path / "none") == []


# ---------------------------------------------------------------------- capture and replay


def test_monitor_lines_parse_and_blocking_reads_become_non_blocking():
    seen = parse_monitor_line(b'1732870000.123456 [0 127.0.0.1:5555] "SET" "k:{a}" '
                              b'"say \\"hi\\"\\n\\x00"')
    assert seen.client == "127.0.0.1:5555" and seen.at == pytest.approx(1732870000.123456)
    assert seen.args == [b"SET", b"k:{a}", b'say "hi"\n\x00']
    assert parse_monitor_line(b'1.5 [0 lua] "GET" "x"').client == "lua"
    assert replayable([b"bzpopmin", b"q", b"1.5"]) == [b"ZPOPMIN", b"q"]
    assert replayable([b"XREAD", b"COUNT", b"10", b"BLOCK", b"500", b"STREAMS", b"a", b"b",
                       b"0-0", b"1732870000000-3"]) == [
        b"XREAD", b"COUNT", b"10", b"STREAMS", b"a", b"b", b"0-0", b"+"]
    assert replayable([b"CLIENT", b"SETNAME", b"x"]) is None


async def test_a_long_script_does_not_split_its_pipeline_in_the_capture(redis_url: str):
    """A pipeline is a client's commands close together; a script that runs long (its own
    calls shown after it) is not a gap: the command after it is still the same pipeline."""
    client = create_redis(redis_url, RedisSettings())
    try:
        async with Capture(redis_url) as seen:
            async with client.pipeline(transaction=False) as pipe:
                pipe.eval("local n = 0 for i = 1, 500000 do n = n + i end "
                          "return redis.call('GET', KEYS[1])", 1, "bench-long:{a}")
                pipe.get("bench-long:{a}")
                await pipe.execute()
            await asyncio.sleep(0.05)
    finally:
        await close_redis(client)
    script = next(c for c in seen.commands if c.args[0] == b"EVAL")
    after = seen.commands[seen.commands.index(script) + 1]
    assert after.args[0] == b"GET" and after.at - script.at > PIPELINE_GAP_S  # a long one
    position, sizes = seen.commands.index(script), []
    for batch in Trace.from_commands(seen.commands, runs=1).batches:
        sizes.append(batch)
        if sum(sizes) > position:
            break
    assert sizes[-1] == 2 and sum(sizes) == position + 2  # the script and the GET


def tiny_graph(saver):
    graph = StateGraph(MessagesState)
    graph.add_node("answer", lambda state: {"messages": [AIMessage("an answer " * 40)]})
    graph.add_edge(START, "answer")
    graph.add_edge("answer", END)
    return graph.compile(checkpointer=saver)


async def real_workload(client, saver, threads: int = 2, turns: int = 2) -> list[str]:
    """A checkpointer's turns (hash fields, the latest pointers, their reads), a listing of
    the thread's checkpoints, a script, a stream read and a queue pop."""
    graph, ids = tiny_graph(saver), []
    counter = client.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    for _ in range(threads):
        thread_id = str(uuid.uuid4())
        ids.append(thread_id)
        config = {"configurable": {"thread_id": thread_id}}
        for turn in range(turns):
            await graph.ainvoke({"messages": [("user", f"question {turn}")]}, config)
        assert len([c async for c in saver.alist(config)]) >= turns
        key = f"bench-replay:{{{thread_id}}}"
        await counter(keys=[f"{key}:n"], args=[2])
        await client.xadd(f"{key}:events", {"e": "token"})
        await client.xread({f"{key}:events": "0-0"}, block=10)
        await client.zadd(f"{key}:queue", {"run": 1})
        await client.bzpopmin(f"{key}:queue", timeout=1)
    return ids


async def test_capture_and_replay_on_the_sessions_redis(redis_url: str, tmp_path: Path):
    client = create_redis(redis_url, RedisSettings())
    saver = await create_checkpointer(client, RedisSettings())
    try:
        async with Capture(redis_url) as seen:
            ids = await real_workload(client, saver)
    finally:
        await close_redis(client)
    trace = Trace.from_commands(seen.commands, runs=4, scripts=seen.scripts, threads=2)
    text = str(trace.commands)
    assert not any(thread_id in text for thread_id in ids)  # every id became a slot
    names = {c[0] for c in trace.commands}
    assert {"HSET", "HKEYS", "HMGET", "EVALSHA", "XREAD", "ZPOPMIN"} <= names
    assert "BZPOPMIN" not in names and "BLOCK" not in text
    assert sum(trace.batches) == len(trace.commands) and trace.scripts
    summary = trace.summary()
    assert summary["unknown_scripts"] == 0 and summary["commands_per_run"] > 10
    trace.save(tmp_path / "trace.json")
    trace = Trace.load(tmp_path / "trace.json")

    result = await replay(redis_url, trace, cluster=False, seconds=1.0, copies=4,
                          warmup_s=0.2)
    assert result["errors"] == {}
    assert result["shards"] == 1 and result["runs"] > 0 and result["runs_per_s"] > 0
    assert result["redis_cpu_ms_per_run"] > 0 and result["ceiling_runs_per_s"] > 0


@pytest.mark.timeout(120)
async def test_a_cluster_trace_replays_on_two_shards(tmp_path: Path):
    """Captured on a one-master cluster (hash-tagged keys), replayed on two masters: every
    command on the right master, no error."""
    with EmbeddedRedisCluster(tmp_path / "capture", shards=1) as cluster:
        settings = RedisSettings(cluster=True)
        client = create_redis(cluster.url, settings)
        await client.ping()  # the slot map, as the app's start (check_redis) learns it
        saver = await create_checkpointer(client, settings)
        try:
            async with Capture(cluster.url) as seen:
                await real_workload(client, saver, threads=3)
        finally:
            await close_redis(client)
    trace = Trace.from_commands(seen.commands, runs=6, scripts=seen.scripts)
    results = [await replay_on_cluster(trace, shards, seconds=1.0, copies=4, warmup_s=0.2)
               for shards in (1, 2)]
    for result in results:
        assert result["errors"] == {}, result["errors"]
        assert result["runs_per_s"] > 0
    assert all(cpu > 0 for cpu in results[1]["shard_cpu_ms_per_run"])  # keys on both
    assert set(scaling(results)["2"]) == {"measured", "ceiling"}


# ---------------------------------------------------------------------- progress


def test_progress_shows_stage_step_and_time_left():
    progress = Progress([("micro", 60.0), ("cluster-2: staircase", 300.0), ("audit", 30.0)])
    assert progress.status() == "starting | ~6m30s left"
    progress.stage("cluster-2: staircase")
    progress.step(3, 8, "200 users")
    assert progress.status().startswith("cluster-2: staircase, step 3/8 at 200 users | ~5m")
    progress.since -= 1000  # past its estimate: only the stages after it are left
    assert progress.status().endswith("~0m30s left")
    progress.revise("audit", 90.0)
    assert progress.status().endswith("~1m30s left")


def test_the_stages_of_a_run_follow_its_plan():
    standard = dict(stages(Plan()))
    assert list(standard)[:3] == ["micro", "cluster-2: start", "cluster-2: staircase"]
    assert {"cluster-2: profile", "cluster-2: overload", "langgraph-dev: overload",
            "redis capture", "redis replay"} <= set(standard)
    assert "cluster-1: overload" not in standard and "floor: profile" not in standard
    assert standard["cluster-2: staircase"] == (8 + 1) * (5 + 20 + 5)
    smoke = smoke_plan()
    smoke.replay.enabled = False
    assert "redis replay" not in dict(stages(smoke))
