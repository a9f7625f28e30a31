"""The standard benchmark, one command: ``.venv/bin/python -m bench.run``.

Starts Redis and the stub model, runs the hot-path micro-benchmarks, then for each target
in turn (our cluster with 2 and with 1 replica of the busiest deployment, the no-Ray floor,
``langgraph dev``, then a user's project, ``bench/workload.py``'s ``PROJECT``, served by our
cluster and by ``langgraph dev`` from its one ``langgraph.json``): starts it on loopback
with a fresh Redis, calibrates the model time of each turn kind, walks a staircase of
simulated users until the SLO breaks (the capacity search), profiles at capacity (the first
target), drains, audits every thread, measures Redis memory, stops it. Then
(``--no-sizing`` skips it) the Redis replay: the app's command mix captured on a one-master
Redis Cluster and replayed on 1 and 2 shards (``bench/redis_replay.py``), the sizing for
10,000 users (``bench/sizing.py``) and the plots (``bench/plots.py``). Every line says the
stage, the step and the time left. Writes ``bench/results/<stamp>/report.json`` and
rewrites ``BENCHMARKS.md`` (and ``bench/plots/``); a run of the project's targets alone
(``--targets project-cluster,project-langgraph-dev``) rewrites only their section.

``--smoke``: a tiny run (one target, a few users, short think time, a few minutes; the
target on a one-master cluster, the capture made on it) that does not touch BENCHMARKS.md
unless ``--write-md``; ``tests/test_bench_smoke.py`` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil

from agents.local.process import free_port
from agents.local.services import local_services
from agents.settings import PROJECT_ROOT, Settings
from bench.audit import audit
from bench.console import Progress, say, track
from bench.loadgen import REFUSED, LoadConfig, LoadGenerator
from bench.machine import machine_info, versions
from bench.micro import run_micro
from bench.overload import OverloadPlan, overload
from bench.peer_env import ensure_peer_venv
from bench.peers import ClusterTarget, FloorTarget, LangGraphDevTarget, Target
from bench.plots import publish, write_plots
from bench.procs import ProcessSampler
from bench.profile import record as profile_record
from bench.redis_load import counters
from bench.redis_mem import redis_memory, used_memory
from bench.redis_replay import (
    CaptureTarget,
    Trace,
    capture_on,
    capture_run,
    replay_on_cluster,
    scaling,
)
from bench.report import write_markdown, write_project_section
from bench.sizing import sizing_report
from bench.staircase import Stairs, StepPlan, capacity, levels_from
from bench.stub import StubAdmin, StubCallLog, calibrate
from bench.workload import PROJECT, PROJECT_CONTEXT, PROJECT_GRAPH
from serve_app.ops.launcher import HAPROXY_MODE_PORTS

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class ReplayPlan:
    """The Redis replay stage: capture the mix from the app on a one-master cluster, replay
    it on each of ``shards``."""

    enabled: bool = True
    users: int = 6
    capture_s: float = 60.0         # ~120 runs: the mix of turn kinds varies less
    think_s: float = 2.0           # short: many threads' whole lives in the capture
    shards: list[int] = field(default_factory=lambda: [1, 2])
    seconds: float = 15.0          # measured per replay
    copies: int = 64               # concurrent replays of the trace (each waits on Redis)
    # capture on the first target, run on a one-master cluster for it, after its audit:
    # no start of its own (the smoke's; the standard run measures the first target on the
    # embedded Redis, as users run it)
    on_first_target: bool = False


@dataclass
class Plan:
    """Everything that defines a run; recorded in the report."""

    mode: str = "standard"
    stub: dict[str, float] = field(default_factory=lambda: {"ttft_ms": 200, "tokens_per_s": 200})
    load: LoadConfig = field(default_factory=LoadConfig)
    levels: list[int] = field(default_factory=lambda: [50, 100, 200, 300, 400, 600, 800, 1600])
    steps: StepPlan = field(default_factory=StepPlan)
    targets: list[str] = field(default_factory=lambda: ["cluster-2", "cluster-1", "floor",
                                                        "langgraph-dev", *PROJECT_TARGETS])
    busiest: str = "supervisor"
    micro_scale: float = 0.5
    profile_s: float = 10.0
    idle_s: float = 4.0            # CPU of the idle target, before the load
    hop: bool = True
    peer_jobs_per_worker: int = 64
    target_users: int = 1000
    overload: OverloadPlan = field(default_factory=OverloadPlan)
    overload_targets: list[str] = field(default_factory=lambda: ["cluster-2", "langgraph-dev"])
    replay: ReplayPlan = field(default_factory=ReplayPlan)


def smoke_plan() -> Plan:
    return Plan(
        mode="smoke",
        load=LoadConfig(think_s=1.0, approval_share=0.3, memory_share=0.2,
                        approval_delay_s=0.5, turns_per_thread=3, turn_timeout_s=60),
        levels=[4], steps=StepPlan(warmup_s=2.0, window_s=8.0, settle_s=8.0, bisect=0,
                                   step_down=0),
        targets=["cluster-2"], micro_scale=0.05, profile_s=2.0, hop=False, idle_s=2.0,
        overload=OverloadPlan(warmup_s=1.0, duration_s=6.0, recovery_limit_s=6.0,
                              recovery_window_s=3.0, settle_s=5.0),
        replay=ReplayPlan(users=2, capture_s=4.0, seconds=2.0, copies=8,
                          on_first_target=True),
    )


PROJECT_TARGETS = ["project-cluster", "project-langgraph-dev"]


def is_project(name: str) -> bool:
    """A target serving the user's project (``PROJECT``) rather than our supervisor."""
    return name.startswith("project-")


