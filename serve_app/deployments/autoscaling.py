"""Serve autoscaling of the replicas that execute runs, on the runs they are asked to do.

Runs do not arrive at replicas as requests (replicas pull them from a queue in Redis), so
Serve's default policy, which counts ongoing requests, would not see a backlog; and with
admission control the backlog stays short by design, the excess being refused. Each
supervisor replica reports ``runs_running``, ``runs_queued`` (the pool's queue, the same
for every replica), ``run_slots`` and ``refused_share`` (the share of recent run requests
it refused; ``record_autoscaling_stats``). This policy asks for the larger of: enough
replicas to hold the runs running and queued in their slots, and the current count scaled
by offered / served load (1 / (1 - refused share)). Serve applies the deployment's bounds,
delays and scaling factors to the answer.
"""

from __future__ import annotations

import math
from statistics import fmean
from typing import Any

from ray.serve.config import AutoscalingContext


def runs_policy(ctx: AutoscalingContext) -> tuple[float, dict[str, Any]]:
    metrics = ctx.aggregated_metrics or {}
    running = sum(metrics.get("runs_running", {}).values())
    queued = max(metrics.get("runs_queued", {}).values(), default=0.0)
    slots = list(metrics.get("run_slots", {}).values())
    refused = fmean(metrics.get("refused_share", {}).values() or [0.0])
    if not slots or sum(slots) <= 0:  # nothing reported yet
        return ctx.current_num_replicas, {}
    by_queue = math.ceil((running + queued) / fmean(slots))
    by_demand = round(ctx.current_num_replicas / max(1 - refused, 0.1))
    return max(by_queue, by_demand, 1), {}
