"""Long-term memory across threads: LangGraph's store on Redis, and the tools agents use it by.

The store is ``langgraph-checkpoint-redis``'s ``AsyncRedisStore`` on the process's Redis
client; graphs are compiled with it, so any node or tool reaches it with ``get_store()``, as
on LangGraph Platform. A user's memories live in the namespace ``(<user>, "memories")``:
the user is the authenticated identity the serving layer puts in the run's config
(``langgraph_auth_user_id``, as LangGraph Platform does), else the config's ``user_id``,
else ``anonymous``. Memories written in one thread are recalled in any other of that user.

With ``store.index`` configured (langgraph.json's), ``asearch(namespace, query=...)`` ranks
by meaning: the store embeds the indexed fields of each value on ``aput`` with
``OpenAIEmbeddings`` against the model endpoint (the stub's ``/v1/embeddings`` offline) and
keeps the vectors in Redis beside the items (a RediSearch vector index, so every replica
and process sees them).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from langchain_core.tools import BaseTool, StructuredTool
from langchain_openai import OpenAIEmbeddings
from langgraph.config import get_config, get_store
from langgraph.store.base import GetOp, IndexConfig, TTLConfig
from langgraph.store.redis import AsyncRedisStore
from langgraph.store.redis.base import _namespace_to_text
from pydantic import BaseModel, Field
from redis.asyncio import Redis, RedisCluster
from redisvl.index import SearchIndex
from redisvl.query.filter import Tag

from agents.keys import STORE_TAG
from agents.settings import ModelSettings, StoreIndexSettings, StoreSettings
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


async def create_store(redis: Redis | RedisCluster, settings: StoreSettings | None = None,
                       model: ModelSettings | None = None) -> RedisStore:
    """The store on ``redis`` (its search indexes created once, idempotently), with the
    semantic index of ``settings`` (embeddings from ``model``'s endpoint). On a Redis
    Cluster every item is in one hash slot (tag ``{store}``) and the store talks to the
    master that holds it: RediSearch cannot search across shards (``agents.slots``)."""
    settings = settings or StoreSettings()
    store_prefix = "store"
    if isinstance(redis, RedisCluster):
        store_prefix = STORE_TAG
        redis = shard_of(redis, STORE_TAG).client
    index = settings.index and index_config(settings.index, model or ModelSettings())
    with _sync_index_tolerated():
        store = RedisStore(redis_client=redis, index=index, ttl=ttl_config(settings),
                           store_prefix=store_prefix,
                           vector_prefix=vector_prefix(store_prefix, settings.index))
    await store.setup()
    return store


def index_config(index: StoreIndexSettings, model: ModelSettings) -> IndexConfig:
    """LangGraph's index config, its ``embed`` an ``OpenAIEmbeddings`` on our endpoint. It
    sends text, not tokens: tokenising first needs tiktoken's files (offline: none), and
    the stub, vLLM and Ollama take text."""
    embeddings = OpenAIEmbeddings(
        model=index.model, dimensions=index.dims, base_url=model.base_url,
        api_key=model.api_key, timeout=model.timeout_s, max_retries=model.max_retries,
        check_embedding_ctx_length=False)
    return IndexConfig(dims=index.dims, embed=embeddings, fields=index.fields)


def ttl_config(settings: StoreSettings) -> TTLConfig:
    ttl = TTLConfig(refresh_on_read=settings.ttl.refresh_on_read)
    if settings.ttl.default_ttl is not None:
        ttl["default_ttl"] = settings.ttl.default_ttl
    return ttl


def vector_prefix(store_prefix: str, index: StoreIndexSettings | None) -> str:
    """The vector index's name and key prefix, one per embedding model and size: vectors
    of another model (or size) are not comparable, and an index of another size would
    refuse them (the items stay; their vectors come back with writes under this one)."""
    if index is None:
        return f"{store_prefix}_vectors"
    tag = hashlib.sha256(json.dumps([index.embed, index.dims]).encode()).hexdigest()[:8]
    return f"{store_prefix}_vectors_{tag}"


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