def project_load(load: LoadConfig) -> LoadConfig:
    """The users of ``load`` talking to the project's graph: research turns only (it has
    no approvals and no memory of its own), each run with the graph's ``context``."""
    return replace(load, assistant_id=PROJECT_GRAPH, context=PROJECT_CONTEXT,
                   approval_share=0.0, memory_share=0.0)


# Seconds of what the plan does not fix (measured on the 2-core box), for the time left.
START_S = {"cluster": 70.0, "floor": 20.0, "langgraph": 30.0}
CALIBRATE_S, AUDIT_S, CLUSTER_START_S = 15.0, 30.0, 5.0


def step_seconds(steps: StepPlan) -> float:
    """What one staircase step takes at most (it may be cut short)."""
    return steps.warmup_s + steps.window_s + steps.settle_s


def stages(plan: Plan) -> list[tuple[str, float]]:
    """Every stage of the run with its estimated seconds, from the plan's durations."""
    st, over = plan.steps, plan.overload
    out = [("micro", 120 * plan.micro_scale)]
    for index, name in enumerate(plan.targets):
        kind = name.removeprefix("project-").split("-")[0]
        out += [(f"{name}: start", START_S[kind] + CALIBRATE_S + plan.idle_s),
                (f"{name}: staircase", (len(plan.levels) + st.bisect) * step_seconds(st))]
        if index == 0 and plan.profile_s > 0:
            out.append((f"{name}: profile", st.warmup_s + plan.profile_s))
        if name in plan.overload_targets:
            out.append((f"{name}: overload", over.warmup_s + over.duration_s
                        + over.recovery_limit_s + over.settle_s))
        out.append((f"{name}: audit", AUDIT_S))
    if plan.replay.enabled:
        r = plan.replay
        start = 0 if r.on_first_target else START_S["cluster"]
        out += [("redis capture", start + r.capture_s + 30),
                ("redis replay", len(r.shards) * (r.seconds + 1 + CLUSTER_START_S))]
    return out


