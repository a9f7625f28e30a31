"""The serving layer's side of tracing: the exporter, the HTTP entry span, the env.

Each replica configures one OpenTelemetry ``TracerProvider`` exporting OTLP/HTTP
(protobuf) when the standard variables ask for it (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``; ``OTEL_TRACES_SAMPLER`` / ``_ARG``,
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES`` as usual). The launcher passes every
``OTEL_*`` variable of its environment to all replicas (``otel_env``). ``service.name`` is
``<OTEL_SERVICE_NAME or agent-cluster>-<role>`` per deployment, ``service.instance.id`` the
replica. Without those variables nothing is exported and spans cost next to nothing.

Context crosses Ray handle calls in the worker request (``agents.telemetry.inject``), so
Serve's own tracing (``RAY_SERVE_TRACING_*``) is not needed; if it is turned on, Ray owns the
global provider and ours is not installed.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from agents import telemetry

log = logging.getLogger(__name__)
TRACE_HEADER = "x-trace-id"
_configured: Any = None


def otel_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The ``OTEL_*`` variables (and our content switch) to hand to every replica."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items()
            if k.startswith("OTEL_") or k == "AGENT_CLUSTER_TRACE_CONTENT"}


def enabled(environ: dict[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true" or \
            environ.get("OTEL_TRACES_EXPORTER", "otlp").lower() == "none":
        return False
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def configure(role: str, replica_id: str) -> bool:
    """Install this process's provider (once); False when tracing is off here."""
    global _configured
    if _configured is not None:
        return bool(_configured)
    _configured = False
    if not enabled() or os.environ.get("RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH"):
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        log.warning("OTEL_* set but the OpenTelemetry SDK/exporter is missing: %s", exc)
        return False
    base = os.environ.get("OTEL_SERVICE_NAME") or "agent-cluster"
    resource = Resource.create({"service.name": f"{base}-{role}",
                                "service.namespace": base,
                                "service.instance.id": replica_id,
                                "agent_cluster.role": role, "process.pid": os.getpid()})
    provider = TracerProvider(resource=resource)  # sampler from OTEL_TRACES_SAMPLER(_ARG)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _configured = provider
    log.info("tracing to %s as %s-%s", os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
             or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"), base, role)
    return True


def flush(timeout_s: float = 5.0) -> None:
    if _configured:
        _configured.force_flush(int(timeout_s * 1000))


class TraceMiddleware:
    """ASGI: each HTTP request in a server span, continuing the caller's ``traceparent``
    (or a new trace id, recorded or not), answered with ``x-trace-id``; the span lasts until
    the response is sent (an SSE stream's whole life)."""

    def __init__(self, app: Any, skip: tuple[str, ...] = ("/ok", "/metrics", "/ui")):
        self.app = app
        self.skip = skip
        self.open_streams = 0

    def _streams(self, change: int) -> None:
        self.open_streams += change
        telemetry.gauge("sse_streams_open", self.open_streams)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.skip):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
                   if k in (b"traceparent", b"tracestate")}
        route = scope["path"]
        started = time.perf_counter()
        status = {"code": 500, "sse": False}
        with telemetry.continue_trace(headers, fresh=True), \
                telemetry.span(f"{scope['method']} {route}", kind="server", **{
                    "http.request.method": scope["method"], "url.path": route}) as span:
            trace_id = telemetry.trace_id()

            async def send_with_id(message: dict) -> None:
                if message["type"] == "http.response.start":
                    status["code"] = message["status"]
                    if any(k == b"content-type" and v.startswith(b"text/event-stream")
                           for k, v in message.get("headers") or ()):
                        status["sse"] = True
                        self._streams(+1)
                    if trace_id:
                        message.setdefault("headers", [])
                        message["headers"] = [*message["headers"],
                                              (TRACE_HEADER.encode(), trace_id.encode())]
                await send(message)

            try:
                await self.app(scope, receive, send_with_id)
            finally:
                if status["sse"]:
                    self._streams(-1)
                if span is not None:
                    span.set_attribute("http.response.status_code", status["code"])
                telemetry.observe("http_request_seconds", time.perf_counter() - started,
                                  method=scope["method"], status=str(status["code"]))


def instrument_checkpointer(saver: Any) -> Any:
    """Checkpoint writes timed (``checkpoint_write_seconds``), on this instance only."""
    saver.aput = telemetry.timed("checkpoint_write_seconds", saver.aput)
    return saver
