"""The overload step: a spike of ``factor`` x the capacity found, held for minutes, then
back to capacity, to see whether a target degrades predictably.

Reported: goodput (runs completed per second, against the runs/s at capacity), refusals
(503 with Retry-After) and how fast they came, failures, the p95 TTFT overhead of the turns
that were admitted, and the recovery time: how long after the spike the target is back to
normal (a window of new turns within the latency budget, none refused or failed). Lost and
duplicated turns come from the audit that follows.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from bench.console import say
from bench.loadgen import LoadGenerator, ModelTime, summarise
from bench.staircase import judge


@dataclass
class OverloadPlan:
    factor: float = 4.0
    warmup_s: float = 30.0        # the spike's users arrive within one think time
    duration_s: float = 300.0
    recovery_limit_s: float = 60.0
    recovery_window_s: float = 5.0
    settle_s: float = 20.0        # for the spike's last turns to end before judging
    slice_s: float = 60.0         # the spike is also summarised in slices this long


async def overload(gen: LoadGenerator, users: int, back_to: int, at_capacity: float,
                   plan: OverloadPlan, model: ModelTime, budget_ms: float) -> dict[str, Any]:
    """Hold ``users`` (the spike), then ``back_to`` users; ``at_capacity`` is the runs/s
    the target sustained at capacity."""
    say(f"  overload: {users} users ({plan.factor:g}x) for {plan.duration_s:.0f} s, "
        f"then back to {back_to}")
    gen.set_users(users)
    await asyncio.sleep(plan.warmup_s)
    start = time.perf_counter()
    await asyncio.sleep(plan.duration_s)
    end = time.perf_counter()
    gen.set_users(back_to)
    await asyncio.sleep(plan.recovery_limit_s + plan.settle_s)
    spike = summarise(gen.records, start, end, model, now=time.perf_counter())
    recovered = recovery_s(gen, end, plan, model, budget_ms)
    result = {"users": users, "factor": plan.factor, "back_to": back_to,
              "capacity_runs_per_s": at_capacity, **spike,
              "goodput_ratio": spike["runs_per_s"] / at_capacity if at_capacity else None,
              "recovery_s": recovered, "slices": slices(gen, start, end, plan, model),
              "client_lag_ms": gen.lag_ms(start, end)}
    say(f"  overload: goodput {spike['runs_per_s']:.1f} runs/s "
        f"({(result['goodput_ratio'] or 0) * 100:.0f}% of capacity), refused "
        f"{spike['refused']}, errors {spike['errors'] or 0}, admitted TTFT overhead p95 "
        f"{spike['ttft_overhead_ms']['p95'] or 0:.0f} ms (the load generator's own loop "
        f"lag p95 {result['client_lag_ms']['p95'] or 0:.0f} ms), recovered after "
        f"{'-' if recovered is None else f'{recovered:.0f} s'}")
    return result


def slices(gen: LoadGenerator, start: float, end: float, plan: OverloadPlan,
           model: ModelTime) -> list[dict[str, Any]]:
    """The spike slice by slice: whether admission holds latency as it goes on, or lets
    it drift."""
    out = []
    for index in range(max(1, round((end - start) / plan.slice_s))):
        at = start + index * plan.slice_s
        until = min(at + plan.slice_s, end)
        part = summarise(gen.records, at, until, model)
        out.append({"from_s": round(at - start), "runs_per_s": part["runs_per_s"],
                    "refused": part["refused"],
                    "ttft_overhead_p95_ms": part["ttft_overhead_ms"]["p95"],
                    "client_lag_p95_ms": gen.lag_ms(at, until)["p95"]})
    return out


def recovery_s(gen: LoadGenerator, spike_end: float, plan: OverloadPlan, model: ModelTime,
               budget_ms: float) -> float | None:
    """Seconds from the spike's end to the first window of new turns that passes the
    capacity step's test (None: not within ``recovery_limit_s``)."""
    offset = 0.0
    while offset + plan.recovery_window_s <= plan.recovery_limit_s:
        start = spike_end + offset
        window = summarise(gen.records, start, start + plan.recovery_window_s, model)
        if judge(window, budget_ms):
            return offset
        offset += 1.0
    return None
