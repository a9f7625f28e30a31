"""Redis runs/s per shard at saturation: the real command mix of a run, replayed.

The serving tier scales with Ray nodes; the state tier scales with Redis Cluster shards, so
the figure that sizes it is how many runs/s one shard takes, and how close to linear a second
shard gets (cross-thread keys, such as a run pool's queue, live on one shard whatever the
number of shards). Driving the whole app to that point would take far more cores than the
Redis under test, so the app's own commands are captured once and replayed by a light driver:

1. **Capture** (``capture``): ``MONITOR`` on the Redis of a real run (the Serve app on a
   one-master embedded cluster, ``CaptureTarget``: the cluster's own mix, with hash-tagged
   keys) while a
   few simulated users open threads and take turns. Commands a Lua script runs are skipped
   (its ``EVALSHA`` replays them), so are the app's set-up and admin commands; blocking reads
   become their non-blocking forms (the replay measures work, not waits). The script cache
   is emptied as the capture begins, so the app loads every script it runs again, in view.
2. **Trace** (``Trace``): every id (UUID) a thread, run or checkpoint carries is replaced by a
   numbered slot (``<<id:N>>``; ``<<esc:N>>`` where RediSearch escapes its dashes), the
   shard's index tag by ``<<shard>>``; values are kept, since JSON documents must stay valid
   for RediSearch to index them. Ids in keys of cross-thread structures (an assistant's)
   stay literal. Saved as ``redis_trace.json``; ``summary`` gives the mix per run (command,
   key pattern, bytes) for the report.
3. **Replay** (``replay``): ``copies`` coroutines each replay the whole trace again and again
   with fresh ids (so keys spread over every slot), pipelined, each command to the master of
   its key's slot (one plain client per master: redis-py's cluster pipeline refuses scripts),
   ``FT.*`` to the master of the thread it queries, with that master's index. Measured: runs/s
   and each master's CPU (``INFO cpu``) per replayed run, so the ceiling of a shard is
   ``1000 / CPU ms per run`` even when the driver, on the same 2 cores, cannot saturate it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError, ResponseError

from agents.checkpoint import close_redis, create_redis
from agents.local.redis_cluster import EmbeddedRedisCluster
from agents.settings import RedisSettings, Settings
from agents.slots import Shard, every_shard, shard_of
from agents.tools import prepare_tools
from bench.loadgen import REFUSED, LoadConfig, LoadGenerator
from bench.peers import ClusterTarget

# -------------------------------------------------------------------- capture

LINE = re.compile(rb"^(\d+\.\d+) \[(\d+) ([^\]]*)\] (.*)$", re.S)
ARG = re.compile(rb'"((?:[^"\\]|\\.)*)"', re.S)
ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|.)", re.S)
SIMPLE = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"a": b"\a", b"b": b"\b"}
# Set-up, admin and connection commands: not part of a run's work.
SKIPPED = frozenset({
    "AUTH", "CLIENT", "CLUSTER", "COMMAND", "CONFIG", "DBSIZE", "ECHO", "FT.CREATE",
    "FT.INFO", "FT._LIST", "FT.DROPINDEX", "HELLO", "INFO", "MEMORY", "MODULE", "MONITOR",
    "PING", "READONLY", "SCAN", "SCRIPT", "SELECT", "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE",
    "UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE", "QUIT", "RESET", "MULTI", "EXEC",
    "DISCARD", "WATCH", "UNWATCH"})
NON_BLOCKING = {"BZPOPMIN": "ZPOPMIN", "BZPOPMAX": "ZPOPMAX", "BLPOP": "LPOP", "BRPOP": "RPOP"}
PIPELINE_GAP_S = 0.0005  # a client's commands this close together came in one pipeline


@dataclass(frozen=True)
class Seen:
    """A command as ``MONITOR`` showed it: who sent it, when, its arguments."""

    client: str
    at: float
    args: list[bytes]
    ended: float | None = None  # a script's: when its last own call ran


def parse_monitor_line(line: bytes) -> Seen | None:
    """One ``MONITOR`` line (``client`` is ``lua`` for a script's own calls); ``None`` for
    anything else."""
    found = LINE.match(line)
    if not found:
        return None
    args = [ESCAPE.sub(_unescape, raw) for raw in ARG.findall(found.group(4))]
    return Seen(found.group(3).decode(), float(found.group(1)), args)


def _unescape(match: re.Match[bytes]) -> bytes:
    code = match.group(1)
    if len(code) == 3 and code[:1] == b"x":
        return bytes([int(code[1:], 16)])
    return SIMPLE.get(code, code)


def replayable(args: list[bytes]) -> list[bytes] | None:
    """The command as the replay sends it: blocking reads made non-blocking (``XREAD``
    after a stream id reads the newest entry, ``+``, as a reader of new entries does);
    ``None`` for commands that are no part of a run."""
    name = args[0].decode().upper()
    if name in SKIPPED:
        return None
    if name in NON_BLOCKING:
        return [NON_BLOCKING[name].encode(), *args[1:-1]]
    if name in ("XREAD", "XREADGROUP"):
        out, rest = [args[0]], iter(args[1:])
        for arg in rest:
            if arg.upper() == b"BLOCK":
                next(rest, None)
                continue
            out.append(arg)
            if arg.upper() == b"STREAMS":
                tail = list(rest)
                keys, ids = tail[:len(tail) // 2], tail[len(tail) // 2:]
                return out + keys + [i if i in (b"0", b"0-0", b">") else b"+" for i in ids]
        return out
    return [args[0].upper(), *args[1:]]


class Capture:
    """``async with Capture(url) as seen:`` every command ``MONITOR`` shows on ``url`` in
    the block, as clients sent them (a script's own calls left out), made replayable."""

    def __init__(self, redis_url: str):
        self.client = Redis.from_url(redis_url)
        self.commands: list[Seen] = []
        self.scripts: dict[str, str] = {}  # SHA1 -> source of every script the app loaded

    async def __aenter__(self) -> Capture:
        """Starts watching, then empties the script cache: the app's clients load each
        script again on its next use (redis-py answers NOSCRIPT so), and the replay gets
        the sources of the scripts the app really runs."""
        self.monitor = self.client.monitor()
        await self.monitor.__aenter__()
        self.reader = asyncio.ensure_future(self._read())
        await self.client.script_flush()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, RedisError):  # redis-py may turn
            await self.reader  # the cancel of a read into its own TimeoutError
        await self.monitor.__aexit__()
        await self.client.aclose()

    async def _read(self) -> None:
        while True:
            line = await self.monitor.connection.read_response(disable_decoding=True)
            seen = parse_monitor_line(line) if isinstance(line, bytes) else None
            if seen and [a.upper() for a in seen.args[:2]] == [b"SCRIPT", b"LOAD"]:
                self.scripts[hashlib.sha1(seen.args[2]).hexdigest()] = seen.args[2].decode()
            elif seen and seen.client == "lua":  # the script before it is still running
                if self.commands and self.commands[-1].args[0].upper().startswith(b"EVAL"):
                    self.commands[-1] = replace(self.commands[-1], ended=seen.at)
            elif seen:
                command = replayable(seen.args)
                if command:
                    self.commands.append(Seen(seen.client, seen.at, command))


# -------------------------------------------------------------------- trace

UUID = re.compile(r"[0-9a-f]{8}(?:\\?-[0-9a-f]{4}){3}\\?-[0-9a-f]{12}")
SHARD_TAG = re.compile(r"\{shard\d+\}")
MARK = re.compile(r"<<(id|esc):(\d+)>>|<<shard>>")
TAG = re.compile(r"\{([^}]*)\}")


def command_keys(args: list[str]) -> list[str]:
    """The keys a command names (enough of Redis's key specs for the app's commands)."""
    name = args[0].upper()
    if name.startswith("FT.") or name in ("PUBLISH", "SPUBLISH"):
        return []
    if name in ("EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL"):
        return args[3:3 + int(args[2])]
    if name in ("XREAD", "XREADGROUP"):
        upper = [a.upper() for a in args]
        tail = args[upper.index("STREAMS") + 1:] if "STREAMS" in upper else []
        return tail[:len(tail) // 2]
    if name in ("DEL", "UNLINK", "EXISTS", "TOUCH", "MGET", "JSON.MGET"):
        return args[1:-1] if name == "JSON.MGET" else args[1:]
    return args[1:2]


@dataclass
class Trace:
    """A captured mix: command templates in order, and how many runs they are."""

    commands: list[list[str]]
    runs: int
    ids: int = 0                     # id slots a copy fills with fresh ids
    batches: list[int] = field(default_factory=list)  # commands per pipeline, in order
    scripts: dict[str, str] = field(default_factory=dict)  # SHA1 -> Lua source
    routes: list[str | None] = field(default_factory=list)  # what picks a command's master
    source: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_commands(cls, seen: list[Seen], runs: int, scripts: dict[str, str] | None = None,
                      **source: Any) -> Trace:
        """The trace of ``seen``: a client's consecutive commands within
        ``PIPELINE_GAP_S`` make one pipeline, as the app sent them (Redis's CPU per
        command depends on how many come per read)."""
        texts = [[a.decode("utf-8", "surrogateescape") for a in c.args] for c in seen]
        literal = _shared_ids(texts)
        slots: dict[str, int] = {}

        def slot(match: re.Match[str]) -> str:
            text = match.group(0)
            plain = text.replace("\\", "")
            if plain in literal:
                return text
            kind = "esc" if "\\" in text else "id"
            return f"<<{kind}:{slots.setdefault(plain, len(slots))}>>"

        commands = [[SHARD_TAG.sub("<<shard>>", UUID.sub(slot, a)) for a in c] for c in texts]
        trace = cls(commands, runs, len(slots), _batches(seen), scripts or {}, source=source)
        trace.routes = [_route(c) for c in commands]
        return trace

    def summary(self) -> dict[str, Any]:
        """The mix per run: commands by name and key pattern, and bytes sent."""
        runs = max(self.runs, 1)
        mix: Counter[tuple[str, str]] = Counter()
        sent: defaultdict[tuple[str, str], int] = defaultdict(int)
        for command in self.commands:
            keys = command_keys(command)
            pattern = MARK.sub(lambda m: "{T}" if m.group(1) else "{shard}",
                               keys[0] if keys else command[1] if len(command) > 1 else "")
            key = (command[0], re.sub(r"\{\{T\}\}", "{T}", pattern)[:80])
            mix[key] += 1
            sent[key] += sum(len(a) for a in command)
        rows = [{"command": name, "key": key, "per_run": n / runs,
                 "bytes_per_call": sent[(name, key)] / n}
                for (name, key), n in mix.most_common()]
        unknown = {c[1] for c in self.commands if c[0] == "EVALSHA"} - set(self.scripts)
        return {"runs": self.runs, "commands": len(self.commands), "scripts": len(self.scripts),
                "unknown_scripts": len(unknown),
                "commands_per_run": len(self.commands) / runs,
                "bytes_per_run": sum(sent.values()) / runs, "mix": rows, "source": self.source}

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"runs": self.runs, "ids": self.ids, "routes": self.routes,
                                    "batches": self.batches, "scripts": self.scripts,
                                    "source": self.source, "commands": self.commands}))

    @classmethod
    def load(cls, path: Path) -> Trace:
        data = json.loads(path.read_text())
        return cls(data["commands"], data["runs"], data["ids"], data["batches"],
                   data["scripts"], data["routes"], data["source"])


