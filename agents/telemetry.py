"""Telemetry behind a small interface of ours: spans, usage and metrics for the graphs.

Graphs, model calls and tools call this module only, never an exporter, so they run (and
are tested) the same with or without a tracing backend:

- ``span(name, **attrs)``: an OpenTelemetry span through the OpenTelemetry *API*. With no
  ``TracerProvider`` configured (the serving layer configures one from the standard
  ``OTEL_*`` variables, ``serve_app/telemetry/tracing.py``) every span is a no-op.
- ``Usage`` / ``collect_usage``: the tokens, model time and tool time of one run (or of one
  specialist call, returned to the caller in its result and added to the caller's run).
- ``ModelCallback``: a LangChain callback on the chat model (``agents/models.py``): one
  ``chat <model>`` span per call with the GenAI semantic-convention attributes, time to first
  token, and the call's usage added to the current ``Usage``.
- ``set_meter``: where counters and histograms go (the serving layer's ``Metrics``); none by
  default.
- ``inject`` / ``continue_trace``: the W3C ``traceparent`` carried in a worker request, so a
  specialist on another replica continues the caller's trace.

Prompt and completion text is not put on spans unless ``AGENT_CLUSTER_TRACE_CONTENT=1``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler

try:  # the API alone is tiny; without it every call below is a no-op
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # pragma: no cover - opentelemetry-api ships with ray
    trace = None

SCOPE = "agent_cluster"
log = logging.getLogger(__name__)
_PROPAGATOR = TraceContextTextMapPropagator() if trace else None
CONTROL_FLOW = ("GraphInterrupt", "GraphBubbleUp", "ParentCommand", "CancelledError")


def content_enabled() -> bool:
    """Prompt/completion text on spans: off unless asked for."""
    return os.environ.get("AGENT_CLUSTER_TRACE_CONTENT", "").lower() in ("1", "true", "yes")


# metrics: whatever the process plugs in (serve_app.telemetry.metrics.Metrics), else nothing
class Meter(Protocol):
    def count(self, name: str, value: float = 1.0, **tags: str) -> None: ...
    def observe(self, name: str, value: float, **tags: str) -> None: ...
    def gauge(self, name: str, value: float) -> None: ...


_meter: Meter | None = None


def set_meter(meter: Meter | None) -> None:
    global _meter
    _meter = meter


def _record(kind: str, /, *args: Any, **tags: str) -> None:
    """Metrics never break the work they measure: a failing meter is logged, once. (The
    kind is positional-only: a tag may be called anything, ``method`` included.)"""
    if _meter is None:
        return
    try:
        getattr(_meter, kind)(*args, **tags)
    except Exception:
        if kind not in _failed:
            _failed.add(kind)
            log.exception("metrics: %s%r failed (logged once)", kind, args)


_failed: set[str] = set()


def count(name: str, value: float = 1.0, **tags: str) -> None:
    _record("count", name, value, **tags)


def observe(name: str, value: float, **tags: str) -> None:
    _record("observe", name, value, **tags)


def gauge(name: str, value: float) -> None:
    _record("gauge", name, value)


def timed(name: str, fn: Callable) -> Callable:
    """``fn`` (a coroutine function) with its latency observed as ``name``."""
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            observe(name, time.perf_counter() - started)
    return wrapper


# usage
@dataclass
class Usage:
    """Tokens and time of a run, by ``model|role``; plain data so it crosses a Ray handle."""

    by: dict[str, dict[str, float]] = field(default_factory=dict)
    tool_s: float = 0.0
    tool_calls: int = 0

    def add_call(self, model: str, role: str, input_tokens: int, output_tokens: int,
                 duration_s: float) -> None:
        entry = self.by.setdefault(f"{model}|{role}", {
            "input_tokens": 0, "output_tokens": 0, "calls": 0, "model_s": 0.0})
        entry["input_tokens"] += input_tokens
        entry["output_tokens"] += output_tokens
        entry["calls"] += 1
        entry["model_s"] += duration_s

    def add_tool(self, duration_s: float) -> None:
        self.tool_s += duration_s
        self.tool_calls += 1

    def merge(self, other: Mapping[str, Any] | None) -> None:
        """Add another ``Usage.as_dict()`` (a specialist call's)."""
        if not other:
            return
        for key, entry in (other.get("by") or {}).items():
            mine = self.by.setdefault(key, {"input_tokens": 0, "output_tokens": 0,
                                            "calls": 0, "model_s": 0.0})
            for name, value in entry.items():
                mine[name] = mine.get(name, 0) + value
        self.tool_s += other.get("tool_s", 0.0)
        self.tool_calls += other.get("tool_calls", 0)

    def as_dict(self) -> dict[str, Any]:
        return {"by": {k: dict(v) for k, v in self.by.items()}, "tool_s": self.tool_s,
                "tool_calls": self.tool_calls}

    @property
    def input_tokens(self) -> int:
        return int(sum(e["input_tokens"] for e in self.by.values()))

    @property
    def output_tokens(self) -> int:
        return int(sum(e["output_tokens"] for e in self.by.values()))

    @property
    def model_s(self) -> float:
        return sum(e["model_s"] for e in self.by.values())


_usage: contextvars.ContextVar[Usage | None] = contextvars.ContextVar("usage", default=None)
_ids: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "ids", default=MappingProxyType({}))
_recorder: contextvars.ContextVar[list | None] = contextvars.ContextVar("recorder",
                                                                        default=None)


