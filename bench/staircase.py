"""The capacity search: hold a number of users, measure a window, go up until the SLO breaks.

A step: set the users (new ones start as if already thinking, so arrivals run at the
step's steady rate at once), warm up a few seconds, measure a window (turns that start in
it), give its last turns a few seconds to end while the load goes on, and judge it: zero
errors and p95 TTFT overhead within the budget. A step that can no longer pass is cut
short. The walk goes up the levels until a step fails, steps down if the very first one
fails, then bisects once between the last pass and the first failure. After the drain
every step is summarised again with all of its turns finished (a late error fails it).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from bench.console import say
from bench.loadgen import LoadGenerator, ModelTime, summarise
from bench.procs import ProcessSampler
from bench.stub import StubCallLog

STALLED_S = 20.0  # a turn unfinished this long (approval wait included) means overload


@dataclass
class StepPlan:
    warmup_s: float = 5.0
    window_s: float = 20.0
    settle_s: float = 5.0
    budget_ms: float = 300.0       # p95 TTFT overhead allowed
    bisect: int = 1
    step_down: int = 2


def judge(window: dict[str, Any], budget_ms: float) -> bool:
    p95 = window["ttft_overhead_ms"]["p95"]
    return (window["turns_ok"] > 0 and not window["errors"] and not window["refused"]
            and p95 is not None and p95 <= budget_ms)


class Stairs:
    """One target's walk; ``steps`` keeps every step's figures."""

    def __init__(self, gen: LoadGenerator, plan: StepPlan, model: ModelTime,
                 sampler: ProcessSampler, calls: StubCallLog):
        self.gen, self.plan, self.model = gen, plan, model
        self.sampler, self.calls = sampler, calls
        self.steps: list[dict[str, Any]] = []

    async def step(self, users: int) -> bool:
        gen, plan = self.gen, self.plan
        gen.set_users(users)
        await asyncio.sleep(plan.warmup_s)
        mark0 = await asyncio.to_thread(self.sampler.mark)
        start, cut = time.perf_counter(), False
        while (left := plan.window_s - (time.perf_counter() - start)) > 0:
            await asyncio.sleep(min(2.0, left))
            now = time.perf_counter()
            so_far = summarise(gen.records, start, now, self.model)
            p95 = so_far["ttft_overhead_ms"]["p95"]
            stalled = sum(1 for r in gen.records if r.finished is None and
                          start <= r.started < now - STALLED_S)
            slow = so_far["turns_ok"] >= 40 and p95 > 2 * plan.budget_ms
            if so_far["errors"] or so_far["refused"] or slow or stalled > max(10, users // 20):
                cut = True  # it cannot pass any more: save the time (and the backlog)
                break
        end = time.perf_counter()
        mark1 = await asyncio.to_thread(self.sampler.mark)
        deadline = end + plan.settle_s
        while time.perf_counter() < deadline and any(
                r.finished is None for r in gen.records if start <= r.started < end):
            await asyncio.sleep(0.5)
        window = summarise(gen.records, start, end, self.model)
        step = {"users": users, "users_held": gen.users, "start": start, "end": end,
                "passed": judge(window, plan.budget_ms), "stopped_early": cut, **window,
                "procs": self.sampler.window(mark0, mark1),
                "stub_calls_ms": self.calls.durations(mark0.wall, mark1.wall)}
        self.steps.append(step)
        say(f"  {users:>5} users: {'pass' if step['passed'] else 'FAIL'}"
              f"{' (cut short)' if cut else ''}  runs/s {window['runs_per_s']:.1f}  "
              f"TTFT overhead p95 {window['ttft_overhead_ms']['p95'] or 0:.0f} ms  "
              f"errors {window['errors'] or 0}  refused {window['refused']}  machine CPU "
              f"{step['procs']['machine_cpu_pct']:.0f}% "
              f"(foreign {step['procs']['foreign_cpu_pct']:.0f}%)")
        return step["passed"]

    async def walk(self, levels: list[int]) -> None:
        last_pass, first_fail = 0, None
        for users in levels:
            if not await self.step(users):
                first_fail = users
                break
            last_pass = users
        users = first_fail or 0
        for _ in range(self.plan.step_down if last_pass == 0 else 0):
            users //= 2
            if users < 1:
                break
            if await self.step(users):
                last_pass = users
                break
            first_fail = users
        for _ in range(self.plan.bisect):
            if not (first_fail and last_pass):
                break
            middle = int(round((last_pass + first_fail) / 2, -1))
            if not last_pass < middle < first_fail:
                middle = (last_pass + first_fail) // 2
            if not last_pass < middle < first_fail:
                break
            if await self.step(middle):
                last_pass = middle
            else:
                first_fail = middle

    def finalize(self) -> None:
        """Summarise each step again now that its turns have ended (after the drain)."""
        now = time.perf_counter()
        for step in self.steps:
            window = summarise(self.gen.records, step["start"], step["end"], self.model,
                               now=now)
            step["passed_when_judged"] = step["passed"]
            step.update(window, passed=judge(window, self.plan.budget_ms) and step["passed"])
            rate = window["runs_per_s"]
            step["cpu_s_per_run"] = step["procs"]["ours_cpu_pct"] / 100 / rate if rate else None
            step["serving_cpu_s_per_run"] = (step["procs"]["serving_cpu_pct"] / 100 / rate
                                             if rate else None)


def capacity(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The largest passing step (its figures), and the smallest failing one above it."""
    passed = [s for s in steps if s["passed"]]
    failed = [s["users"] for s in steps if not s["passed"]]
    if not passed:
        return {"users": 0, "runs_per_s": 0.0, "below": min(failed) if failed else None}
    best = max(passed, key=lambda s: s["users"])
    above = [u for u in failed if u > best["users"]]
    return {"users": best["users"], "runs_per_s": best["runs_per_s"],
            "turns_per_s": best["turns_per_s"],
            "ttft_overhead_p95_ms": best["ttft_overhead_ms"]["p95"],
            "first_failure": min(above) if above else None,
            "cpu_s_per_run": best["cpu_s_per_run"],
            "serving_cpu_s_per_run": best["serving_cpu_s_per_run"],
            "marginal_serving_cpu_s_per_run": marginal_cpu(steps)}


def marginal_cpu(steps: list[dict[str, Any]]) -> float | None:
    """Serving CPU per extra run/s between the lightest and the busiest step: what each
    run costs once the fixed cost of the idle processes is paid."""
    useful = [s for s in steps if s["runs_per_s"] and not s["stopped_early"]]
    if len(useful) < 2:
        return None
    low = min(useful, key=lambda s: s["runs_per_s"])
    high = max(useful, key=lambda s: s["runs_per_s"])
    extra = high["runs_per_s"] - low["runs_per_s"]
    if extra <= 0.5:
        return None
    return (high["procs"]["serving_cpu_pct"] - low["procs"]["serving_cpu_pct"]) / 100 / extra


def levels_from(levels: list[int], known: int | None) -> list[int]:
    """Later targets start one doubling below the first target's capacity, not at the bottom."""
    if not known:
        return levels
    start = max([x for x in levels if x <= known / 2] or [levels[0]])
    return [x for x in levels if x >= start]
