"""One embedded Redis and one stub model server (real processes, real HTTP) per test session."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis

from agents.checkpoint import create_redis
from agents.local.otlp_receiver import Receiver
from agents.local.process import free_port
from agents.local.services import local_services
from agents.local.webhook_receiver import Receiver as WebhookReceiver
from agents.settings import PROJECT_ROOT, Settings
from agents.system import AgentSystem, Runtime
from serve_app.ops.launcher import HAPROXY_MODE_PORTS, serve_cluster
from serve_app.resources.approvals import RecordedApprovals
from serve_app.resources.service import AgentService
from tests.redis_cluster_app import redis_cluster, served  # noqa: F401 (fixtures)

FIRST = {"test_multinode.py"}  # its own Ray driver: before the session cluster's (one a process)
# They kill replicas and Redis; the last two share the Redis Cluster app (up to the end).
LAST = ["test_serving_faults.py", "test_redis_cluster.py", "test_redis_faults.py"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that connect this process to a Ray cluster of their own run first (a process
    holds one Ray connection: theirs ends before the session's cluster starts); fault
    tests run after everything else, in ``LAST``'s order."""
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return 0 if name in FIRST else 2 + LAST.index(name) if name in LAST else 1
    items.sort(key=rank)


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data_dir = tmp_path_factory.mktemp("data")
    base = Settings(redis_url=None, data_dir=data_dir, workspace_dir=data_dir / "workspace",
                    model={"base_url": None, "max_retries": 0, "timeout_s": 30})
    with local_services(base) as ready:
        yield ready


@pytest.fixture(scope="session")
def redis_url(settings: Settings) -> str:
    return settings.redis_url


@pytest.fixture(scope="session")
def stub_url(settings: Settings) -> str:
    return settings.model.base_url


@pytest.fixture
def stub_admin(stub_url: str):
    """Change the stub's latency/faults for one test; restored afterwards."""
    admin = stub_url.removesuffix("/v1") + "/admin"
    with httpx.Client(base_url=admin, timeout=10) as client:
        original = client.get("/config").json()
        yield client
        client.post("/config", json=original)


@pytest.fixture(scope="session")
def otlp_receiver(tmp_path_factory: pytest.TempPathFactory) -> Receiver:
    """An OTLP/HTTP receiver the session's cluster exports its spans to (also appended to
    its ``out`` file, which the notebooks read)."""
    with Receiver(out=tmp_path_factory.mktemp("otlp") / "spans.jsonl") as receiver:
        yield receiver


@pytest.fixture(scope="session")
def webhook_receiver() -> WebhookReceiver:
    """Where the session's cluster sends webhooks: runs' and crons' (tests pass its URL)
    and every pending approval (``<url>/approvals``); ``/fail...`` paths answer 500."""
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="session")
def cluster_url(settings: Settings, otlp_receiver: Receiver,
                webhook_receiver: WebhookReceiver) -> str:
    """One local Ray with the Serve app of configs/local.yaml for the whole session.
    Serve's other ports are free ones too, so two sessions on a machine can run.
    Every replica traces to ``otlp_receiver`` (standard OTEL_* variables, all sampled)."""
    for name in HAPROXY_MODE_PORTS:  # HAProxy's stats and metrics, Serve's fallback proxy
        os.environ.setdefault(name, str(free_port()))
    os.environ.setdefault("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{otlp_receiver.url}/v1/traces")
    os.environ.setdefault("OTEL_BSP_SCHEDULE_DELAY", "500")  # ms: spans arrive within a second
    # Ten minutes of checkpoints are kept (retention.keep_for_s), so the history and time
    # travel tests have a history to read; the default (the latest only) is measured in
    # tests/test_retention.py.
    with serve_cluster(settings, PROJECT_ROOT / "configs" / "local.yaml", port=free_port(),
                       extra_env={"AGENT_CLUSTER_RETENTION__KEEP_FOR_S": "600",
                                  **webhook_env(webhook_receiver)}) as url:
        yield url


WEBHOOK_SECRET = "test-webhook-secret"


def webhook_env(receiver: WebhookReceiver) -> dict[str, str]:
    """Webhooks to the local receiver (a loopback address: allowed), signed, retried fast."""
    return {"AGENT_CLUSTER_WEBHOOKS__ALLOW_PRIVATE_HOSTS": "true",
            "AGENT_CLUSTER_WEBHOOKS__SECRET": WEBHOOK_SECRET,
            "AGENT_CLUSTER_WEBHOOKS__APPROVAL_URL": f"{receiver.url}/approvals",
            "AGENT_CLUSTER_WEBHOOKS__BACKOFF_S": "0.2"}


@pytest.fixture(scope="session")
async def redis_client(settings: Settings) -> Redis:
    """On our pool with reconnect retries: a fault test restarts Redis mid-session."""
    client = create_redis(settings.redis_url, settings.redis)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def restarted_redis():
    """Redis servers a fault test restarted in place of the session's; stopped at the end."""
    servers = []
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def in_process_service():
    """``in_process_service(settings, name)``: an ``AgentService`` over the real graphs in
    this process (no Ray), its executor started, whose specialists check the approval log
    as deployed ones do (for tests of the HTTP API over ASGI)."""

    @contextlib.asynccontextmanager
    async def service(settings: Settings, name: str) -> AsyncIterator[AgentService]:
        runtime = await Runtime.create(settings)
        runtime.approval_verifier = RecordedApprovals(runtime.redis)
        built = AgentService.in_process(AgentSystem(runtime),
                                        replica_id=f"{name}-{uuid.uuid4().hex[:6]}")
        built.executor.start()
        try:
            yield built
        finally:
            await built.aclose()
            await runtime.aclose()

    return service