@contextlib.contextmanager
def collect_usage(usage: Usage, **ids: str) -> Iterator[Usage]:
    """Model calls and tools in this context add to ``usage``; ``ids`` (run id, thread id,
    role, replica) go on every span started in it."""
    tokens = (_usage.set(usage), _ids.set({**_ids.get(), **ids}))
    try:
        yield usage
    finally:
        _ids.reset(tokens[1])
        _usage.reset(tokens[0])


def current_role() -> str | None:
    """The role whose graph node is running (set by ``traced_node``)."""
    return _ids.get().get("role")


def add_responses(responses: list[dict[str, Any]] | None) -> None:
    """A specialist call's recorded model responses, added to the run's recording."""
    recorder = _recorder.get()
    if recorder is not None and responses:
        recorder.extend(responses)


def current_usage() -> Usage | None:
    return _usage.get()


def current_ids() -> Mapping[str, str]:
    """The ids of the work in progress (run id, thread id, role...), as spans get them."""
    return _ids.get()


def add_usage(other: Mapping[str, Any] | None) -> None:
    """A specialist call's usage, added to the run that made it."""
    usage = _usage.get()
    if usage is not None:
        usage.merge(other)


@contextlib.contextmanager
def record_responses(into: list) -> Iterator[list]:
    """Model responses of this context appended to ``into`` (regression cases replay them)."""
    token = _recorder.set(into)
    try:
        yield into
    finally:
        _recorder.reset(token)


# spans
def _tracer() -> Any:
    return trace.get_tracer(SCOPE) if trace else None


def _attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    out = {f"langgraph.{k}" if k in ("thread_id", "run_id", "graph_id") else
           f"agent_cluster.{k}": v for k, v in _ids.get().items()}
    out.update({k: v for k, v in attrs.items() if v is not None})
    return out


@contextlib.contextmanager
def span(name: str, kind: str = "internal", **attrs: Any) -> Iterator[Any]:
    """A span, current for what runs inside it; exceptions mark it ERROR, except LangGraph's
    control flow (an ``interrupt()`` is not a failure)."""
    tracer = _tracer()
    if tracer is None:
        yield None
        return
    with tracer.start_as_current_span(name, kind=getattr(SpanKind, kind.upper()),
                                      attributes=_attrs(attrs), record_exception=False,
                                      set_status_on_exception=False) as current:
        try:
            yield current
        except BaseException as exc:
            if type(exc).__name__ in CONTROL_FLOW:
                current.set_attribute("agent_cluster.outcome", type(exc).__name__)
            else:
                current.record_exception(exc)
                current.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise


def start_span(name: str, kind: str = "internal", **attrs: Any) -> Any:
    """A span the caller ends (``span.end()``), child of the current context; None when
    telemetry is unavailable. ``activate`` makes it current."""
    tracer = _tracer()
    if tracer is None:
        return None
    return tracer.start_span(name, kind=getattr(SpanKind, kind.upper()),
                             attributes=_attrs(attrs))


@contextlib.contextmanager
def activate(started: Any) -> Iterator[Any]:
    """``started`` (from ``start_span``) current inside, not ended on the way out."""
    if started is None:
        yield None
        return
    with trace.use_span(started, end_on_exit=False, record_exception=False,
                        set_status_on_exception=False):
        yield started


def set_attributes(**attrs: Any) -> None:
    if trace:
        current = trace.get_current_span()
        if current.is_recording():
            current.set_attributes({k: v for k, v in attrs.items() if v is not None})