def _batches(seen: list[Seen]) -> list[int]:
    """Commands per pipeline: a client's consecutive commands within ``PIPELINE_GAP_S`` of
    the end of the one before (a script's last own call: a long script is not a gap in its
    pipeline)."""
    sizes: list[int] = []
    for i, command in enumerate(seen):
        before = seen[i - 1] if i else None
        if before and before.client == command.client and \
                command.at - (before.ended or before.at) <= PIPELINE_GAP_S:
            sizes[-1] += 1
        else:
            sizes.append(1)
    return sizes


def _shared_ids(commands: list[list[str]]) -> set[str]:
    """Ids in keys of cross-thread structures (tagged by something else than an id, e.g.
    ``ac:{assistants}:assistant:<id>``): the same object for every thread, kept literal."""
    shared = set()
    for command in commands:
        for key in command_keys(command):
            tag = TAG.search(key)
            if tag and not UUID.fullmatch(tag.group(1)):
                shared.update(m.replace("\\", "") for m in UUID.findall(key))
    return shared


def _route(command: list[str]) -> str | None:
    """What decides the master: the first key, or for ``FT.*`` the thread it queries (its
    first id, as a hash tag); ``None``: any master."""
    keys = command_keys(command)
    if keys:
        return keys[0]
    if command[0].startswith("FT.") and len(command) > 1:
        found = MARK.search(" ".join(command[2:]))
        if found and found.group(1):  # a checkpoint index: each master's own copy
            return "{<<id:" + found.group(2) + ">>}"
        return command[1].replace("<<shard>>", "")  # an index of one slot's keys
    return None


