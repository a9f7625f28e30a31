"""The soak: a steady load held for a long time, sampled per period, to see what drifts.

    .venv/bin/python -m bench.soak [--minutes 60] [--users 170] [--think-s 30]
    .venv/bin/python -m bench.soak --table bench/results/soak-<stamp>.json [--every 5] \
        [--plot bench/plots/soak.svg]

Starts the embedded Redis Cluster (3 masters, one replica each), the stub model and the
Serve app (configs/local.yaml), calibrates the model time of each turn kind, then holds
``users`` simulated users (default 170: on 2 cores with the Redis Cluster's six nodes,
245 had a third of their turns refused at admission; docs/reliability.md) for
``minutes``. Per period (a minute): p95 TTFT overhead of the turns that started in it,
RSS, open fds and TCP connections of each of our processes, Redis keys (side-effect
records apart) and used memory, all masters, run queue depth. Then every thread is
audited. Writes ``bench/results/soak-<stamp>.json`` and prints the growth of each
figure from minute 10 to the last (goal: < 5 %). Short runs use ``Soak`` directly
(``tests/test_redis_faults.py``).

Users keep their threads for the whole soak (``turns_per_thread`` large): new threads
would grow Redis keys and memory by design (conversations are kept), which is not a leak.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import redis

from agents.keys import backoffice_key
from agents.local.process import free_port
from agents.local.services import local_services
from agents.settings import PROJECT_ROOT, Settings
from bench.audit import audit
from bench.console import say
from bench.loadgen import LoadConfig, LoadGenerator, ModelTime, summarise
from bench.plots import soak_plot
from bench.procs import label
from bench.stub import StubAdmin, calibrate
from serve_app.ops.launcher import HAPROXY_MODE_PORTS, serve_cluster

RESULTS = Path(__file__).resolve().parent / "results"
# the processes whose drift matters (not the load generator, not the stub model)
SERVING = ("replica ", "serve proxy", "serve controller", "redis", "ray raylet",
           "ray gcs_server", "floor")


def soak_load(think_s: float) -> LoadConfig:
    """The soak's users: the standard mix, each on one thread for the whole soak."""
    return LoadConfig(think_s=think_s, turns_per_thread=10**6, approval_delay_s=1.0)


def process_figures() -> dict[str, dict[str, float]]:
    """RSS (MiB), open fds and TCP connections of each serving process of our tree, by
    ``role pid``."""
    found = {}
    me = psutil.Process()
    with contextlib.suppress(psutil.Error):
        for proc in me.children(recursive=True):
            role = label(proc)
            if not role.startswith(SERVING):
                continue
            with contextlib.suppress(psutil.Error), proc.oneshot():
                found[f"{role} {proc.pid}"] = {
                    "rss_mib": proc.memory_info().rss / 2**20, "fds": proc.num_fds(),
                    "connections": len(proc.net_connections(kind="tcp"))}
    return found


# One of each per refund issued, kept by design: the effect ledger's entry (a side effect
# done once, ``agents.effects``) and the demo back office's receipt (its idempotency
# record, standing for an external system's). Counted apart from the keys that must stay
# flat.
EFFECT_RECORDS = ("*:effect*", backoffice_key("receipt:*"))


def redis_figures(url: str, cluster: bool) -> dict[str, int]:
    """Keys (effect records apart) and used memory, summed over the masters."""
    client = redis.RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)
    nodes = ([client.get_redis_connection(n) for n in client.get_primaries()] if cluster
             else [client])
    try:
        effects = sum(1 for n in nodes for match in EFFECT_RECORDS
                      for _ in n.scan_iter(match=match, count=5000))
        return {"keys": sum(n.dbsize() for n in nodes) - effects, "effect_records": effects,
                "used_memory_mib": sum(int(n.info("memory")["used_memory"])
                                       for n in nodes) / 2**20}
    finally:
        client.close()


async def queue_depth(base_url: str, asks: int = 6) -> float:
    """Runs waiting in the pool's queue (``runs_queued``), as the replicas that answer see it."""
    seen = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        for _ in range(asks):
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{base_url}/metrics") as resp:
                    text = await resp.text()
                seen += [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                         if line.startswith("agent_cluster_runs_queued")]
    return max(seen, default=0.0)


@dataclass
class Soak:
    """``users`` users on ``base_url`` for ``periods`` x ``period_s``, sampled each period."""

    base_url: str
    redis_url: str
    cluster: bool
    model: ModelTime
    users: int
    think_s: float = 30.0
    period_s: float = 60.0
    rows: list[dict[str, Any]] = field(default_factory=list)

    async def run(self, periods: int) -> dict[str, Any]:
        async with LoadGenerator(self.base_url, soak_load(self.think_s)) as gen:
            gen.set_users(self.users)
            for index in range(periods):
                start = time.perf_counter()
                await asyncio.sleep(self.period_s)
                self.rows.append(await self.sample(gen, index, start))
                say(f"  soak period {index + 1}/{periods}: {short(self.rows[-1])}")
            await gen.stop(drain_s=self.think_s + 60)
            found = await audit(self.base_url, gen.records)
        return {"users": self.users, "think_s": self.think_s, "period_s": self.period_s,
                "rows": self.rows, "audit": found}

    async def sample(self, gen: LoadGenerator, index: int, start: float) -> dict[str, Any]:
        window = summarise(gen.records, start, time.perf_counter(), self.model)
        return {"period": index + 1, "turns_ok": window["turns_ok"],
                "errors": sum(window["errors"].values()),
                "ttft_overhead_p95_ms": window["ttft_overhead_ms"]["p95"],
                "processes": await asyncio.to_thread(process_figures),
                **await asyncio.to_thread(redis_figures, self.redis_url, self.cluster),
                "runs_queued": await queue_depth(self.base_url)}


