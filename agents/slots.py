"""The one hash slot of a thread's keys, so a Redis Cluster can hold them.

Every key of a thread (the serving layer's, ``serve_app.keys``; the checkpointer's, built
here for ``agents.redis_saver``; the effect ledger's) carries one hash tag: the thread id up
to its first ``/``. A specialist's sub-thread is ``<thread>/<role>/<task id>``
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


def tagged(thread_id: str) -> str:
    """``thread_id`` with its hash tag in braces: ``{t}`` for ``t``, ``{t}/role/task`` for
    a sub-thread of ``t``. Unique per id, and identical to ``{t}`` for ids without ``/``."""
    root, slash, rest = thread_id.partition("/")
    return f"{{{root}}}{slash}{rest}"


def untagged(text: str) -> str:
    """The id back from ``tagged(id)`` (its first pair of braces removed)."""
    return text.replace("{", "", 1).replace("}", "", 1)


# The checkpointer's keys (``agents.redis_saver``): a thread's checkpoints and their pending
# writes, and its sub-threads', in one hash under the thread's tag. A checkpoint's field is
# ``<sub-thread suffix>#<ns>#<checkpoint id>`` (the suffix is what follows the thread id in
# a sub-thread's id: ``/<role>/<task id>``, empty for the thread); a write's is ``!`` then
# its checkpoint's field, ``#<task id>:<idx>``.
LATEST = "latest"  # the checkpoint id field naming a namespace's latest checkpoint
WRITE = "!"  # what a write's field starts with


def checkpoints_key(thread_id: str) -> str:
    return f"ac:{{{thread_id.partition('/')[0]}}}:checkpoints"


def checkpoint_field(thread_id: str, ns: str, checkpoint_id: str) -> str:
    _, slash, rest = thread_id.partition("/")
    return f"{slash}{rest}#{ns}#{checkpoint_id}"


def checkpoint_write_field(thread_id: str, ns: str, checkpoint_id: str, task_id: str,
                           idx: int) -> str:
    return f"{WRITE}{checkpoint_field(thread_id, ns, checkpoint_id)}#{task_id}:{idx}"


def parse_checkpoint_field(thread_id: str, field: str) -> tuple[str, str, str, str]:
    """(thread or sub-thread id, namespace, checkpoint id, ``<task id>:<idx>`` of a write or
    "" for the checkpoint itself) of a field of ``checkpoints_key(thread_id)``."""
    if field.startswith(WRITE):
        suffix, ns, checkpoint_id, task = field[len(WRITE):].rsplit("#", 3)
    else:
        (suffix, ns, checkpoint_id), task = field.rsplit("#", 2), ""
    return thread_id.partition("/")[0] + suffix, ns, checkpoint_id, task


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
    if node.name not in known:
        kwargs = {k: v for k, v in client.get_connection_kwargs().items()
                  if k in ("username", "password", "socket_timeout", "socket_connect_timeout")}
        tag = next(tag for tag in (f"{{shard{i}}}" for i in itertools.count())
                   if client.get_node_from_key(tag).name == node.name)
        known[node.name] = Shard(Redis(host=node.host, port=node.port, **kwargs), tag)
    return known[node.name]