# -------------------------------------------------------------------- replay


class Parts:
    """A template split once into literal bytes and id slots, rendered per copy."""

    def __init__(self, template: str):
        self.parts: list[bytes | tuple[str, int]] = []
        at = 0
        for match in MARK.finditer(template):
            self.parts.append(template[at:match.start()].encode("utf-8", "surrogateescape"))
            self.parts.append((match.group(1) or "shard", int(match.group(2) or 0)))
            at = match.end()
        self.parts.append(template[at:].encode("utf-8", "surrogateescape"))
        self.literal = self.parts[0] if len(self.parts) == 1 else None

    def render(self, ids: list[bytes], escaped: list[bytes], shard_tag: bytes) -> bytes:
        if self.literal is not None:
            return self.literal
        out = []
        for part in self.parts:
            if isinstance(part, bytes):
                out.append(part)
            else:
                out.append(ids[part[1]] if part[0] == "id" else escaped[part[1]]
                           if part[0] == "esc" else shard_tag)
        return b"".join(out)


@dataclass
class Replayer:
    """Replays ``trace`` on the masters of ``client`` (one Redis, or a cluster)."""

    client: Redis | RedisCluster
    trace: Trace

    def __post_init__(self) -> None:
        self.args = [[Parts(a) for a in c] for c in self.trace.commands]
        self.routes = [Parts(r) if r else None for r in self.trace.routes]
        self.shards: list[Shard] = []
        self.done = 0                # commands sent
        self.stopped = False
        self.errors: Counter[str] = Counter()
        self.searches: Counter[bool] = Counter()  # FT.SEARCH replies by "found something"

    async def prepare(self) -> None:
        """The indexes as the app creates them (the corpus's on its shard, with its
        documents) and the app's scripts on each master."""
        await self.client.ping()  # a cluster client learns the slot map
        self.shards = every_shard(self.client)
        await prepare_tools(self.client, Settings())
        for shard in self.shards:
            for source in self.trace.scripts.values():
                await shard.client.script_load(source)

    def _shard(self, key: bytes | None) -> Shard:
        if key is None or not isinstance(self.client, RedisCluster):
            return self.shards[0]
        return shard_of(self.client, key.decode("utf-8", "surrogateescape"))

    async def copy(self) -> None:
        """The trace once, with fresh ids, pipeline by pipeline as the app sent them; a
        pipeline's commands each on the master of its key. Raw connections (packed
        commands, replies read in order): redis-py's pipeline objects cost the driver more
        CPU than Redis spends on the commands."""
        ids = [str(uuid.uuid4()).encode() for _ in range(self.trace.ids)]
        escaped = [i.replace(b"-", b"\\-") for i in ids]
        held: dict[int, tuple[Shard, Any]] = {}
        try:
            start = 0
            for size in self.trace.batches:
                if self.stopped:
                    return
                groups: defaultdict[int, list[int]] = defaultdict(list)
                for index in range(start, start + size):
                    route = self.routes[index]
                    shard = self._shard(route.render(ids, escaped, b"") if route else None)
                    if id(shard) not in held:
                        held[id(shard)] = (shard, await shard.client.connection_pool
                                           .get_connection())
                    groups[id(shard)].append(index)
                for key, indexes in groups.items():
                    shard, conn = held[key]
                    tag = shard.tag.encode()
                    await conn.send_packed_command(conn.pack_commands(
                        [[p.render(ids, escaped, tag) for p in self.args[i]] for i in indexes]))
                for key, indexes in groups.items():
                    for index in indexes:
                        name = self.trace.commands[index][0]
                        try:
                            reply = await held[key][1].read_response(disable_decoding=True)
                        except ResponseError as exc:
                            self.errors[f"{name}: {str(exc)[:60]}"] += 1
                            continue
                        if name == "FT.SEARCH":
                            self.searches[_hits(reply) > 0] += 1
                start += size
                self.done += size
        finally:
            for shard, conn in held.values():
                await shard.client.connection_pool.release(conn)

    async def loop(self) -> None:
        """Copies until ``stopped`` (checked between pipelines: a connection is never
        left with replies unread)."""
        while not self.stopped:
            await self.copy()


