"""The store's semantic index (langgraph.json ``store.index``): a memory agent in the style of
LangGraph's template, run in-process on ``agents.system.Runtime``, recalls by meaning with
embeddings from the stub over HTTP and vectors in Redis; a second process ranks the same
items the same way; the Store API's search ranks by ``query`` once an index is configured."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import uuid
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from agents.memory import create_store, vector_prefix
from agents.settings import (
    PROJECT_ROOT,
    AuthSettings,
    LimitsSettings,
    Settings,
    StoreIndexSettings,
    StoreSettings,
    StoreTtlSettings,
    get_settings,
)
from agents.system import Runtime
from serve_app.api.http_api import build_api

PROJECT = Path(__file__).parent / "fixtures" / "memory_agent"
INDEX = StoreIndexSettings(**json.loads((PROJECT / "langgraph.json").read_text())["store"]["index"])

FACTS = ["I like coffee in the morning", "my dog is named Rex",
         "I work on Redis replication at night"]


def load_graph_module() -> ModuleType:
    """The fixture's graph module, imported by path as langgraph.json names it."""
    spec = importlib.util.spec_from_file_location(
        "memory_agent_fixture_graph", PROJECT / "src" / "memory_agent" / "graph.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def indexed(settings: Settings) -> Settings:
    return settings.model_copy(update={"store": StoreSettings(index=INDEX)})


@pytest.fixture
async def runtime(indexed: Settings):
    built = await Runtime.create(indexed)
    yield built
    await built.aclose()


@pytest.fixture
def openai_env(monkeypatch, stub_url):
    """What every replica's environment has with the embedded stub (the user's graph
    builds ``ChatOpenAI()`` from it)."""
    monkeypatch.setenv("OPENAI_BASE_URL", stub_url)
    monkeypatch.setenv("OPENAI_API_KEY", "stub-key")


async def turn(graph, module: ModuleType, user: str, text: str) -> str:
    config = {"configurable": {"thread_id": str(uuid.uuid4())}}
    out = await graph.ainvoke({"messages": [{"role": "user", "content": text}]}, config,
                              context=module.Context(user_id=user))
    return out["messages"][-1].content


async def test_memory_agent_recalls_by_meaning_from_redis(runtime, openai_env, stub_admin):
    module = load_graph_module()
    graph = module.graph.copy(update={"checkpointer": runtime.checkpointer,
                                      "store": runtime.store})
    user = f"u-{uuid.uuid4().hex[:8]}"
    embedded_before = stub_admin.get("/stats").json()["by_role"].get("embeddings", 0)
    for fact in FACTS:
        assert await turn(graph, module, user, f"Remember that {fact}.") == f"Noted: {fact}."

    drink = await turn(graph, module, user, "Which drink do I like in the morning?")
    dog = await turn(graph, module, user, "What is my dog named?")
    assert drink.startswith("From what I remember: [") and "coffee" in drink
    assert "Rex" in dog and "coffee" not in dog
    assert "I do not know" in await turn(graph, module, f"{user}-other", "What is my dog named?")

    # the embeddings came from the stub over HTTP; the vectors are in Redis
    assert stub_admin.get("/stats").json()["by_role"]["embeddings"] > embedded_before
    vectors = [k async for k in runtime.redis.scan_iter(
        match=f"{vector_prefix('store', INDEX)}:*", count=1000)]
    assert len(vectors) >= len(FACTS)


SEARCH_ELSEWHERE = """
import asyncio, json, sys
from redis.asyncio import Redis
from agents.memory import create_store
from agents.settings import ModelSettings, StoreIndexSettings, StoreSettings

async def main(redis_url, model_url, index, user, query):
    redis = Redis.from_url(redis_url)
    store = await create_store(redis, StoreSettings(index=StoreIndexSettings(**index)),
                               ModelSettings(base_url=model_url))
    found = await store.asearch(("memories", user), query=query, limit=3)
    print(json.dumps([[item.value["content"], item.score] for item in found]))
    await redis.aclose()

asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], sys.argv[5]))
"""


def search_elsewhere(settings: Settings, user: str, query: str) -> list[list]:
    """``asearch`` in another process, on a store client of its own."""
    done = subprocess.run(
        [sys.executable, "-c", SEARCH_ELSEWHERE, settings.redis_url, settings.model.base_url,
         INDEX.model_dump_json(), user, query],
        capture_output=True, text=True, timeout=60, cwd=PROJECT_ROOT, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def test_another_process_ranks_the_same_items_by_meaning(runtime, indexed):
    user = f"u-{uuid.uuid4().hex[:8]}"
    for i, fact in enumerate(FACTS):
        await runtime.store.aput(("memories", user), f"m{i}", {"content": fact, "context": ""})

    ranked = search_elsewhere(indexed, user, "the name of my dog")
    assert ranked[0][0] == "my dog is named Rex"
    scores = [score for _, score in ranked]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[-1]
    assert search_elsewhere(indexed, user, "redis replication")[0][0] == FACTS[2]


@pytest.fixture
def indexed_process(monkeypatch, stub_url) -> Settings:
    """The process settings with the fixture's index, as the replicas of a project with a
    ``store.index`` read them (the API builds its Store API on them)."""
    monkeypatch.setenv("AGENT_CLUSTER_STORE__INDEX__DIMS", str(INDEX.dims))
    monkeypatch.setenv("AGENT_CLUSTER_STORE__INDEX__EMBED", INDEX.embed)
    monkeypatch.setenv("AGENT_CLUSTER_STORE__INDEX__FIELDS", json.dumps(INDEX.fields))
    monkeypatch.setenv("OPENAI_BASE_URL", stub_url)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


async def test_store_api_search_ranks_by_query(settings, indexed_process, in_process_service):
    assert indexed_process.store.index == INDEX
    namespace = ["docs", uuid.uuid4().hex[:8]]
    async with in_process_service(settings, "store-index") as service, httpx.AsyncClient(
            transport=httpx.ASGITransport(app=build_api(service, AuthSettings(),
                                                        LimitsSettings())),
            base_url="http://api", timeout=30) as client:
        for i, fact in enumerate(FACTS):
            put = await client.put("/store/items", json={
                "namespace": namespace, "key": f"m{i}", "value": {"content": fact}})
            assert put.status_code == 204, put.text
        ranked = await client.post("/store/items/search", json={
            "namespace_prefix": namespace, "query": "what is my dog named", "limit": 3})
        listed = await client.post("/store/items/search", json={"namespace_prefix": namespace})

    assert ranked.status_code == 200, ranked.text
    items = ranked.json()["items"]
    assert items[0]["key"] == "m1"
    scores = [item["score"] for item in items]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[-1]
    assert {item["key"] for item in listed.json()["items"]} == {"m0", "m1", "m2"}
    assert all(item.get("score") is None for item in listed.json()["items"])


async def test_store_ttl_is_a_redis_expiry_of_items_and_their_vectors(indexed, redis_client):
    store = await create_store(redis_client, StoreSettings(
        index=INDEX, ttl=StoreTtlSettings(default_ttl=2)), indexed.model)
    namespace = ("ttl", uuid.uuid4().hex[:8])
    await store.aput(namespace, "default", {"content": "short lived"})
    await store.aput(namespace, "own", {"content": "longer lived"}, ttl=10)
    ttls = {}
    async for key in redis_client.scan_iter(match="store:*", count=1000):
        found = await redis_client.json().get(key, "$.prefix", "$.key")
        if namespace[1] in found["$.prefix"][0]:  # the namespace's text, escaped
            ttls[found["$.key"][0]] = await redis_client.ttl(key)
    assert 0 < ttls["default"] <= 120 and 120 < ttls["own"] <= 600
    vectors = [k async for k in redis_client.scan_iter(
        match=f"{vector_prefix('store', INDEX)}:*", count=1000)]
    assert sum([0 < await redis_client.ttl(k) <= 600 for k in vectors]) >= 2