def totals(row: dict[str, Any], only: set[str] | None = None) -> dict[str, float]:
    """A period's figures summed over processes (``only`` these), a process's own drift
    shows in its rows."""
    summed: dict[str, float] = defaultdict(float)
    for process, figures in row["processes"].items():
        if only is None or process in only:
            for name, value in figures.items():
                summed[name] += value
    return {**summed, "keys": row["keys"], "used_memory_mib": row["used_memory_mib"]}


def growth(rows: list[dict[str, Any]], since: int,
           same_processes: bool = False) -> dict[str, float | None]:
    """Relative growth of each summed figure from period ``since`` (1-based) to the last;
    ``same_processes``: of the processes alive at both ends only (autoscaling adds replicas,
    a replica killed is replaced: those are not drift)."""
    first_row, last_row = rows[since - 1], rows[-1]
    only = set(first_row["processes"]) & set(last_row["processes"]) if same_processes \
        else None
    first, last = totals(first_row, only), totals(last_row, only)
    return {name: (last[name] - value) / value if value else None
            for name, value in first.items()}


def changed(rows: list[dict[str, Any]], since: int, figure: str) -> dict[str, tuple]:
    """Processes whose ``figure`` changed from period ``since`` to the last: (from, to)."""
    first, last = rows[since - 1]["processes"], rows[-1]["processes"]
    return {name: (first.get(name, {}).get(figure), figures[figure])
            for name, figures in last.items()
            if first.get(name, {}).get(figure) != figures[figure]}


def short(row: dict[str, Any]) -> str:
    summed = totals(row)
    p95 = row["ttft_overhead_p95_ms"]
    return (f"{row['turns_ok']} turns ok, {row['errors']} errors, p95 TTFT overhead "
            f"{'-' if p95 is None else f'{p95:.0f} ms'}, RSS {summed['rss_mib']:.0f} MiB, "
            f"fds {summed['fds']:.0f}, connections {summed['connections']:.0f}, "
            f"keys {row['keys']}, Redis {row['used_memory_mib']:.1f} MiB, "
            f"queued {row['runs_queued']:.0f}")


def table(result: dict[str, Any], every: int = 1) -> str:
    """A soak's periods as a markdown table (docs/reliability.md): every ``every``-th
    period, and the last."""
    lines = ["| minute | turns ok | p95 TTFT overhead ms | RSS MiB | fds | TCP connections | "
             "keys | refunds' effect records | Redis used MiB | queued |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    rows = result["rows"]
    for row in rows:
        if row["period"] % every and row is not rows[-1]:
            continue
        summed, p95 = totals(row), row["ttft_overhead_p95_ms"]
        lines.append(f"| {row['period']} | {row['turns_ok']} | "
                     f"{'-' if p95 is None else f'{p95:.0f}'} | {summed['rss_mib']:,.0f} | "
                     f"{summed['fds']:.0f} | {summed['connections']:.0f} | {row['keys']:,} | "
                     f"{row.get('effect_records', '-')} | {row['used_memory_mib']:.1f} | "
                     f"{row['runs_queued']:.0f} |")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--users", type=int, default=170)
    parser.add_argument("--think-s", type=float, default=30.0)
    parser.add_argument("--growth-from", type=int, default=10,
                        help="the minute growth is measured from (past warm-up)")
    parser.add_argument("--table", type=Path, metavar="SOAK_JSON",
                        help="print a soak's results as a markdown table, run nothing")
    parser.add_argument("--every", type=int, default=1, help="with --table: every N-th minute")
    parser.add_argument("--plot", type=Path, metavar="SVG",
                        help="with --table: also draw the minutes into this SVG")
    args = parser.parse_args()
    if args.table:
        result = json.loads(args.table.read_text())
        print(table(result, args.every))
        if args.plot:
            soak_plot(result, [totals(row) for row in result["rows"]], args.plot)
        return
    for name in HAPROXY_MODE_PORTS:  # Serve's other ports: free ones, not the defaults
        os.environ.setdefault(name, str(free_port()))
    base = Settings(redis_url=None, data_dir=Path(tempfile.mkdtemp(prefix="soak-")),
                    model={"base_url": None}, stub={"ttft_ms": 200, "tokens_per_s": 200},
                    redis={"shards": 3, "replicas": 1})
    with local_services(base) as settings, \
            serve_cluster(settings, PROJECT_ROOT / "configs" / "local.yaml",
                          port=free_port()) as url:
        model, _ = await calibrate(url, StubAdmin(settings.model.base_url))
        soak = Soak(url, settings.redis_url, True, model, args.users, args.think_s)
        result = await soak.run(args.minutes)
    since = min(args.growth_from, len(result["rows"]))
    result["growth"] = growth(result["rows"], since)
    result["growth_same_processes"] = growth(result["rows"], since, same_processes=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=1))
    for key, what in (("growth", "every process"),
                      ("growth_same_processes", "the processes alive throughout")):
        say(f"soak: growth from minute {since} to {len(result['rows'])}, {what}: "
            + ", ".join(f"{k} {'-' if v is None else f'{v * 100:+.1f} %'}"
                        for k, v in result[key].items()))
    say(f"soak: audit {result['audit']}; written to {out}")


if __name__ == "__main__":
    asyncio.run(main())