def _hits(reply: Any) -> int:
    """The number of hits of an ``FT.SEARCH`` reply: RESP3 (a map) or RESP2 (total first)."""
    if isinstance(reply, dict):
        return int(reply.get(b"total_results", reply.get("total_results", 0)))
    return int(reply[0]) if reply else 0


async def cpu_s(shards: list[Shard]) -> list[float]:
    infos = [await s.client.info("cpu") for s in shards]
    return [float(i["used_cpu_user"]) + float(i["used_cpu_sys"]) for i in infos]


async def replay(url: str, trace: Trace, cluster: bool, seconds: float = 10.0,
                 copies: int = 16, warmup_s: float = 1.0) -> dict[str, Any]:
    """Replay ``trace`` on ``url`` for ``seconds`` (after ``warmup_s``) with ``copies``
    concurrent copies: runs/s, and each master's Redis CPU per run and ceiling."""
    client = create_redis(url, RedisSettings(cluster=cluster, pool_size=copies * 2))
    replayer = Replayer(client, trace)
    try:
        await replayer.prepare()
        tasks = [asyncio.ensure_future(replayer.loop()) for _ in range(copies)]
        try:
            await asyncio.sleep(warmup_s)
            cpu0, sent0, wall0, own0 = (await cpu_s(replayer.shards), replayer.done,
                                        time.perf_counter(), time.process_time())
            await asyncio.sleep(seconds)
            cpu1, sent1, wall1, own1 = (await cpu_s(replayer.shards), replayer.done,
                                        time.perf_counter(), time.process_time())
        finally:
            replayer.stopped = True
            ended = await asyncio.gather(*tasks, return_exceptions=True)
        failed = next((e for e in ended if isinstance(e, BaseException)), None)
        if failed:  # a driver's fault, not Redis's answer: the figures would be wrong
            raise failed
    finally:
        for shard in replayer.shards:
            if shard.client is not client:
                await shard.client.aclose()
        await close_redis(client)
    elapsed = wall1 - wall0
    runs = (sent1 - sent0) / max(len(trace.commands), 1) * trace.runs
    per_shard = [(b - a) * 1000 / runs if runs else None for a, b in zip(cpu0, cpu1,
                                                                         strict=True)]
    busiest = max((c for c in per_shard if c), default=None)
    return {
        "shards": len(replayer.shards), "cluster": cluster, "seconds": elapsed,
        "copies": copies, "runs": runs, "runs_per_s": runs / elapsed,
        "commands_per_s": (sent1 - sent0) / elapsed,
        "redis_cpu_ms_per_run": sum(c or 0 for c in per_shard),
        "shard_cpu_ms_per_run": per_shard,
        "shard_cpu_pct": [100 * (b - a) / elapsed for a, b in zip(cpu0, cpu1, strict=True)],
        # the busiest master saturates first: the cluster's ceiling at 1 core a master
        "ceiling_runs_per_s": 1000 / busiest if busiest else None,
        "driver_cpu_pct": 100 * (own1 - own0) / elapsed,
        "errors": dict(replayer.errors.most_common(8)),
        # the searches reach the master and index that hold their thread's documents
        "searches_found": (replayer.searches[True] / sum(replayer.searches.values())
                           if replayer.searches else None),
    }


