"""Embedded Redis Cluster: the embedded Redis 8.2 with its modules, as N masters (and
optionally replicas), slots split evenly, ready in seconds; for development and tests.

``python -m agents.local.redis_cluster --shards 3 [--replicas 1]`` starts one and prints
its URL (any node; a cluster client finds the rest). The binary ships no ``redis-cli``, so
the cluster is formed from Python: ``CLUSTER ADDSLOTSRANGE`` on each master,
``CLUSTER MEET`` to join them, ``CLUSTER REPLICATE`` for replicas.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import time
from pathlib import Path

import redis

from agents.local.process import free_port
from agents.local.redis_server import DEFAULT_MAXMEMORY, EmbeddedRedis
from agents.settings import get_settings

SLOTS = 16384
NODE_TIMEOUT_MS = 2000  # a master silent this long is failed over to its replica


class EmbeddedRedisCluster:
    """``shards`` masters with ``replicas`` replicas each, in ``data_dir/node-<port>``."""

    def __init__(self, data_dir: Path, shards: int = 3, replicas: int = 0,
                 host: str = "127.0.0.1", maxmemory: str | None = DEFAULT_MAXMEMORY):
        self.data_dir = Path(data_dir)
        self.shards = shards
        extra = ("--cluster-enabled", "yes", "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                 # a replica may take over whatever its master's last contact (tests kill
                 # masters); a shard without a live node makes only its own slots fail
                 "--cluster-replica-validity-factor", "0",
                 "--cluster-require-full-coverage", "no", "--repl-diskless-sync-delay", "0",
                 # DEBUG SLEEP from loopback: how tests stall a node (tests/test_redis_faults.py)
                 "--enable-debug-command", "local")
        # the bus port is set, not the default port + 10000 (past 65535 for a high port)
        ports = self._ports(host, shards * (1 + replicas))
        self.bus_ports = [bus for _, bus in ports]
        self.nodes = [EmbeddedRedis(self.data_dir / f"node-{i}", port=port, host=host,
                                    maxmemory=maxmemory,
                                    extra_args=[*extra, "--cluster-port", str(bus)])
                      for i, (port, bus) in enumerate(ports)]
        for node in self.nodes:  # each node's own cluster state file, in its own dir
            node.data_dir.mkdir(parents=True, exist_ok=True)
        self.masters = self.nodes[:shards]
        self.replicas = self.nodes[shards:]

    def _ports(self, host: str, count: int) -> list[tuple[int, int]]:
        """(port, bus port) of each node: those of the last start in this directory (the
        nodes find each other again at the addresses they remember), else free ones."""
        path = self.data_dir / "ports.json"
        with contextlib.suppress(OSError, ValueError):
            ports = [tuple(pair) for pair in json.loads(path.read_text())]
            if len(ports) == count:
                return ports
        ports = [(free_port(host), free_port(host)) for _ in range(count)]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(ports))
        return ports

    @property
    def url(self) -> str:
        return f"redis://{self.masters[0].host}:{self.masters[0].port}"

    def start(self) -> EmbeddedRedisCluster:
        for node in self.nodes:
            node.start()
        try:
            self._form()
        except BaseException:
            self.stop()
            raise
        return self

    def _form(self) -> None:
        clients = [_client(node) for node in self.nodes]
        if int(clients[0].cluster("info")["cluster_slots_assigned"]) < SLOTS:  # a fresh dir
            per = SLOTS // self.shards
            for i, client in enumerate(clients[:self.shards]):
                last = SLOTS - 1 if i == self.shards - 1 else (i + 1) * per - 1
                client.execute_command("CLUSTER ADDSLOTSRANGE", i * per, last)
            for node, bus in zip(self.nodes[1:], self.bus_ports[1:], strict=True):
                clients[0].execute_command("CLUSTER MEET", node.host, node.port, bus)
            _wait(lambda: all(len(c.cluster("nodes")) == len(self.nodes) for c in clients),
                  "nodes to meet")
            for i, client in enumerate(clients[self.shards:]):
                master = clients[i % self.shards].cluster("myid")
                _wait(lambda c=client, m=master: _replicate(c, m), "replicas to attach")
        _wait(lambda: all(c.cluster("info").get("cluster_state") == "ok" for c in clients),
              "cluster state ok")
        _wait(lambda: all(c.info("replication").get("master_link_status") == "up"
                          for c in clients[self.shards:]), "replicas in sync")
        _wait(lambda: all(_replica_count(c) == len(self.replicas) for c in clients),
              "replicas known to every node")
        for client in clients:
            client.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> EmbeddedRedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _client(node: EmbeddedRedis) -> redis.Redis:
    return redis.Redis(host=node.host, port=node.port, socket_timeout=5, decode_responses=True)


def _replica_count(client: redis.Redis) -> int:
    return sum("slave" in node["flags"] for node in client.cluster("nodes").values())


def _replicate(client: redis.Redis, master_id: str) -> bool:
    try:
        client.cluster("replicate", master_id)
    except redis.ResponseError:  # the replica has not heard of the master yet
        return False
    return True


def _wait(ready, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"embedded Redis Cluster: no {what} after {timeout_s}s")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, default=3, help="masters")
    parser.add_argument("--replicas", type=int, default=0, help="replicas per master")
    parser.add_argument("--data-dir", type=Path,
                        default=get_settings().data_dir / "redis-cluster")
    args = parser.parse_args()
    with EmbeddedRedisCluster(args.data_dir, args.shards, args.replicas) as cluster:
        print(f"Redis Cluster: {cluster.url}  ({args.shards} masters, {args.replicas} "
              "replica(s) each; set REDIS_URL to it and AGENT_CLUSTER_REDIS__CLUSTER=true)",
              flush=True)
        stop = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop)
        signal.sigwait(stop)


if __name__ == "__main__":
    main()
