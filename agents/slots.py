"""The one hash slot of a thread's keys, so a Redis Cluster can hold them.

Every key of a thread (the serving layer's, ``serve_app.keys``; the checkpointer's and the
effect ledger's, ``agents.keys``) carries one hash tag: the thread id up to its first ``/``.
A specialist's sub-thread is ``<thread>/<role>/<task id>``
(``agents.supervisor.sub_thread_id``), so it lands in its parent's slot, and every Lua
script or MULTI over a thread's keys stays within one slot.

RediSearch on an OSS cluster has no cross-shard coordinator: an index covers the keys of the
shard it was created on, so a search goes to the master that holds the keys it is about
(``shard_of``: the long-term store's and the corpus's indexes).
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode

from agents.checkpoint import slot_master_client
from agents.keys import shard_tag


@dataclass(frozen=True)
class Shard:
    """A master of a cluster, as RediSearch needs it: a client of that node alone, and a
    hash tag that falls in its slots. RediSearch treats an index name as a key, so a shard's
    copy of an index is named with the shard's tag (``index``). On one Redis: the client
    itself, and names unchanged."""

    client: Redis | RedisCluster
    tag: str = ""

    def index(self, name: str) -> str:
        return f"{name}{self.tag}"


_shards: weakref.WeakKeyDictionary[RedisCluster, dict[str, Shard]] = weakref.WeakKeyDictionary()


def shard_of(client: Redis | RedisCluster, key: str) -> Shard:
    """The shard that holds ``key`` (to search the keys that share its slot)."""
    if not isinstance(client, RedisCluster):
        return Shard(client)
    return _shard(client, client.get_node_from_key(key))


def every_shard(client: Redis | RedisCluster) -> list[Shard]:
    """Every master (to create an index, or load a script, on each)."""
    if not isinstance(client, RedisCluster):
        return [Shard(client)]
    return [_shard(client, node) for node in client.get_primaries()]


def _shard(client: RedisCluster, node: ClusterNode) -> Shard:
    known = _shards.setdefault(client, {})
    if node.name not in known:  # a client that follows the tag's slot through a failover
        tag = next(tag for tag in (shard_tag(i) for i in itertools.count())
                   if client.get_node_from_key(tag).name == node.name)
        known[node.name] = Shard(slot_master_client(client, tag), tag)
    return known[node.name]
