"""CPU and peak RSS of every process the benchmark started, sampled from a thread.

The box is shared (other engineers run tests on it), so the sampler walks only our own
process tree (Redis, the stub, Ray's head, proxy and replicas, the peers) and reports the
rest of the machine's CPU as ``foreign``: a figure taken while others were busy says so.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import psutil

SCRIPTS = (("redis-server", "redis"), ("agents.local.stub_model", "stub model"),
           ("bench.floor_server", "floor (uvicorn)"), ("langgraph dev", "langgraph dev"),
           ("py-spy", "profiler"), ("bench.cluster_server", "cluster driver"),
           ("pytest", "pytest"))
NOT_SERVING = frozenset({"stub model", "load generator", "profiler", "pytest", "other"})
RAY_NAMES = {"ProxyActor": "serve proxy", "ServeController": "serve controller"}


def label(proc: psutil.Process) -> str:
    """A readable role for a process, from its command line (Ray rewrites its workers')."""
    try:
        argv = proc.cmdline()
    except (psutil.Error, OSError):
        return "?"
    first = argv[0] if argv else ""
    if first.startswith("ray::"):  # ray::ServeReplica:<app>:<deployment>, ray::ProxyActor...
        name = first.split()[0].removeprefix("ray::")
        if name.startswith("ServeReplica:"):  # ...:<deployment>.<method being run>
            return "replica " + name.split(":")[-1].split(".")[0]
        return RAY_NAMES.get(name, "ray " + name)
    base = os.path.basename(first)
    if base in ("raylet", "gcs_server"):
        return f"ray {base}"
    cmd = " ".join(argv)
    for needle, name in SCRIPTS:
        if needle in cmd:
            return name
    if proc.pid == os.getpid():
        return "load generator"
    return "ray other" if "ray" in cmd else "other"


@dataclass
class Mark:
    wall: float
    cpu: dict[int, float]
    system_busy: float
    system_total: float


@dataclass
class ProcessSampler:
    """Samples our process tree every ``period_s``; ``mark()`` snapshots CPU counters."""

    period_s: float = 1.0
    labels: dict[int, str] = field(default_factory=dict)
    rss: dict[int, list[tuple[float, int]]] = field(default_factory=lambda: defaultdict(list))
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _tree(self) -> list[psutil.Process]:
        me = psutil.Process()
        found = [me]
        with contextlib.suppress(psutil.Error):
            found += me.children(recursive=True)
        for proc in found:
            known = self.labels.get(proc.pid, "ray")
            # A Ray worker is renamed once it is placed, and a process caught while it
            # starts may show no command line at all ("other"): look again until it says.
            if known.startswith(("ray", "?")) or known == "other":
                self.labels[proc.pid] = label(proc)
        return found

    def _sample(self) -> dict[int, float]:
        cpu: dict[int, float] = {}
        now = time.time()
        with self._lock:
            for proc in self._tree():
                with contextlib.suppress(psutil.Error), proc.oneshot():
                    times = proc.cpu_times()
                    cpu[proc.pid] = times.user + times.system
                    self.rss[proc.pid].append((now, proc.memory_info().rss))
        return cpu

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self._sample()

    def start(self) -> ProcessSampler:
        self._thread = threading.Thread(target=self._run, name="proc-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def mark(self) -> Mark:
        times = psutil.cpu_times()
        total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
        idle = times.idle + getattr(times, "iowait", 0.0)
        return Mark(time.time(), self._sample(), total - idle, total)

    def window(self, start: Mark, end: Mark) -> dict[str, Any]:
        """CPU (% of one core) and peak RSS (MiB) per process between two marks."""
        span = max(end.wall - start.wall, 1e-9)
        rows = []
        for pid, cpu_end in end.cpu.items():
            cpu = cpu_end - start.cpu.get(pid, 0.0)  # born in the window: all of it
            samples = [rss for t, rss in self.rss.get(pid, []) if start.wall <= t <= end.wall]
            peak = max(samples, default=0) / 2**20
            rows.append({"pid": pid, "process": self.labels.get(pid, "?"),
                         "cpu_pct": 100 * cpu / span, "peak_rss_mib": peak})
        ours = sum(r["cpu_pct"] for r in rows)
        serving = sum(r["cpu_pct"] for r in rows if r["process"] not in NOT_SERVING)
        rows = [r for r in rows if r["cpu_pct"] >= 0.5 or r["peak_rss_mib"] >= 50]
        rows.sort(key=lambda r: -r["cpu_pct"])
        busy = 100 * (end.system_busy - start.system_busy) / span
        cores = psutil.cpu_count() or 1
        return {"processes": rows, "ours_cpu_pct": ours, "serving_cpu_pct": serving,
                "machine_cpu_pct": busy,
                "foreign_cpu_pct": max(0.0, busy - ours), "cores": cores,
                "total_peak_rss_mib": sum(r["peak_rss_mib"] for r in rows)}