def recording() -> bool:
    """Whether a tracer provider is installed (spans are recorded, sampler permitting)."""
    return bool(trace) and not isinstance(trace.get_tracer_provider(),
                                          (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def trace_id() -> str | None:
    """The current trace's id (32 hex digits), if there is one."""
    if not trace:
        return None
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def inject() -> dict[str, str]:
    """The current context as W3C headers (``traceparent``), plus our ids."""
    carrier: dict[str, str] = {}
    if _PROPAGATOR:
        _PROPAGATOR.inject(carrier)
    for key in ("run_id", "graph_id"):
        if key in _ids.get():
            carrier[key] = _ids.get()[key]
    return carrier


@contextlib.contextmanager
def continue_trace(carrier: Mapping[str, str] | None, fresh: bool = False) -> Iterator[None]:
    """Make the caller's context (from ``inject``) current. With no carrier and ``fresh``,
    a new trace id anyway (unsampled when nothing records spans), so runs and responses
    always carry one for correlation."""
    if not trace:
        yield
        return
    ctx = _PROPAGATOR.extract(dict(carrier or {}))
    if fresh and not trace.get_current_span(ctx).get_span_context().is_valid and \
            not recording():  # with a provider, its sampler makes the root span
        ctx = trace.set_span_in_context(trace.NonRecordingSpan(trace.SpanContext(
            trace_id=secrets.randbits(128) or 1, span_id=secrets.randbits(64) or 1,
            is_remote=True, trace_flags=trace.TraceFlags(0))))
    ids = {k: v for k, v in (carrier or {}).items() if k in ("run_id", "graph_id")}
    tokens = (otel_context.attach(ctx), _ids.set({**_ids.get(), **ids}))
    try:
        yield
    finally:
        _ids.reset(tokens[1])
        otel_context.detach(tokens[0])


def traced_node(fn: Callable, node: str, role: str) -> Callable:
    """A graph node in a span with its LangGraph ids; its latency as a metric."""
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def async_node(state: Any) -> Any:
            with _observed_node(node, role):
                return await fn(state)
        return async_node

    @functools.wraps(fn)
    def sync_node(state: Any) -> Any:
        with _observed_node(node, role):
            return fn(state)
    return sync_node


@contextlib.contextmanager
def _observed_node(node: str, role: str) -> Iterator[None]:
    """The span and the latency metric of one node run, by outcome (a LangGraph control
    flow exception, e.g. an interrupt, is ``interrupted``, not an error)."""
    config = _config()
    configurable = config.get("configurable") or {}
    metadata = config.get("metadata") or {}
    cm = span(f"node {role}.{node}", **{
        "langgraph.node": node, "langgraph.step": metadata.get("langgraph_step"),
        "langgraph.checkpoint_ns": configurable.get("checkpoint_ns") or None,
        "langgraph.checkpoint_id": configurable.get("checkpoint_id") or None,
        "langgraph.thread_id": configurable.get("thread_id"),
        "agent_cluster.role": role})
    started, outcome = time.perf_counter(), "error"
    try:
        with _in_role(cm, role):
            yield
        outcome = "ok"
    except BaseException as exc:
        outcome = "interrupted" if type(exc).__name__ in CONTROL_FLOW else "error"
        raise
    finally:
        observe("node_seconds", time.perf_counter() - started, node=node, role=role,
                outcome=outcome)


@contextlib.contextmanager
def _in_role(inner: contextlib.AbstractContextManager, role: str) -> Iterator[Any]:
    token = _ids.set({**_ids.get(), "role": role})
    try:
        with inner as current:
            yield current
    finally:
        _ids.reset(token)


def _config() -> dict[str, Any]:
    try:
        from langgraph.config import get_config
        return get_config()
    except RuntimeError:  # called outside a graph
        return {}


@contextlib.contextmanager
def tool_call(tool: str, role: str, call_id: str | None = None) -> Iterator[dict[str, str]]:
    """One tool call: span (``execute_tool <tool>``), time added to the run's usage, the
    ``tool_calls`` counter by outcome. Set ``result["outcome"]`` for a soft failure."""
    result = {"outcome": "ok"}
    started = time.perf_counter()
    try:
        with span(f"execute_tool {tool}", **{
                "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool,
                "gen_ai.tool.call.id": call_id, "agent_cluster.role": role}) as current:
            yield result
            if current is not None and result["outcome"] != "ok":
                current.set_attribute("agent_cluster.outcome", result["outcome"])
    except BaseException:
        result["outcome"] = "error"
        raise
    finally:
        elapsed = time.perf_counter() - started
        usage = _usage.get()
        if usage is not None:
            usage.add_tool(elapsed)
        count("tool_calls", tool=tool, outcome=result["outcome"])
        observe("tool_seconds", elapsed, tool=tool)


# model calls
@dataclass
class _Call:
    span: Any
    model: str
    role: str
    started: float
    first_token: float | None = None


class ModelCallback(BaseCallbackHandler):
    """Spans, time to first token and usage of every call of the chat model it is on.

    Inline (no thread hop), synchronous: its only work is bookkeeping."""

    run_inline = True
    raise_error = False

    def __init__(self, model: str, provider: str = "openai", server: str | None = None):
        self.model = model
        self.provider = provider
        self.server = server
        self._calls: dict[UUID, _Call] = {}

    def on_chat_model_start(self, serialized: Any, messages: list[list[Any]], *,
                            run_id: UUID, metadata: dict[str, Any] | None = None,
                            **kwargs: Any) -> None:
        metadata = metadata or {}
        model = (kwargs.get("invocation_params") or {}).get("model") or self.model
        role = _ids.get().get("role") or metadata.get("checkpoint_ns", "").split(":")[0] or "?"
        started_span = None
        tracer = _tracer()
        if tracer is not None:
            attrs = _attrs({
                "gen_ai.operation.name": "chat", "gen_ai.provider.name": self.provider,
                "gen_ai.system": self.provider, "gen_ai.request.model": model,
                "gen_ai.request.temperature": metadata.get("ls_temperature"),
                "server.address": self.server, "agent_cluster.role": role,
                "langgraph.node": metadata.get("langgraph_node"),
                "langgraph.thread_id": metadata.get("thread_id"),
            })
            if content_enabled():
                attrs["gen_ai.input.messages"] = json.dumps(
                    [{"role": m.type, "content": m.text} for m in messages[0]])
            started_span = tracer.start_span(f"chat {model}", kind=SpanKind.CLIENT,
                                             attributes=attrs)
        self._calls[run_id] = _Call(started_span, model, role, time.perf_counter())

    def on_llm_new_token(self, token: str, *, run_id: UUID, **kwargs: Any) -> None:
        call = self._calls.get(run_id)
        if call is not None and call.first_token is None:
            call.first_token = time.perf_counter()

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        call = self._calls.pop(run_id, None)
        if call is None:
            return
        elapsed = time.perf_counter() - call.started
        generation, message, usage = generated(response)
        meta = getattr(message, "response_metadata", None) or {}
        finish = meta.get("finish_reason") or \
            ((generation.generation_info or {}).get("finish_reason") if generation else None)
        input_tokens = int(usage.get("input_tokens") or 0)
        output_tokens = int(usage.get("output_tokens") or 0)
        ttft = call.first_token - call.started if call.first_token else None
        run_usage = _usage.get()
        if run_usage is not None:
            run_usage.add_call(call.model, call.role, input_tokens, output_tokens, elapsed)
        recorder = _recorder.get()
        if recorder is not None and message is not None:
            recorder.append({**_recorded(message), "role": call.role, "model": call.model})
        observe("model_seconds", elapsed, model=call.model, role=call.role)
        if ttft is not None:
            observe("model_ttft_seconds", ttft, model=call.model, role=call.role)
        if call.span is not None:
            attrs = {"gen_ai.usage.input_tokens": input_tokens,
                     "gen_ai.usage.output_tokens": output_tokens,
                     "gen_ai.response.model": meta.get("model_name") or call.model,
                     "gen_ai.response.id": getattr(message, "id", None),
                     "gen_ai.server.time_to_first_token": ttft}
            if finish:
                attrs["gen_ai.response.finish_reasons"] = [finish]
            if content_enabled() and message is not None:
                attrs["gen_ai.output.messages"] = json.dumps(
                    [{"role": "assistant", "content": message.text,
                      "tool_calls": getattr(message, "tool_calls", [])}], default=str)
            call.span.set_attributes({k: v for k, v in attrs.items() if v is not None})
            call.span.end()

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        call = self._calls.pop(run_id, None)
        if call is None:
            return
        count("model_errors", model=call.model, role=call.role, error=type(error).__name__)
        if call.span is not None:
            call.span.record_exception(error)
            call.span.set_attribute("error.type", type(error).__name__)
            call.span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            call.span.end()


def generated(response: Any) -> tuple[Any, Any, dict[str, Any]]:
    """A chat model call's generation, its message, and the message's token usage."""
    generation = response.generations[0][0] if response.generations and \
        response.generations[0] else None
    message = getattr(generation, "message", None)
    return generation, message, getattr(message, "usage_metadata", None) or {}


def _recorded(message: Any) -> dict[str, Any]:
    """A model response as data that rebuilds the same ``AIMessage`` offline."""
    return {"content": message.text, "tool_calls": [
        {"name": c["name"], "args": c["args"], "id": c.get("id")}
        for c in getattr(message, "tool_calls", None) or []],
        "usage": dict(getattr(message, "usage_metadata", None) or {})}
