"""Re-claim time after killing the supervisor replica that owns a run, over N kills.

    .venv/bin/python -m bench.reclaim [--kills 10]

For each kill: start a multi-step run, wait until a specialist call is in flight, SIGKILL the
owner replica, then measure the time until the run's next attempt starts on another replica
(its ``metadata`` event with ``attempt`` 2) and until it ends. A reader that dropped at the
kill reconnects with ``Last-Event-ID``: events lost or duplicated are counted (must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from langgraph_sdk import get_client

from agents.local.process import free_port
from agents.local.services import local_services
from agents.settings import PROJECT_ROOT, Settings
from serve_app.ops.launcher import serve_cluster

PROMPT = ("Research how Redis persistence works and write a Python function that parses a "
          "redis.conf line")


async def owner_pid(http: httpx.AsyncClient, replica_id: str) -> int:
    for _ in range(500):
        me = (await http.get("/whoami")).json()
        if me["replica_id"] == replica_id:
            return me["pid"]
    raise RuntimeError("owner replica never answered")


async def one_kill(url: str) -> dict[str, float]:
    client = get_client(url=url)
    tid = (await client.threads.create())["thread_id"]
    run = await client.runs.create(tid, "supervisor", input={"messages": [
        {"role": "user", "content": PROMPT}]}, stream_mode=["custom"])
    rid = run["run_id"]
    before = []
    async for part in client.runs.join_stream(tid, rid):
        before.append(part)
        if part.event == "custom" and part.data.get("type") == "progress":
            break
    record = await client.runs.get(tid, rid)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        os.kill(await owner_pid(http, record["replica"]), signal.SIGKILL)
    killed = time.monotonic()
    reclaimed = None
    after = []
    for _ in range(5):  # a reconnect can land on the dead replica: retry like a client
        try:
            async for part in client.runs.join_stream(tid, rid, last_event_id=after[-1].id
                                                      if after else before[-1].id):
                after.append(part)
                if part.event == "metadata" and reclaimed is None:
                    reclaimed = time.monotonic() - killed
            break
        except httpx.HTTPError:
            await asyncio.sleep(0.5)
    done = time.monotonic() - killed
    ids = [p.id for p in before + after]
    final = await client.runs.get(tid, rid)
    return {"reclaim_s": reclaimed or float("nan"), "done_s": done,
            "duplicates": len(ids) - len(set(ids)), "ended": float(after[-1].event == "end"),
            "success": float(final["status"] == "success"), "attempt": final["attempt"]}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=10)
    args = parser.parse_args()
    base = Settings(redis_url=None, data_dir=Path(tempfile.mkdtemp(prefix="reclaim-")),
                    model={"base_url": None}, stub={"ttft_ms": 200})
    with local_services(base) as settings, \
            serve_cluster(settings, PROJECT_ROOT / "configs" / "local.yaml",
                          port=free_port()) as url:
        results = []
        for _ in range(args.kills):
            results.append(await one_kill(url))
            await asyncio.sleep(8)  # let Serve replace the killed replica
    reclaim = [r["reclaim_s"] for r in results]
    print(f"kills: {len(results)}; re-claim p50 {statistics.median(reclaim):.2f} s, "
          f"max {max(reclaim):.2f} s; run done after kill p50 "
          f"{statistics.median(r['done_s'] for r in results):.2f} s; "
          f"duplicated events {sum(r['duplicates'] for r in results)}; "
          f"streams ended {sum(r['ended'] for r in results):.0f}/{len(results)}; "
          f"runs succeeded {sum(r['success'] for r in results):.0f}/{len(results)}")


if __name__ == "__main__":
    asyncio.run(main())
