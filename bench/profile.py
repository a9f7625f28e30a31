"""Where the CPU goes: py-spy samples of our server processes, summed by library and function.

py-spy attaches from outside (``--nonblocking``: the targets are not paused), so the same
processes that served the load are profiled as they run, Ray replicas included. Only
on-CPU samples are kept (py-spy drops idle stacks by default).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]+)(?::\d+)?\)$")
CATEGORIES = (  # by the leaf frame's file; the first match wins
    ("langgraph/checkpoint/redis", "checkpointer (langgraph-checkpoint-redis)"),
    ("redisvl/", "checkpointer (redisvl)"),
    ("redis/", "redis-py client"),
    ("langgraph/", "langgraph runtime"),
    ("langchain_core/", "langchain-core (messages, callbacks)"),
    (("langchain_openai/", "openai/", "httpx/", "httpcore/", "anyio/"),
     "model client (langchain-openai, openai, httpx)"),
    ("pydantic", "pydantic"),
    ("ray/", "ray (serve, core worker)"),
    (("uvicorn/", "starlette/", "fastapi/", "h11/", "httptools/"),
     "http server (uvicorn, starlette, fastapi)"),
    ("serve_app/", "ours: serve_app"),
    ("agents/", "ours: agents"),
    (("json/", "orjson"), "json"),
    (("asyncio/", "uvloop"), "asyncio event loop"),
    (("threading.py", "concurrent/"), "threads in native code (Ray core worker, gRPC)"),
)


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def record(pids: dict[int, str], seconds: float, out_dir: Path,
           rate: int = 50) -> dict[str, Any]:
    """Sample every pid at once for ``seconds``; return per-process summaries."""
    binary = py_spy()
    if binary is None:
        return {"error": "py-spy is not installed"}
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = {}
    for pid, name in pids.items():
        out = out_dir / f"{name.replace(' ', '_')}-{pid}.txt"
        argv = [binary, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", str(rate),
                "-f", "raw", "-o", str(out), "--nonblocking"]
        procs[pid] = (name, out, subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                                  stderr=subprocess.PIPE))
    result = {}
    for pid, (name, out, proc) in procs.items():
        try:
            _, err = proc.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            err = b"timed out"
        if not out.exists():
            result[f"{name} ({pid})"] = {"error": err.decode(errors="replace")[-300:]}
            continue
        result[f"{name} ({pid})"] = summarise(out.read_text(), rate, seconds)
    return result


LINE = re.compile(r":\d+\)$")


def parse(raw: str) -> list[tuple[list[str], int]]:
    """py-spy's raw format: ``frame;frame;...;leaf count``; line numbers dropped, so one
    function is one entry."""
    stacks = []
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append(([LINE.sub(")", f) for f in stack.split(";")], int(count)))
    return stacks


def category(frame: str) -> str:
    match = FRAME.match(frame)
    path = match.group("file") if match else frame
    for needles, name in CATEGORIES:
        if any(n in path for n in ((needles,) if isinstance(needles, str) else needles)):
            return name
    return "stdlib, other" if "/" not in path else "other libraries"


def summarise(raw: str, rate: int, seconds: float, top: int = 12) -> dict[str, Any]:
    """On-CPU share by library (leaf frame) and the hottest functions, self and inclusive."""
    stacks = parse(raw)
    total = sum(count for _, count in stacks) or 1
    by_category: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        by_category[category(frames[-1])] += count
        self_time[frames[-1]] += count
        for frame in set(frames):
            if "serve_app/" in frame or "agents/" in frame or "aput" in frame or \
                    "aget_tuple" in frame or "to_jsonable" in frame:
                inclusive[frame] += count

    def share(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"what": k, "pct": round(100 * v / total, 1)} for k, v in counter.most_common(top)]

    return {"samples": total, "cpu_pct_of_core": round(100 * total / (rate * seconds), 1),
            "by_library": share(by_category), "self": share(self_time),
            "inclusive_hot_paths": share(inclusive)}