class TrackedStairs(Stairs):
    """The staircase, each step shown as it begins (``step 3/9 at 200 users``)."""

    def __init__(self, *args: Any, progress: Progress, total: int):
        super().__init__(*args)
        self.progress, self.total = progress, total

    async def step(self, users: int) -> bool:
        index = len(self.steps) + 1  # a step down or a bisection may go past the levels
        self.progress.step(index, max(index, self.total), f"{users} users")
        return await super().step(users)


def make_target(name: str, plan: Plan, settings: Settings, work: Path,
                capture: bool = False) -> Target:
    """``cluster-N`` (``-traced``: every span exported; ``capture``: on a one-master Redis
    Cluster, a ``CaptureTarget``), ``floor``, ``langgraph-dev``, ``project-cluster``,
    ``project-langgraph-dev``."""
    if name.startswith("cluster-"):
        replicas = int(name.split("-")[1])
        traced = name.endswith("-traced")
        kind = CaptureTarget if capture else ClusterTarget
        return kind(name, settings, work / name, replicas=replicas, deployment=plan.busiest,
                    traced=traced, hop=plan.hop and replicas == 2 and not traced)
    if name == "floor":
        return FloorTarget(name, settings, work / name)
    if name == "langgraph-dev":
        return LangGraphDevTarget(name, settings, work / name,
                                  jobs_per_worker=plan.peer_jobs_per_worker)
    if name == "project-cluster":
        return ClusterTarget(name, settings, work / name, project=PROJECT)
    if name == "project-langgraph-dev":
        return LangGraphDevTarget(name, settings, work / name, config=PROJECT,
                                  jobs_per_worker=plan.peer_jobs_per_worker)
    raise ValueError(f"unknown target {name!r}")


def idle_overhead_ms(calibration: dict[str, Any]) -> float:
    """The worst TTFT overhead of the idle calibration turns."""
    return max(c["client_ttft_ms"] - c["model_to_first_token_ms"] for c in calibration.values())


# ---------------------------------------------------------------------- one target


