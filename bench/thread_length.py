"""What a turn costs as its thread grows: one thread, many turns, in one process.

    .venv/bin/python -m bench.thread_length [--turns 120] [--every 20] [--json out.json]

The soak's users keep one thread each for the whole soak, so by its last minute a thread
holds ~100 turns; this measures, without Ray or the load of other users, whether a turn's
CPU grows with the turns before it. The supervisor and its specialists in this process
(``AgentSystem``) on the embedded Redis and the stub model (no latency); the turns alternate
the soak's research question and a memory question. Per block of ``every`` turns: wall
time, this process's CPU, Redis's and the stub's, per turn, and the thread's checkpoint
bytes in Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from agents.keys import checkpoints_key
from agents.local.services import local_services
from agents.settings import Settings
from agents.system import AgentSystem

QUESTIONS = ("Tell me about redis streams", "What did I ask before?")


def pid_on_port(url: str) -> psutil.Process:
    """The process listening on ``url``'s port (Redis, the stub)."""
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    conn = next(c for c in psutil.net_connections("tcp")
                if c.status == psutil.CONN_LISTEN and c.laddr.port == port)
    return psutil.Process(conn.pid)


def cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


async def measure(settings: Settings, turns: int, every: int) -> list[dict[str, Any]]:
    system = await AgentSystem.create(settings)
    procs = {"this process": psutil.Process(), "redis": pid_on_port(settings.redis_url),
             "stub model": pid_on_port(settings.model.base_url)}
    thread_id = f"long-{uuid.uuid4().hex[:8]}"
    blocks = []
    try:
        for start in range(0, turns, every):
            began, cpu = time.perf_counter(), {n: cpu_s(p) for n, p in procs.items()}
            for turn in range(start, min(start + every, turns)):
                await system.ainvoke(QUESTIONS[turn % 2], thread_id)
            count = min(start + every, turns) - start
            wall = time.perf_counter() - began
            fields = await system.runtime.redis.hgetall(checkpoints_key(thread_id))
            blocks.append({
                "turns": f"{start + 1}-{start + count}",
                "wall_ms_per_turn": round(wall * 1000 / count, 1),
                **{f"{name} cpu_ms_per_turn": round((cpu_s(p) - cpu[name]) * 1000 / count, 1)
                   for name, p in procs.items()},
                "checkpoint_hash_kib": round(sum(len(k) + len(v) for k, v in fields.items())
                                             / 1024, 1)})
            print(json.dumps(blocks[-1]), flush=True)
    finally:
        await system.runtime.aclose()
    return blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=120)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    base = Settings(redis_url=None, data_dir=Path(tempfile.mkdtemp(prefix="thread-length-")),
                    model={"base_url": None}, stub={"ttft_ms": 0, "tokens_per_s": 0})
    with local_services(base) as settings:
        blocks = asyncio.run(measure(settings, args.turns, args.every))
    if args.json:
        args.json.write_text(json.dumps(blocks, indent=1))


if __name__ == "__main__":
    main()
