"""What 10,000 users at 30 s think time need, from a run's measured figures only.

Every input comes from the report of a benchmark run (``measured``): the demand one user
makes (runs per turn and the non-think part of a turn's cycle, from the capacity step of the
staircase), the serving CPU per run (at the step where the latency goal still held, and the
marginal cost between steps), Redis runs/s per shard at saturation (the replayed command
mix, ``bench/redis_replay.py``), Redis memory per thread (``bench/redis_mem.py``) and each
process's RSS. What is not measured is an ``Assumptions`` field, printed with the result.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

NOT_APP = ("redis", "stub model", "load generator", "profiler", "pytest", "other",
           "cluster driver")


@dataclass(frozen=True)
class Measured:
    """The figures of one target of one run."""

    target: str
    think_s: float               # mean think time of the run
    users: int                   # the largest step within the latency goal (else the first)
    within_goal: bool            # that step met the latency goal
    runs_per_s: float            # at that step
    turns_per_s: float
    turn_s: float                # mean turn, first message to last token (approvals included)
    serving_cpu_pct: float       # % of a core: replicas, proxy, Ray, Redis
    marginal_cpu_s_per_run: float | None
    redis_cpu_ms_per_run: float | None    # of the real load (INFO cpu over the staircase)
    shard_runs_per_s: float | None        # per shard at saturation (replay, most shards)
    shards_replayed: int | None
    shard_scaling: float | None           # N shards' ceiling / (N x one shard's)
    kib_per_thread: float | None
    turns_per_thread: float | None
    replica_rss_mib: float | None
    node_rss_mib: float | None            # Ray and Serve's own processes on a node

    @property
    def runs_per_turn(self) -> float:
        return self.runs_per_s / self.turns_per_s if self.turns_per_s else 1.0

    @property
    def app_cpu_pct(self) -> float:
        """Serving CPU without Redis's (shards are sized apart)."""
        redis = (self.redis_cpu_ms_per_run or 0) * self.runs_per_s / 10
        return max(self.serving_cpu_pct - redis, 0.0)


@dataclass(frozen=True)
class Assumptions:
    users: int = 10_000
    think_s: float = 30.0
    cores_per_node: int = 16
    shard_utilisation: float = 0.5   # of a shard's saturation: spikes, a failover's catch-up
    redis_replicas: int = 1          # per master, for failover
    threads_per_user: float = 1.0    # live threads a user keeps (older ones expire)

    def text(self) -> list[str]:
        return [
            f"{self.users:,} users, each thinking {self.think_s:g} s on average between "
            "turns, with the run's mix of turns (research, approvals, memory questions)",
            "serving CPU grows linearly with runs/s (Ray Serve replicas scale out; one "
            "replica process a core)",
            f"nodes of {self.cores_per_node} cores for the serving tier",
            f"Redis shards held at {self.shard_utilisation:.0%} of their saturation; per-shard "
            "saturation as measured with the most shards replayed (cross-thread keys included)",
            f"{self.redis_replicas} replica per master (memory counted, no CPU: replicas take "
            "no commands)",
            f"{self.threads_per_user:g} live thread per user, of the run's mean length; older "
            "threads expire (retention)",
        ]


@dataclass(frozen=True)
class Sizing:
    runs_per_s: float            # the demand of all the users
    user_runs_per_s: float
    runs_per_core_at_slo: float | None
    cores_at_slo: float | None   # at the measured operating point within the latency goal
    cores_marginal: float | None  # at 100 %, from the marginal CPU per run
    cores: float                 # what the nodes are sized by (the larger)
    replicas: int
    nodes: int
    app_memory_gib: float | None
    shards: int | None
    shard_runs_per_s: float | None
    redis_memory_gib: float | None
    memory_per_user_kib: float | None
    assumptions: list[str]


