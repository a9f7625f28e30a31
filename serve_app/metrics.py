"""Application metrics behind one small interface, so the service and its tests never
depend on an exporter: ``Metrics`` keeps counters and gauges in memory (served as
Prometheus text at ``GET /metrics``); ``RayMetrics`` also records them as Ray metrics,
which Ray's Prometheus endpoint on each node exports with the replica's labels."""

from __future__ import annotations

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
}


class Metrics:
    def __init__(self) -> None:
        self.counters: defaultdict[str, defaultdict[Tags, float]] = defaultdict(
            lambda: defaultdict(float))
        self.gauges: dict[str, float] = {}

    def count(self, name: str, value: float = 1.0, **tags: str) -> None:
        self.counters[name][tuple(sorted(tags.items()))] += value

    def gauge(self, name: str, value: float) -> None:
        self.gauges[name] = value

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

    def _metric(self, name: str, kind: str, tag_keys: tuple[str, ...]) -> Any:
        from ray.util import metrics  # a Ray worker's module; not needed in-process

        if name not in self._ray:  # a name is always used with the same tag keys
            self._ray[name] = getattr(metrics, kind)(
                PREFIX + name, description=DESCRIPTIONS.get(name, name), tag_keys=tag_keys)
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