async def bench_target(target: Target, plan: Plan, stub: StubAdmin, sampler: ProcessSampler,
                       out_dir: Path, levels: list[int], profile: bool, progress: Progress,
                       spike_base: int | None = None,
                       before_stop: Callable[[str, str], Awaitable[None]] | None = None,
                       ) -> dict[str, Any]:
    """The staircase, then (for ``plan.overload_targets``) the overload step at
    ``plan.overload.factor`` x ``spike_base`` users (default: its own capacity);
    ``before_stop(url, redis_url)`` once it is audited."""
    load = project_load(plan.load) if is_project(target.name) else plan.load
    began = time.monotonic()
    progress.stage(f"{target.name}: start")
    say(f"[{target.name}] starting")
    result: dict[str, Any] = {"name": target.name}
    try:
        url = await asyncio.to_thread(target.start)
    except Exception as exc:
        result["error"] = f"did not start: {type(exc).__name__}: {exc}"
        say(f"[{target.name}] {result['error']}")
        await asyncio.to_thread(target.stop)
        return result
    result.update(target.info)
    say(f"[{target.name}] up at {url} after {target.info.get('startup_s')} s")
    calls = StubCallLog(stub)
    try:
        model, result["calibration"] = await calibrate(url, stub, load)
        idle = idle_overhead_ms(result["calibration"])
        steps = replace(plan.steps)
        result["criterion"] = {"kind": "absolute", "budget_ms": steps.budget_ms,
                               "idle_overhead_ms": idle}
        if idle > plan.steps.budget_ms:  # it cannot meet the SLO at all: find its throughput
            steps.budget_ms = idle + plan.steps.budget_ms
            result["criterion"].update(kind="relative", budget_ms=steps.budget_ms)
            say(f"[{target.name}] idle TTFT overhead {idle:.0f} ms > SLO: judging steps "
                  f"against idle + SLO = {steps.budget_ms:.0f} ms")
        baseline = await used_memory(target.redis_url)
        redis_before = await counters(target.redis_url)
        mark = await asyncio.to_thread(sampler.mark)
        await asyncio.sleep(plan.idle_s)
        result["idle"] = sampler.window(mark, await asyncio.to_thread(sampler.mark))
        calls.start()
        async with LoadGenerator(url, load) as gen:
            progress.stage(f"{target.name}: staircase")
            stairs = TrackedStairs(gen, steps, model, sampler, calls, progress=progress,
                                   total=len(levels) + steps.bisect)
            await stairs.walk(levels)
            if profile and plan.profile_s > 0:
                progress.stage(f"{target.name}: profile")
                best = max([s["users"] for s in stairs.steps if s["passed"]] or levels[:1])
                result["profile"] = await profile_at(gen, best, plan, sampler,
                                                     out_dir / target.name)
            if target.name in plan.overload_targets:
                progress.stage(f"{target.name}: overload")
                result["overload"] = await spike(gen, stairs, plan, model, spike_base)
            progress.stage(f"{target.name}: audit")
            await gen.stop(drain_s=load.approval_delay_s * 2 + 30)
            runs = sum(1 for r in gen.records for run in r.runs  # admitted ones, before the
                       if run.error != REFUSED)  # audit reads them back
            result["redis_load"] = (await counters(target.redis_url)).per_run(redis_before, runs)
            stairs.finalize()
            result["steps"] = stairs.steps
            result["capacity"] = capacity(stairs.steps)
            if result["criterion"]["kind"] == "relative":
                result["capacity_relative"] = result["capacity"]
                result["capacity"] = {"users": 0, "runs_per_s": 0.0, "below": None,
                                      "note": f"idle TTFT overhead {idle:.0f} ms"}
            result["thread_create_errors"] = dict(gen.thread_errors)
            result["turns_total"] = len(gen.records)
            result["errors_total"] = dict(Counter(r.error for r in gen.records
                                                  if r.error and not r.refused))
            result["refused_total"] = sum(1 for r in gen.records if r.refused)
            say(f"[{target.name}] auditing {len(gen.records)} turns")
            result["audit"] = await audit(url, gen.records)
            turns: Counter[str] = Counter(r.thread_id for r in gen.records)
            result["redis"] = await redis_memory(target.redis_url, baseline, dict(turns))
        say(f"[{target.name}] capacity {result['capacity']}\n  audit {result['audit']}")
        if before_stop is not None:
            await before_stop(url, target.redis_url)
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        say(f"[{target.name}] failed: {result['error']}")
    finally:
        await calls.stop()
        await asyncio.to_thread(target.stop)
        result.update(target.info)  # what it could say only once stopped (spans received)
        result["elapsed_s"] = round(time.monotonic() - began, 1)
        say(f"[{target.name}] stopped; {result['elapsed_s']} s in all")
    return result


