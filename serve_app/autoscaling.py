"""Serve autoscaling of the replicas that execute runs, on the runs they have to do.

Runs do not arrive at replicas as requests (replicas pull them from a queue in Redis), so
Serve's default policy, which counts ongoing requests, would not see a backlog. Each
supervisor replica reports ``runs_running``, ``runs_queued`` (the pool's queue, the same
for every replica) and ``run_slots`` (``record_autoscaling_stats``); this policy asks for
enough replicas to hold the runs running and queued in their slots. Serve applies the
deployment's bounds, delays and scaling factors to the answer.
"""

from __future__ import annotations

import math
from typing import Any

from ray.serve.config import AutoscalingContext


def runs_policy(ctx: AutoscalingContext) -> tuple[float, dict[str, Any]]:
    metrics = ctx.aggregated_metrics or {}
    running = sum(metrics.get("runs_running", {}).values())
    queued = max(metrics.get("runs_queued", {}).values(), default=0.0)
    slots = metrics.get("run_slots", {}).values()
    per_replica = sum(slots) / len(slots) if slots else 0.0
    if per_replica <= 0:  # nothing reported yet
        return ctx.current_num_replicas, {}
    return max(math.ceil((running + queued) / per_replica), 1), {}