async def replay_on_cluster(trace: Trace, shards: int, **kwargs: Any) -> dict[str, Any]:
    """``replay`` on a fresh embedded cluster of ``shards`` masters, once the box is quiet
    (what ran before, e.g. a target still shutting down, would inflate Redis's CPU)."""
    with tempfile.TemporaryDirectory(prefix="replay-") as work:
        cluster = EmbeddedRedisCluster(Path(work), shards=shards)
        await asyncio.to_thread(cluster.start)
        try:
            busy = await quiet_box()
            return {**await replay(cluster.url, trace, cluster=True, **kwargs),
                    "box_busy_before_pct": busy}
        finally:
            await asyncio.to_thread(cluster.stop)


async def quiet_box(busy_below_pct: float = 10.0, within_s: float = 60.0) -> float:
    """Wait (up to ``within_s``) for a second in which the machine's CPUs are busy less
    than ``busy_below_pct`` of the time on average; the last second's busy share (%)."""
    deadline = time.monotonic() + within_s
    while (busy := await asyncio.to_thread(psutil.cpu_percent, 1.0)) >= busy_below_pct \
            and time.monotonic() < deadline:
        pass
    return busy


def scaling(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """How close to linear the shards scale, per number of shards past one: N shards'
    runs/s / (N x one shard's), measured and by the CPU-derived ceiling."""
    one = next((r for r in results if r["shards"] == 1), None)
    out = {}
    for r in results:
        if one and r["shards"] > 1:
            out[str(r["shards"])] = {
                name: r[what] / (r["shards"] * one[what])
                for name, what in (("measured", "runs_per_s"), ("ceiling", "ceiling_runs_per_s"))
                if one.get(what) and r.get(what)}
    return out


# -------------------------------------------------------------------- the capture run


@dataclass
class CaptureTarget(ClusterTarget):
    """The Serve app (as ``cluster-N``) on a one-master embedded Redis Cluster, in cluster
    mode: the command mix a cluster sees, from one node that ``MONITOR`` can watch."""

    def env(self) -> dict[str, str]:
        return {**super().env(), "AGENT_CLUSTER_REDIS__CLUSTER": "true"}

    def _start_redis(self) -> EmbeddedRedisCluster:
        return EmbeddedRedisCluster(self.work_dir / "redis-cluster", shards=1).start()


async def capture_run(settings: Settings, work_dir: Path, load: LoadConfig, users: int,
                      seconds: float, deployment: str = "supervisor") -> Trace:
    """``users`` simulated users on the app on a one-master cluster for ``seconds``: a
    ``CaptureTarget`` started for it (``capture_on``)."""
    target = CaptureTarget("capture", settings, work_dir, replicas=2, deployment=deployment)
    try:
        url = await asyncio.to_thread(target.start)
        return await capture_on(url, target.redis_url, load, users, seconds)
    finally:
        await asyncio.to_thread(target.stop)


async def capture_on(url: str, redis_url: str, load: LoadConfig, users: int,
                     seconds: float) -> Trace:
    """``users`` new simulated users on the app at ``url`` (a ``CaptureTarget``'s) for
    ``seconds`` (then their turns drained), every command captured from before their first
    thread was opened: each thread's reads find what its own writes left."""
    async with Capture(redis_url) as seen, LoadGenerator(url, load) as gen:
        gen.set_users(users)
        await asyncio.sleep(seconds)
        await gen.stop(drain_s=load.approval_delay_s * 2 + 30)
    runs = sum(1 for r in gen.records for run in r.runs if run.error != REFUSED)
    return Trace.from_commands(seen.commands, runs, seen.scripts, users=users,
                               seconds=seconds, turns=len(gen.records),
                               failed_turns=sum(1 for r in gen.records if not r.ok))
