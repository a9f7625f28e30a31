"""Long-term memory across threads: LangGraph's store on Redis, and the tools agents use it by.

The store is ``langgraph-checkpoint-redis``'s ``AsyncRedisStore`` on the process's Redis
client; graphs are compiled with it, so any node or tool reaches it with ``get_store()``, as
on LangGraph Platform. A user's memories live in the namespace ``(<user>, "memories")``:
the user is the authenticated identity the serving layer puts in the run's config
(``langgraph_auth_user_id``, as LangGraph Platform does), else the config's ``user_id``,
else ``anonymous``. Memories written in one thread are recalled in any other of that user.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from langchain_core.tools import BaseTool, StructuredTool
from langgraph.config import get_config, get_store
from langgraph.store.base import GetOp
from langgraph.store.redis import AsyncRedisStore
from langgraph.store.redis.base import _namespace_to_text
from pydantic import BaseModel, Field
from redis.asyncio import Redis, RedisCluster
from redisvl.index import SearchIndex
from redisvl.query.filter import Tag

from agents.slots import shard_of

AUTH_USER_KEY = "langgraph_auth_user_id"  # set by the serving layer when auth is on
USER_KEY = "user_id"  # a client's own choice of user, in the open mode
ANONYMOUS = "anonymous"
MEMORIES = "memories"
MAX_RECALLED = 20


class RedisStore(AsyncRedisStore):
    """``AsyncRedisStore`` whose item lookups find their items: 0.5.2 looks a namespace up
    as a quoted phrase (``@prefix:("a\\.b")``), which matches nothing under RediSearch's
    query dialect 2, the default since redis-py 8; as one escaped term (how its puts and
    deletes already look items up) it matches under both dialects."""

    def _get_batch_GET_ops_queries(self, get_ops: Sequence[tuple[int, GetOp]]
                                   ) -> list[tuple[str, Sequence, tuple[str, ...], list]]:
        groups: dict[tuple[str, ...], list[tuple[int, str]]] = defaultdict(list)
        for idx, op in get_ops:
            groups[op.namespace].append((idx, op.key))
        return [(f"(@prefix:{_namespace_to_text(namespace)} "
                 f"{Tag('key') == [key for _, key in items]})", [], namespace, items)
                for namespace, items in groups.items()]


async def create_store(redis: Redis | RedisCluster) -> RedisStore:
    """The store on ``redis`` (its search index created once, idempotently). On a Redis
    Cluster every item is in one hash slot (tag ``{store}``) and the store talks to the
    master that holds it: RediSearch cannot search across shards (``agents.slots``)."""
    prefixes: dict[str, str] = {}
    if isinstance(redis, RedisCluster):
        prefixes = {"store_prefix": "{store}", "vector_prefix": "{store}_vectors"}
        redis = shard_of(redis, "{store}").client
    with _sync_index_tolerated():
        store = RedisStore(redis_client=redis, **prefixes)
    await store.setup()
    return store


@contextmanager
def _sync_index_tolerated() -> Iterator[None]:
    """``AsyncRedisStore`` (langgraph-checkpoint-redis 0.5.2) first builds a sync
    ``SearchIndex`` on its async client, then replaces it with an ``AsyncSearchIndex`` before
    any use; redisvl 0.28 refuses that first, unused index. Let it through while the store
    is built (synchronous code: nothing else runs meanwhile)."""
    refused = SearchIndex._wrong_flavour_clients
    SearchIndex._wrong_flavour_clients = ()
    try:
        yield
    finally:
        SearchIndex._wrong_flavour_clients = refused


def current_user(config: dict[str, Any] | None = None) -> str:
    """Whose memories a run reads and writes (see the module docstring)."""
    configurable = (config or get_config()).get("configurable") or {}
    return str(configurable.get(AUTH_USER_KEY) or configurable.get(USER_KEY) or ANONYMOUS)


def memory_namespace(user: str) -> tuple[str, str]:
    return (user, MEMORIES)


class RememberArgs(BaseModel):
    preference: str = Field(min_length=1, max_length=2000,
                            description="What the user prefers, in their words, e.g. "
                                        "'answers in French'.")


class RecallArgs(BaseModel):
    query: str = Field("", description="Optional words the memories should contain; empty: "
                                       "every memory of the user.")


async def remember(preference: str) -> dict[str, Any]:
    """Keep one of the user's stated preferences for later threads (same text: one item)."""
    text = preference.strip()
    key = hashlib.sha256(text.lower().encode()).hexdigest()[:16]
    user = current_user()
    await get_store().aput(memory_namespace(user), key, {"preference": text})
    return {"remembered": text, "key": key, "user": user}


async def recall(query: str = "") -> dict[str, Any]:
    """The user's remembered preferences, oldest first; those containing ``query``'s words
    when given."""
    items = await get_store().asearch(memory_namespace(current_user()), limit=MAX_RECALLED)
    words = query.lower().split()
    found = [item for item in sorted(items, key=lambda i: i.created_at)
             if all(w in str(item.value.get("preference", "")).lower() for w in words)]
    return {"preferences": [item.value.get("preference") for item in found]}


def memory_tools() -> list[BaseTool]:
    return [
        StructuredTool.from_function(
            coroutine=remember, name="remember", args_schema=RememberArgs,
            description="Remember a preference the user stated, across all their threads.",
            metadata={"progress": "Remembering that you prefer {preference}..."}),
        StructuredTool.from_function(
            coroutine=recall, name="recall", args_schema=RecallArgs,
            description="Recall the preferences the user stated before, in any thread.",
            metadata={"progress": "Recalling your preferences..."}),
    ]
