"""The run's two plots (SVG, Agg backend: no display): p95 TTFT overhead against users per
target, from the staircase; Redis runs/s against shards, from the replay. Written into the
results dir; BENCHMARKS.md embeds the copies in ``bench/plots/`` (``publish``).

``python -m bench.plots bench/results/<stamp>/report.json`` makes them again from a report
and publishes them, for BENCHMARKS.md re-rendered from that report.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after the backend is chosen
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

PLOTS = Path(__file__).resolve().parent / "plots"
TTFT = "ttft_overhead.svg"
SHARDS = "redis_shards.svg"
plt.rcParams["svg.hashsalt"] = "bench"  # same figures, same file: no churn in git


def ttft_plot(report: dict[str, Any], path: Path) -> bool:
    """p95 TTFT overhead (ms) against users, a line per target; failed steps crossed."""
    targets = {name: sorted(t["steps"], key=lambda s: s["users"])
               for name, t in (report.get("targets") or {}).items() if t.get("steps")}
    if not targets:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, steps in targets.items():
        users = [s["users"] for s in steps]
        p95 = [max(s["ttft_overhead_ms"]["p95"] or 1.0, 1.0) for s in steps]  # log axis
        line, = ax.plot(users, p95, marker="o", label=name)
        failed = [(u, p) for u, p, s in zip(users, p95, steps, strict=True) if not s["passed"]]
        if failed:
            ax.scatter(*zip(*failed, strict=True), marker="x", s=80, color=line.get_color())
    budget = report["plan"]["steps"]["budget_ms"]
    ax.axhline(budget, color="grey", linestyle="--", label=f"goal {budget:g} ms")
    ax.set(xlabel="concurrent users", ylabel="p95 TTFT overhead (ms)",
           title="Time to first token beyond the model's, per step (x: step failed)")
    for axis, scale in ((ax.xaxis, ax.set_xscale), (ax.yaxis, ax.set_yscale)):
        scale("log")  # levels double; overheads span 100 ms to tens of seconds
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(NullFormatter())
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return _save(fig, path)


def shards_plot(report: dict[str, Any], path: Path) -> bool:
    """Replayed runs/s against shards: measured, the CPU-derived ceiling, and linear."""
    results = sorted((report.get("redis_replay") or {}).get("results") or [],
                     key=lambda r: r["shards"])
    if not results:
        return False
    shards = [r["shards"] for r in results]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(shards, [r["runs_per_s"] for r in results], marker="o",
            label="measured (driver on the same cores)")
    ceilings = [r.get("ceiling_runs_per_s") for r in results]
    if all(ceilings):
        ax.plot(shards, ceilings, marker="s",
                label="ceiling: 1000 / busiest master's CPU ms per run")
        ax.plot(shards, [ceilings[0] * n / shards[0] for n in shards], linestyle="--",
                color="grey", label="linear from the first")
    ax.set(xlabel="Redis Cluster masters", ylabel="runs/s", xticks=shards,
           title="Redis runs/s against shards (replayed command mix)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def soak_plot(result: dict[str, Any], summed: list[dict[str, float]], path: Path) -> bool:
    """A soak's minutes (``bench/soak.py``): p95 TTFT overhead, RSS, fds and connections
    summed over the serving processes (``summed``: a period's each, ``soak.totals``), Redis
    keys and used memory, the run queue."""
    rows = result.get("rows") or []
    if not rows:
        return False
    minutes = [row["period"] for row in rows]
    panels = [("p95 TTFT overhead (ms)", [[r["ttft_overhead_p95_ms"] or 0 for r in rows]],
               None),
              ("RSS (MiB)", [[t["rss_mib"] for t in summed]], None),
              ("open fds / TCP connections", [[t["fds"] for t in summed],
                                              [t["connections"] for t in summed]],
               ["fds", "connections"]),
              ("Redis keys", [[r["keys"] for r in rows]], None),
              ("Redis used memory (MiB)", [[r["used_memory_mib"] for r in rows]], None),
              ("runs queued", [[r["runs_queued"] for r in rows]], None)]
    fig, axes = plt.subplots(2, 3, figsize=(11, 5.5), sharex=True)
    for ax, (title, series, labels) in zip(axes.flat, panels, strict=True):
        for index, values in enumerate(series):
            ax.plot(minutes, values, label=labels[index] if labels else None)
        ax.set_title(title, fontsize=10)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if labels:
            ax.legend(fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel("minute")
    fig.suptitle(f"Soak: {result['users']} users, {result['think_s']:g} s think time")
    return _save(fig, path)


def _save(fig: Any, path: Path) -> bool:
    fig.tight_layout()
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)
    return True


def write_plots(report: dict[str, Any], out_dir: Path) -> list[str]:
    """The plots this report has data for, written into ``out_dir``: their file names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    made = [name for name, plot in ((TTFT, ttft_plot), (SHARDS, shards_plot))
            if plot(report, out_dir / name)]
    return made


def publish(out_dir: Path, names: list[str]) -> None:
    """Copy the plots ``names`` from ``out_dir`` to where BENCHMARKS.md embeds them."""
    PLOTS.mkdir(exist_ok=True)
    for name in names:
        shutil.copy(out_dir / name, PLOTS / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("report", type=Path, help="a run's report.json")
    args = parser.parse_args()
    names = write_plots(json.loads(args.report.read_text()), args.report.parent)
    publish(args.report.parent, names)
    print(f"{', '.join(names) or 'no plot'} in {PLOTS}")


if __name__ == "__main__":
    main()
