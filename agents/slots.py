"""The one hash slot of a thread's keys, so a Redis Cluster can hold them.

Every key of a thread (the serving layer's, ``serve_app.keys``; the checkpointer's on a
cluster, ``agents.redis_saver``; the effect ledger's) carries one hash tag: the thread id up
to its first ``/``. A specialist's sub-thread is ``<thread>/<role>/<task id>``
(``agents.supervisor.sub_thread_id``), so it lands in its parent's slot, and every Lua
script or MULTI over a thread's keys stays within one slot.

RediSearch on an OSS cluster has no cross-shard coordinator: an index covers the keys of the
shard it was created on, so indexes are created on every master and a search goes to the
master that holds the keys it is about (``shard_of``).
"""

from __future__ import annotations

import itertools
import json
import weakref
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode


def tagged(thread_id: str) -> str:
    """``thread_id`` with its hash tag in braces: ``{t}`` for ``t``, ``{t}/role/task`` for
    a sub-thread of ``t``. Unique per id, and identical to ``{t}`` for ids without ``/``."""
    root, slash, rest = thread_id.partition("/")
    return f"{{{root}}}{slash}{rest}"


def untagged(text: str) -> str:
    """The id back from ``tagged(id)`` (its first pair of braces removed)."""
    return text.replace("{", "", 1).replace("}", "", 1)




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
    """Every master (to create an index on each)."""
    if not isinstance(client, RedisCluster):
        return [Shard(client)]
    return [_shard(client, node) for node in client.get_primaries()]


def _shard(client: RedisCluster, node: ClusterNode) -> Shard:
    known = _shards.setdefault(client, {})
    if node.name not in known:
        kwargs = {k: v for k, v in client.get_connection_kwargs().items()
                  if k in ("username", "password", "socket_timeout", "socket_connect_timeout")}
        tag = next(tag for tag in (f"{{shard{i}}}" for i in itertools.count())
                   if client.get_node_from_key(tag).name == node.name)
        known[node.name] = Shard(Redis(host=node.host, port=node.port, **kwargs), tag)
    return known[node.name]


async def load_fields(cluster: RedisCluster, keys: list[str], fields: list[str]
                      ) -> list[dict[str, str]]:
    """What ``FT.SEARCH ... RETURN fields`` gives for JSON documents ``keys``, read from the
    documents themselves. On an OSS cluster RediSearch loads a document only when it shares
    the hash slot of the index's name (a module's reads stay in its command's slot), so a
    shard's search takes the matching keys from the index (``NOCONTENT``) and this reads
    their fields: ``name`` is ``$.name``; strings as they are, other values as JSON."""
    pipe = cluster.pipeline(transaction=False)
    for key in keys:
        pipe.execute_command("JSON.GET", key, "$")
    found = []
    for raw in await pipe.execute():
        if isinstance(raw, bytes | str):  # redis-py may have parsed it already
            raw = json.loads(raw)
        document = (raw or [{}])[0]
        row = {}
        for field in fields or list(document):
            value = _at(document, field.removeprefix("$."))
            if value is not None:
                row[field] = value if isinstance(value, str) else json.dumps(
                    value, separators=(",", ":"))
        found.append(row)
    return found


def _at(document: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(document, dict):
            return None
        document = document.get(part)
    return document