async def spike(gen: LoadGenerator, stairs: Stairs, plan: Plan, model: Any,
                base: int | None) -> dict[str, Any] | None:
    """The overload step at ``base`` users x the factor (default: this target's capacity,
    else its lightest step)."""
    if not stairs.steps:
        return None
    passed = [s for s in stairs.steps if s["passed"]]
    best = max(passed, key=lambda s: s["users"]) if passed else \
        min(stairs.steps, key=lambda s: s["users"])
    base = base or best["users"]
    at_capacity = best["runs_per_s"]
    return await overload(gen, int(plan.overload.factor * base), max(base // 2, 1),
                          at_capacity, plan.overload, model, stairs.plan.budget_ms)


async def profile_at(gen: LoadGenerator, users: int, plan: Plan, sampler: ProcessSampler,
                     out_dir: Path) -> dict[str, Any]:
    """py-spy on the serving processes while ``users`` users run."""
    gen.set_users(users)
    await asyncio.sleep(plan.steps.warmup_s)
    wanted = ("replica", "serve proxy", "floor", "langgraph dev")
    pids = {pid: name for pid, name in sampler.labels.items()
            if name.startswith(wanted) and psutil.pid_exists(pid)}
    say(f"  profiling {len(pids)} processes for {plan.profile_s:.0f} s at {users} users")
    found = await asyncio.to_thread(profile_record, pids, plan.profile_s, out_dir)
    return {"users": users, "seconds": plan.profile_s, "processes": found}


# ---------------------------------------------------------------------- the whole run


async def run(plan: Plan, out_dir: Path) -> dict[str, Any]:
    started = time.time()
    report: dict[str, Any] = {"plan": asdict(plan), "machine": machine_info(),
                              "command": command_line(), "started_at": started}
    for name in HAPROXY_MODE_PORTS:  # Serve's other ports: free ones, not the defaults
        os.environ.setdefault(name, str(free_port()))  # another Serve on the box may hold
    sampler = ProcessSampler(period_s=2.0).start()
    progress = track(Progress(stages(plan)))
    base = Settings(redis_url=None, data_dir=Path(tempfile.mkdtemp(prefix="bench-")),
                    model={"base_url": None})
    try:
        with local_services(base) as settings:
            stub = StubAdmin(settings.model.base_url)
            await stub.configure(ttft_ms=0, tokens_per_s=0)
            progress.stage("micro")
            say("micro-benchmarks")
            report["micro"] = await run_micro(settings, plan.micro_scale)
            await stub.configure(**plan.stub)
            report["stub"] = await stub.config()
            report["targets"] = {}
            known: dict[bool, int | None] = {}  # the first capacity of each workload
            traces: list[Trace] = []  # the capture on the first target (on_first_target)

            async def capture(url: str, redis_url: str) -> None:
                progress.stage("redis capture")
                traces.append(await capture_on(url, redis_url, capture_load(plan),
                                               plan.replay.users, plan.replay.capture_s))
            for index, name in enumerate(plan.targets):
                on_it = (index == 0 and plan.replay.enabled and plan.replay.on_first_target
                         and name.startswith("cluster-"))
                target = make_target(name, plan, settings, out_dir, capture=on_it)
                workload = is_project(name)
                first = workload not in known
                result = await bench_target(target, plan, stub, sampler, out_dir,
                                            levels_from(plan.levels, known.get(workload)),
                                            profile=index == 0, progress=progress,
                                            spike_base=known.get(workload),
                                            before_stop=capture if on_it else None)
                report["targets"][name] = result
                if first:
                    known[workload] = (result.get("capacity") or {}).get("users")
                    took = len(result.get("steps") or []) + 1  # later ones start lower
                    for later in plan.targets[index + 1:]:
                        if is_project(later) == workload:
                            progress.revise(f"{later}: staircase",
                                            took * step_seconds(plan.steps))
                if name.startswith("cluster") and "ray_hop" in target.info:
                    report["micro"]["ray_hop"] = target.info["ray_hop"]
            if plan.replay.enabled:
                report["redis_replay"] = await redis_replay(plan, settings, out_dir, progress,
                                                            traces[0] if traces else None)
    finally:
        sampler.stop()
        track(None)
    if plan.replay.enabled:
        report["sizing"] = sizing_report(report)
    report["plots"] = write_plots(report, out_dir)
    report["versions"] = versions()
    report["duration_s"] = time.time() - started
    report["machine"]["load_average_end"] = machine_info()["load_average"]
    return report


def capture_load(plan: Plan) -> LoadConfig:
    """The capture's users: short think time, many threads' whole lives in it."""
    return replace(plan.load, think_s=plan.replay.think_s, ramp_s=None,
                   approval_delay_s=min(plan.load.approval_delay_s, 1.0))


async def redis_replay(plan: Plan, settings: Settings, out_dir: Path, progress: Progress,
                       trace: Trace | None = None) -> dict[str, Any]:
    """The app's command mix captured (``redis_trace.json``; unless ``trace`` is the
    capture already made), then replayed on each number of shards; a failure is reported,
    not fatal (the rest of the run stands)."""
    r = plan.replay
    try:
        if trace is None:
            progress.stage("redis capture")
            say(f"capturing the Redis command mix: {r.users} users for {r.capture_s:g} s on "
                "a one-master Redis Cluster")
            trace = await capture_run(settings, out_dir / "capture", capture_load(plan),
                                      r.users, r.capture_s, deployment=plan.busiest)
        trace.save(out_dir / "redis_trace.json")
        summary = trace.summary()
        say(f"  {summary['commands']} commands, {trace.runs} runs: "
            f"{summary['commands_per_run']:.0f} commands/run")
        progress.stage("redis replay")
        results = []
        for shards in r.shards:
            progress.step(len(results) + 1, len(r.shards), f"{shards} shard(s)")
            result = await replay_on_cluster(trace, shards, seconds=r.seconds, copies=r.copies)
            say(f"  replay on {shards} shard(s): {result['runs_per_s']:.0f} runs/s, Redis CPU "
                f"{result['redis_cpu_ms_per_run']:.2f} ms/run, ceiling "
                f"{result['ceiling_runs_per_s'] or 0:.0f} runs/s, errors {result['errors']}")
            results.append(result)
        summary["mix"] = summary["mix"][:25]
        return {"trace": summary, "trace_file": "redis_trace.json", "results": results,
                "scaling": scaling(results)}
    except Exception as exc:
        say(f"redis replay failed: {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}"}


def command_line() -> str:
    return " ".join([".venv/bin/python -m bench.run", *sys.argv[1:]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny run (a few minutes)")
    parser.add_argument("--json", type=Path, help="also write the report JSON here")
    parser.add_argument("--write-md", action="store_true",
                        help="rewrite BENCHMARKS.md (default for the standard run only)")
    parser.add_argument("--no-md", action="store_true", help="never rewrite BENCHMARKS.md")
    parser.add_argument("--targets", help="comma-separated subset, e.g. cluster-2,floor")
    parser.add_argument("--levels", help="comma-separated user counts of the staircase")
    parser.add_argument("--window", type=float, help="measured seconds per step")
    parser.add_argument("--peer-venv-only", action="store_true",
                        help="create the langgraph dev venv and exit")
    parser.add_argument("--think", type=float, help="mean think time (s)")
    parser.add_argument("--overload-s", type=float, help="length of the overload spike (s)")
    parser.add_argument("--no-sizing", action="store_true",
                        help="skip the Redis capture + replay and the sizing")
    args = parser.parse_args()
    if args.peer_venv_only:
        RESULTS.mkdir(exist_ok=True)
        print(ensure_peer_venv(RESULTS / "peer-venv.log"))
        return
    plan = smoke_plan() if args.smoke else Plan()
    if args.targets:
        plan.targets = args.targets.split(",")
    if args.levels:
        plan.levels = [int(x) for x in args.levels.split(",")]
    if args.window:
        plan.steps.window_s = args.window
    if args.overload_s:
        plan.overload = replace(plan.overload, duration_s=args.overload_s)
    if args.think:
        plan.load = replace(plan.load, think_s=args.think)
    if args.no_sizing:
        plan.replay = replace(plan.replay, enabled=False)
    out_dir = RESULTS / time.strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    report = asyncio.run(run(plan, out_dir))
    text = json.dumps(report, indent=1, default=str)
    (out_dir / "report.json").write_text(text)
    if args.json:
        args.json.write_text(text)
    write_md = (plan.mode == "standard" or args.write_md) and not args.no_md
    if write_md and all(is_project(name) for name in plan.targets):
        write_project_section(report, PROJECT_ROOT / "BENCHMARKS.md")  # only its section
    elif write_md:
        publish(out_dir, report["plots"])
        write_markdown(report, PROJECT_ROOT / "BENCHMARKS.md")
    say(f"report: {out_dir / 'report.json'}; done in {report['duration_s']:.0f} s")


if __name__ == "__main__":
    main()
