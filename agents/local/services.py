"""Start whatever the settings leave unset: Redis when no ``REDIS_URL`` (an embedded Redis
Cluster of ``redis.shards`` masters when that is set), the stub model when no
``OPENAI_BASE_URL``. The run command and the tests' fixtures both use this."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from agents.local.redis_cluster import EmbeddedRedisCluster
from agents.local.redis_server import EmbeddedRedis
from agents.local.stub_server import StubModelServer
from agents.settings import Settings


@contextlib.contextmanager
def local_services(settings: Settings) -> Iterator[Settings]:
    """Yield ``settings`` completed with the URLs of the services started here; stop them after."""
    with contextlib.ExitStack() as stack:
        update: dict = {}
        if settings.redis_url is None and settings.redis.shards:
            cluster = stack.enter_context(EmbeddedRedisCluster(
                settings.data_dir / "redis-cluster", settings.redis.shards,
                settings.redis.replicas, maxmemory=settings.redis.maxmemory))
            update["redis_url"] = cluster.url
        elif settings.redis_url is None:
            redis = stack.enter_context(EmbeddedRedis(settings.data_dir / "redis",
                                                          maxmemory=settings.redis.maxmemory))
            update["redis_url"] = redis.url
        if settings.model.base_url is None:
            stub = stack.enter_context(StubModelServer(settings.data_dir, settings.stub))
            update["model"] = settings.model.model_copy(update={"base_url": stub.url})
        yield settings.model_copy(update=update)
