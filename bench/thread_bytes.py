"""Bytes of Redis per thread against turns, before and after retention.

    .venv/bin/python -m bench.thread_bytes [--turns 50] [--out BENCHMARKS.md]

Drives one thread through ``--turns`` short research turns through the API's service in
one process (the stub model over HTTP, a fresh embedded Redis), twice: with retention off
(``retention.enabled: false``: everything kept, as before issue 11) and with the default
policy. After each turn, once the thread is at rest (the run has ended and its event
stream's grace has passed), it sums ``MEMORY USAGE`` of every key naming the thread (its
records, runs, events, checkpoints, writes, its specialists' sub-threads and their ledger
entries) and compares it with the raw conversation: the thread's messages as
``GET /threads/{id}/state`` returns them, as compact JSON. Writes a table and an SVG plot
into its own section of BENCHMARKS.md (between marker comments, kept by ``bench.run``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from agents.local.services import local_services
from agents.settings import PROJECT_ROOT, Settings
from agents.system import AgentSystem
from serve_app.resources.schemas import RunCreate
from serve_app.resources.service import AgentService

START = "<!-- thread-bytes:start (bench/thread_bytes.py; bench.run keeps this section) -->"
END = "<!-- thread-bytes:end -->"
GRACE_S = 1  # the event streams' grace in this measurement (default 60 s)
SHOWN = (1, 2, 5, 10, 15, 20, 30, 40, 50)
GOAL = 5.0


async def thread_bytes(service: AgentService, thread_id: str) -> tuple[int, int]:
    keys = [k async for k in service.redis.scan_iter(match=f"*{thread_id}*", count=5000)]
    sizes = [await service.redis.memory_usage(k, samples=0) or 0 for k in keys]
    return sum(sizes), len(keys)


async def raw_bytes(service: AgentService, thread_id: str) -> int:
    state = await service.threads.get_state(thread_id)
    return len(json.dumps(state["values"].get("messages", []), separators=(",", ":"),
                          ensure_ascii=False).encode())


async def drive(settings: Settings, turns: int, label: str) -> list[dict[str, Any]]:
    rows = []
    async with await AgentSystem.create(settings) as system:
        service = AgentService.in_process(system, replica_id=f"bytes-{label}")
        service.executor.start()
        try:
            thread = await service.threads.create(None, {"bench": "thread_bytes"})
            thread_id = thread["thread_id"]
            for n in range(1, turns + 1):
                started = time.perf_counter()
                run = await service.runs.create(thread_id, RunCreate.model_validate({
                    "assistant_id": "supervisor", "stream_mode": ["values"],
                    "input": {"messages": [{"role": "user",
                                            "content": f"What is Redis persistence? ({n})"}]}}))
                record = await service.streams.wait_for_end(thread_id, run["run_id"])
                while await service.executor.leases.queued(thread_id):
                    await asyncio.sleep(0.01)
                turn_s = time.perf_counter() - started
                await asyncio.sleep(GRACE_S + 0.2)  # at rest: the grace has passed
                used, keys = await thread_bytes(service, thread_id)
                raw = await raw_bytes(service, thread_id)
                rows.append({"turns": n, "status": record["status"], "bytes": used,
                             "keys": keys, "raw": raw, "ratio": used / raw if raw else None,
                             "turn_s": turn_s})
                print(f"{label:6} turn {n:3}: {used:>9,} B in {keys:4} keys; raw {raw:>7,} B;"
                      f" {used / raw:5.1f}x", flush=True)
        finally:
            await service.aclose()
    return rows


async def measure(turns: int, before_rows: list | None = None) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="thread-bytes-"))
    base = Settings(redis_url=None, data_dir=data_dir, workspace_dir=data_dir / "workspace",
                    model={"base_url": None, "max_retries": 0})
    with local_services(base) as ready:
        before = ready.model_copy(update={"retention": ready.retention.model_copy(
            update={"enabled": False})})
        after = ready.model_copy(update={"retention": ready.retention.model_copy(
            update={"events_grace_s": GRACE_S})})
        return {"turns": turns, "settings": ready.retention.model_dump(),
                "before": before_rows or await drive(before, turns, "before"),
                "after": await drive(after, turns, "after"),
                "measured_at": time.strftime("%Y-%m-%d %H:%M %Z")}


def svg(result: dict[str, Any], width: int = 640, height: int = 320) -> str:
    """Bytes against turns: before, after, and the goal (5x the raw conversation)."""
    left, right, top, bottom = 70, 20, 20, 40
    series = {"before (no retention)": ([(r["turns"], r["bytes"]) for r in result["before"]],
                                        "#d62728", ""),
              "after (default policy)": ([(r["turns"], r["bytes"]) for r in result["after"]],
                                         "#1f77b4", ""),
              f"goal: {GOAL:g}x raw conversation": (
                  [(r["turns"], GOAL * r["raw"]) for r in result["after"]], "#2ca02c",
                  ' stroke-dasharray="6 4"')}
    max_x = max(result["turns"], 1)
    values = [v for points, _, _ in series.values() for _, v in points if v > 0]
    low = 10 ** math.floor(math.log10(min(values)))
    high = 10 ** math.ceil(math.log10(max(values)))

    def x(v: float) -> float:
        return left + (width - left - right) * v / max_x

    def y(v: float) -> float:  # log scale: before and after differ ~100x
        share = (math.log10(max(v, low)) - math.log10(low)) / (math.log10(high / low))
        return height - bottom - (height - top - bottom) * share

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<line x1="{left}" y1="{y(low)}" x2="{width - right}" y2="{y(low)}" '
             'stroke="#333"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{y(low)}" stroke="#333"/>']
    value = low
    while value <= high:
        label = f"{value / 1000:,.0f} kB" if value < 10**6 else f"{value / 10**6:,.0f} MB"
        parts.append(f'<text x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end">'
                     f'{label}</text>')
        parts.append(f'<line x1="{left}" y1="{y(value):.1f}" x2="{width - right}" '
                     f'y2="{y(value):.1f}" stroke="#eee"/>')
        value *= 10
    for turn in range(0, max_x + 1, max(1, max_x // 10)):
        parts.append(f'<text x="{x(turn):.1f}" y="{y(low) + 16}" text-anchor="middle">'
                     f'{turn}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 6}" '
                 'text-anchor="middle">turns (bytes on a log scale)</text>')
    for i, (name, (points, colour, dash)) in enumerate(series.items()):
        path = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" '
                     f'stroke-width="2"{dash}/>')
        parts.append(f'<text x="{left + 12}" y="{top + 14 * (i + 1)}" fill="{colour}">'
                     f'{name}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def section(result: dict[str, Any], plot_path: str) -> str:
    before = {r["turns"]: r for r in result["before"]}
    after = {r["turns"]: r for r in result["after"]}
    lines = ["| turns | raw conversation | before: bytes (keys) | before / raw | "
             "after: bytes (keys) | after / raw |", "|---|---|---|---|---|---|"]
    for n in SHOWN:
        if n in before and n in after:
            b, a = before[n], after[n]
            lines.append(f"| {n} | {a['raw']:,} B | {b['bytes']:,} B ({b['keys']}) | "
                         f"{b['bytes'] / b['raw']:.1f}x | {a['bytes']:,} B ({a['keys']}) | "
                         f"{a['bytes'] / a['raw']:.1f}x |")
    at = after.get(20) or after[max(after)]
    last = after[max(after)]
    first = after[min(after)]
    slope = (last["bytes"] - first["bytes"]) / max(1, last["turns"] - first["turns"])
    settings = result["settings"]
    return "\n".join([
        START,
        "## Redis bytes per thread against turns (before and after retention)",
        f"Measured by `python -m bench.thread_bytes --turns {result['turns']}` on "
        f"{result['measured_at']}: one thread, short research turns through the API's "
        "service in one process (stub model over HTTP, a fresh embedded Redis), measured at "
        "rest after each turn (run ended, its event stream's grace passed). **Bytes**: "
        "`MEMORY USAGE` summed over every key naming the thread (records, runs, events, "
        "checkpoints, writes, specialists' sub-threads, ledger entries). **Raw**: the "
        "thread's messages as `GET /threads/{id}/state` returns them, compact JSON. "
        "Before: `retention.enabled: false` (everything kept, as before issue 11); after: "
        f"the default policy (`keep_latest: {settings['keep_latest']}`, `keep_for_s: "
        f"{settings['keep_for_s']:g}`, `keep_runs: {settings['keep_runs']}`); both on the "
        "same embedded Redis (`hash-max-listpack-value 1024`).",
        "",
        "\n".join(lines),
        "",
        f"At {at['turns']} turns the thread holds {at['bytes']:,} B, "
        f"{at['bytes'] / at['raw']:.1f}x its raw conversation (goal: <= {GOAL:g}x): "
        f"{'met' if at['bytes'] <= GOAL * at['raw'] else '**not met**'}. Growth after "
        f"retention is linear, ~{slope:,.0f} B per turn (one zstd-compressed copy of the "
        "conversation in the latest checkpoint, plus the capped run records); before, "
        "every turn kept all its checkpoints, each holding the whole conversation, and its "
        "specialists' sub-threads: quadratic. Each extra checkpoint kept (`keep_latest`, "
        "`keep_for_s`) costs about one more compressed copy of the conversation.",
        "",
        f"![bytes per thread against turns]({plot_path})",
        END,
    ])


def write_section(markdown: Path, text: str) -> None:
    """Replace (or append) the section between the markers, leaving the rest alone."""
    current = markdown.read_text() if markdown.exists() else "# Benchmarks\n"
    if START in current and END in current:
        head, rest = current.split(START, 1)
        tail = rest.split(END, 1)[1]
        current = head + text + tail
    else:
        current = current.rstrip("\n") + "\n\n" + text + "\n"
    markdown.write_text(current)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "BENCHMARKS.md")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="render a saved result (bench/results/thread_bytes.json)")
    parser.add_argument("--reuse-before", type=Path, default=None,
                        help="take the 'before' rows from a saved result, measure 'after'")
    args = parser.parse_args()
    if args.from_json:
        result = json.loads(args.from_json.read_text())
    else:
        before = json.loads(args.reuse_before.read_text())["before"] \
            if args.reuse_before else None
        result = asyncio.run(measure(args.turns, before))
        results = PROJECT_ROOT / "bench" / "results"
        results.mkdir(parents=True, exist_ok=True)
        (results / "thread_bytes.json").write_text(json.dumps(result, indent=1))
    plot = args.out.parent / "bench" / "thread_bytes.svg"
    plot.parent.mkdir(parents=True, exist_ok=True)
    plot.write_text(svg(result))
    write_section(args.out, section(result, plot.relative_to(args.out.parent).as_posix()))
    print(f"wrote {args.out} and {plot}")


if __name__ == "__main__":
    main()