def size(m: Measured, a: Assumptions = Assumptions()) -> Sizing:
    """Nodes, cores, shards and memory for ``a.users`` users at ``a.think_s``."""
    user_rate = m.runs_per_turn / (a.think_s + m.turn_s)  # a user's cycle: think + turn
    need = a.users * user_rate
    # at the largest step within the goal (else the lightest, flagged by ``within_goal``)
    per_core = m.runs_per_s / (m.app_cpu_pct / 100) if m.app_cpu_pct else None
    at_slo = need / per_core if per_core else None
    app_per_run = None
    if m.marginal_cpu_s_per_run is not None:
        app_per_run = max(m.marginal_cpu_s_per_run - (m.redis_cpu_ms_per_run or 0) / 1000, 0)
    marginal = need * app_per_run if app_per_run is not None else None
    cores = max([c for c in (at_slo, marginal) if c is not None] or [0.0])
    replicas = math.ceil(cores)
    nodes = math.ceil(cores / a.cores_per_node) if cores else 0
    app_mib = None
    if m.replica_rss_mib is not None:
        app_mib = replicas * m.replica_rss_mib + nodes * (m.node_rss_mib or 0)
    shards = None
    if m.shard_runs_per_s:
        shards = math.ceil(need / (m.shard_runs_per_s * a.shard_utilisation))
    redis_gib = None
    if m.kib_per_thread is not None:
        redis_gib = (a.users * a.threads_per_user * m.kib_per_thread * (1 + a.redis_replicas)
                     / 2**20)
    per_user = None
    if m.kib_per_thread is not None and app_mib is not None:
        per_user = (m.kib_per_thread * a.threads_per_user * (1 + a.redis_replicas)
                    + app_mib * 1024 / a.users)
    return Sizing(need, user_rate, per_core, at_slo, marginal, cores, replicas, nodes,
                  app_mib / 1024 if app_mib is not None else None, shards,
                  m.shard_runs_per_s, redis_gib, per_user, a.text())


def measured(report: dict[str, Any], target: str | None = None) -> Measured | None:
    """The figures of ``target`` (default: the run's first) in ``report``; ``None`` when it
    has no step with runs in it."""
    targets = report.get("targets") or {}
    name = target or next(iter(targets), None)
    t = targets.get(name) or {}
    steps = [s for s in t.get("steps") or [] if s.get("runs_per_s") and s.get("turns_per_s")]
    if not steps:
        return None
    passed = [s for s in steps if s["passed"]]
    step = max(passed, key=lambda s: s["users"]) if passed else \
        min(steps, key=lambda s: s["users"])
    procs = step["procs"]["processes"]
    replicas = [p["peak_rss_mib"] for p in procs if p["process"].startswith("replica ")]
    node = [p["peak_rss_mib"] for p in procs
            if not p["process"].startswith("replica ") and p["process"] not in NOT_APP]
    replay = report.get("redis_replay") or {}
    widest = max(replay.get("results") or [], key=lambda r: r["shards"], default=None)
    ceiling = widest and (widest.get("ceiling_runs_per_s") or widest.get("runs_per_s"))
    redis = t.get("redis") or {}
    return Measured(
        target=name, think_s=report["plan"]["load"]["think_s"],
        users=step["users"], within_goal=bool(passed), runs_per_s=step["runs_per_s"],
        turns_per_s=step["turns_per_s"], turn_s=(step["turn_ms"]["mean"] or 0) / 1000,
        serving_cpu_pct=step["procs"]["serving_cpu_pct"],
        marginal_cpu_s_per_run=(t.get("capacity") or {}).get("marginal_serving_cpu_s_per_run"),
        redis_cpu_ms_per_run=(t.get("redis_load") or {}).get("cpu_ms_per_run"),
        shard_runs_per_s=ceiling / widest["shards"] if ceiling else None,
        shards_replayed=widest["shards"] if widest else None,
        shard_scaling=(replay.get("scaling") or {}).get(str(widest["shards"]) if widest else "",
                                                        {}).get("ceiling"),
        kib_per_thread=redis.get("used_memory_growth_per_thread_kib"),
        turns_per_thread=redis.get("mean_turns_per_thread"),
        replica_rss_mib=sum(replicas) / len(replicas) if replicas else None,
        node_rss_mib=sum(node) if node else None,
    )


def sizing_report(report: dict[str, Any], a: Assumptions = Assumptions()) -> dict[str, Any]:
    """What the report keeps: the inputs, the result and the assumptions."""
    m = measured(report)
    if m is None:
        return {"error": "no step with runs in this run"}
    return {"measured": {**asdict(m), "runs_per_turn": m.runs_per_turn},
            "sizing": asdict(size(m, a)), "assumptions": asdict(a)}
