"""Bytes of Redis per thread against turns, every checkpoint kept.

    .venv/bin/python -m bench.thread_bytes [--turns 20] [--out BENCHMARKS.md]
        [--previous bench/thread_bytes_previous.json]

Drives one thread through ``--turns`` short research turns through the API's service in
one process (the stub model over HTTP, a fresh embedded Redis), twice: with retention off
(``retention.enabled: false``: every checkpoint and every specialist's sub-thread kept)
and with the default policy (every checkpoint of the thread kept, finished sub-threads
pruned). After each turn, once the thread is at rest (the run has ended and its event
stream's grace has passed), it sums ``MEMORY USAGE`` of every key naming the thread (its
records, runs, events, checkpoints, writes, messages, its specialists' sub-threads and
their ledger entries) and compares it with the raw conversation: the thread's messages as
``GET /threads/{id}/state`` returns them, as compact JSON. Writes a table and an SVG plot
into its own section of BENCHMARKS.md (between marker comments, kept by ``bench.run``);
``--previous``: a result of an earlier saver, shown beside (its both runs).
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
GOAL = 8.0  # x the raw conversation at 20 turns, every checkpoint kept (issue 26)


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
                listed = len(await service.threads.history(thread_id, 100_000, None, None))
                rows.append({"turns": n, "status": record["status"], "bytes": used,
                             "checkpoints": listed,
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
    """Bytes against turns: retention off, the default policy, and the goal (8x the raw
    conversation); an earlier saver's default policy if given (``previous``)."""
    left, right, top, bottom = 70, 20, 20, 40
    series = {"retention off": ([(r["turns"], r["bytes"]) for r in result["before"]],
                                "#d62728", ""),
              "default: every checkpoint kept": (
                  [(r["turns"], r["bytes"]) for r in result["after"]], "#1f77b4", ""),
              f"goal: {GOAL:g}x raw conversation": (
                  [(r["turns"], GOAL * r["raw"]) for r in result["after"]], "#2ca02c",
                  ' stroke-dasharray="6 4"')}
    if previous := result.get("previous"):
        series["earlier saver, retention off"] = (
            [(r["turns"], r["bytes"]) for r in previous["before"]], "#ff7f0e",
            ' stroke-dasharray="2 3"')
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


def cell(row: dict[str, Any] | None) -> str:
    return f"{row['bytes']:,} B ({row['bytes'] / row['raw']:.1f}x)" if row else "-"


def section(result: dict[str, Any], plot_path: str) -> str:
    before = {r["turns"]: r for r in result["before"]}
    after = {r["turns"]: r for r in result["after"]}
    previous = result.get("previous")
    earlier = [{r["turns"]: r for r in previous[run]} for run in ("before", "after")] \
        if previous else []
    head = "| turns | raw conversation | checkpoints listed | "
    head += "earlier saver: retention off | earlier saver: its default | " if earlier else ""
    lines = [head + "retention off | default: every checkpoint kept |",
             "|---" * (5 + 2 * bool(earlier)) + "|"]
    for n in SHOWN:
        if n in before and n in after:
            a = after[n]
            row = f"| {n} | {a['raw']:,} B | {a.get('checkpoints', '-')} | "
            row += "".join(f"{cell(runs.get(n))} | " for runs in earlier)
            lines.append(row + f"{cell(before[n])} | {cell(a)} |")
    at = after.get(20) or after[max(after)]
    half = after.get(at["turns"] // 2)
    last, first = after[max(after)], after[min(after)]
    slope = (last["bytes"] - first["bytes"]) / max(1, last["turns"] - first["turns"])
    settings = result["settings"]
    growth = f"{at['bytes'] / half['bytes']:.2f}x the bytes of {half['turns']} turns, " \
        if half else ""
    return "\n".join([
        START,
        "## Redis bytes per thread, every checkpoint kept",
        f"Measured by `python -m bench.thread_bytes --turns {result['turns']}"
        f"{' --previous ' + previous['path'] if previous else ''}` on "
        f"{result['measured_at']}: one thread, short research turns of the supervisor "
        "through the API's service in one process (stub model over HTTP, a fresh embedded "
        "Redis), measured at rest after each turn (run ended, its event stream's grace "
        "passed). **Bytes**: `MEMORY USAGE` summed over every key naming the thread "
        "(records, runs, events, checkpoints, writes, messages, specialists' sub-threads, "
        "ledger entries), and the multiple of the raw conversation. **Raw**: the thread's "
        "messages as `GET /threads/{id}/state` returns them, compact JSON. **Checkpoints "
        "listed**: `threads.get_history`'s length with the default policy. Retention off: "
        "`retention.enabled: false` (every checkpoint and sub-thread kept); default: "
        f"`keep_latest: {settings['keep_latest']}` (every checkpoint of the thread), "
        f"finished specialists' sub-threads pruned, `keep_runs: {settings['keep_runs']}`"
        + (f"; the earlier saver (each checkpoint holding the whole conversation, "
           f"{previous['measured_at']}) with its default `keep_latest: "
           f"{previous['settings']['keep_latest']}`" if previous else "") + ".",
        "",
        "\n".join(lines),
        "",
        f"At {at['turns']} turns, every checkpoint kept, the thread holds {at['bytes']:,} B, "
        f"{at['bytes'] / at['raw']:.1f}x its raw conversation (goal: <= {GOAL:g}x): "
        f"{'met' if at['bytes'] <= GOAL * at['raw'] else '**not met**'}; {growth}"
        f"~{slope:,.0f} B per turn: linear. A checkpoint names its messages (8 B each, 32 "
        "at a time as one chunk stored once) instead of holding them, a message is stored "
        "once in its thread (zstd with a primed dictionary), a task's results are one "
        "field. Before, each checkpoint held the whole conversation: quadratic, so the "
        "default kept one.",
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
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "BENCHMARKS.md")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="render a saved result (bench/results/thread_bytes.json)")
    parser.add_argument("--reuse-before", type=Path, default=None,
                        help="take the 'before' rows from a saved result, measure 'after'")
    parser.add_argument("--previous", type=Path, default=None,
                        help="an earlier saver's result, shown beside")
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
    if args.previous:
        result["previous"] = {**json.loads(args.previous.read_text()),
                              "path": args.previous.as_posix()}
    plot = args.out.parent / "bench" / "thread_bytes.svg"
    plot.parent.mkdir(parents=True, exist_ok=True)
    plot.write_text(svg(result))
    write_section(args.out, section(result, plot.relative_to(args.out.parent).as_posix()))
    print(f"wrote {args.out} and {plot}")


if __name__ == "__main__":
    main()
