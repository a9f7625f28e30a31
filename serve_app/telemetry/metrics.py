"""Application metrics behind one small interface, so the service and its tests never
depend on an exporter: ``Metrics`` keeps counters and gauges in memory (served as
Prometheus text at ``GET /metrics``); ``RayMetrics`` also records them as Ray metrics,
which Ray's Prometheus endpoint on each node exports with the replica's labels."""

from __future__ import annotations

import bisect
from collections import defaultdict
from typing import Any

PREFIX = "agent_cluster_"
Tags = tuple[tuple[str, str], ...]

DESCRIPTIONS = {
    "runs_admitted": "runs accepted into the queue",
    "runs_refused": "runs refused at admission (503 with Retry-After), by reason",
    "runs_started": "run attempts started on this replica",
    "runs_finished": "runs ended on this replica, by status",
    "runs_retried": "runs handed back for another attempt, by reason",
    "runs_queued": "runs waiting in the pool's queue for a free slot",
    "runs_running": "runs executing on this replica",
    "run_slots": "runs this replica takes at once now (adapted to its event loop's lag)",
    "run_slots_max": "the most runs this replica may take at once (api.max_concurrent_runs)",
    "loop_lag_ms": "how late a short sleep of this replica's event loop wakes up (mean of 1 s)",
    # observability (agents/telemetry.py, runs/run_telemetry.py, telemetry/tracing.py)
    "run_seconds": "run duration (one attempt), by graph and status",
    "run_queue_seconds": "time from a run's creation to its first attempt's start, by graph",
    "run_ttft_seconds": "time from a run's start to its first streamed output, by graph",
    "node_seconds": "graph node latency, by node, role and outcome (ok/error/interrupted)",
    "model_seconds": "model call latency, by model and role",
    "model_ttft_seconds": "model call time to first token, by model and role",
    "model_errors": "model calls that failed after the client's retries, by model/role/error",
    "tokens": "tokens of finished runs, by model, role and direction (input/output)",
    "cost_usd": "cost in USD of finished runs, by model (configs/prices.yaml, genai-prices)",
    "model_attempts_failed": "failed attempts of model calls (each counts against the "
                             "endpoint's circuit breaker), by endpoint and cause",
    "user_spend_usd": "cost in USD of model calls, by user (agents/budgets.py)",
    "user_spend_tokens": "tokens of model calls, by user",
    "budget_refusals": "model calls and new runs refused for a spent budget, by budget "
                       "(run/thread/user) and measure (tokens/cost_usd/steps)",
    "tool_calls": "tool calls, by tool and outcome (ok/error)",
    "tool_seconds": "tool call latency, by tool",
    "http_request_seconds": "HTTP request latency (SSE: the stream's life), by method/status",
    "sse_streams_open": "SSE streams open on this replica",
    "approvals_requested": "runs that ended waiting for an approval, by graph",
    "approvals_decided": "approval decisions (resume runs) finished, by graph; pending "
                         "approvals = approvals_requested - approvals_decided",
    "approval_wait_seconds": "time from an approval's request to its decision",
    "checkpoint_write_seconds": "checkpoint write latency (one round trip per step)",
}
# seconds; covers a checkpoint write (ms) to a long run (minutes)
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
           30.0, 60.0, 120.0, 300.0)


class Metrics:
    def __init__(self) -> None:
        self.counters: defaultdict[str, defaultdict[Tags, float]] = defaultdict(
            lambda: defaultdict(float))
        self.gauges: dict[str, float] = {}
        # name -> tags -> [count per bucket (not cumulative), sum, count]
        self.histograms: defaultdict[str, dict[Tags, list]] = defaultdict(dict)

    def count(self, name: str, value: float = 1.0, **tags: str) -> None:
        self.counters[name][tuple(sorted(tags.items()))] += value

    def gauge(self, name: str, value: float) -> None:
        self.gauges[name] = value

    def observe(self, name: str, value: float, **tags: str) -> None:
        """One observation of a histogram (seconds, in ``BUCKETS``)."""
        series = self.histograms[name].get(key := tuple(sorted(tags.items())))
        if series is None:
            series = self.histograms[name][key] = [[0] * (len(BUCKETS) + 1), 0.0, 0]
        series[0][bisect.bisect_left(BUCKETS, value)] += 1
        series[1] += value
        series[2] += 1

    def total(self, name: str, **tags: str) -> float:
        """A counter summed over the series that have ``tags``."""
        wanted = set(tags.items())
        return sum(v for t, v in self.counters[name].items() if wanted <= set(t))

    def prometheus(self, **labels: str) -> str:
        """The text exposition format, every series labelled with ``labels``."""
        lines = []
        for name, series in sorted(self.counters.items()):
            lines += _header(name, "counter")
            lines += [f"{PREFIX}{name}_total{_labels({**labels, **dict(t)})} {v:g}"
                      for t, v in sorted(series.items())]
        for name, value in sorted(self.gauges.items()):
            lines += _header(name, "gauge")
            lines.append(f"{PREFIX}{name}{_labels(labels)} {value:g}")
        for name, series in sorted(self.histograms.items()):
            lines += _header(name, "histogram")
            for tags, (buckets, total, n) in sorted(series.items()):
                base = {**labels, **dict(tags)}
                cumulative = 0
                for bound, c in zip((*BUCKETS, "+Inf"), buckets, strict=True):
                    cumulative += c
                    lines.append(f"{PREFIX}{name}_bucket{_labels({**base, 'le': str(bound)})} "
                                 f"{cumulative}")
                lines.append(f"{PREFIX}{name}_sum{_labels(base)} {total:g}")
                lines.append(f"{PREFIX}{name}_count{_labels(base)} {n}")
        return "\n".join(lines) + "\n"


class RayMetrics(Metrics):
    """Also records every metric as a Ray metric (only inside a Ray worker)."""

    def __init__(self) -> None:
        super().__init__()
        self._ray: dict[str, Any] = {}

    def count(self, name: str, value: float = 1.0, **tags: str) -> None:
        super().count(name, value, **tags)
        self._metric(name, "Counter", tuple(sorted(tags))).inc(value, tags=tags or None)

    def gauge(self, name: str, value: float) -> None:
        super().gauge(name, value)
        self._metric(name, "Gauge", ()).set(value)

    def observe(self, name: str, value: float, **tags: str) -> None:
        super().observe(name, value, **tags)
        self._metric(name, "Histogram", tuple(sorted(tags))).observe(value, tags=tags or None)

    def _metric(self, name: str, kind: str, tag_keys: tuple[str, ...]) -> Any:
        from ray.util import metrics  # a Ray worker's module; not needed in-process

        if name not in self._ray:  # a name is always used with the same tag keys
            extra = {"boundaries": list(BUCKETS)} if kind == "Histogram" else {}
            self._ray[name] = getattr(metrics, kind)(
                PREFIX + name, description=DESCRIPTIONS.get(name, name), tag_keys=tag_keys,
                **extra)
        return self._ray[name]


def _header(name: str, kind: str) -> list[str]:
    suffix = "_total" if kind == "counter" else ""
    return [f"# HELP {PREFIX}{name}{suffix} {DESCRIPTIONS.get(name, name)}",
            f"# TYPE {PREFIX}{name}{suffix} {kind}"]


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    escaped = (f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
               for k, v in sorted(labels.items()))
    return "{" + ",".join(escaped) + "}"
