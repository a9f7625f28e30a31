"""A run's span, tokens, cost and timings, kept for the executor (``serve_app.runs.executor``).

    observed = RunTelemetry.begin(run, replica_id)   # before the run's first event
    observed.attach() ... observed.detach()          # around the graph, in the run's task
    summary = finish(run, status)                    # the end: span closed, metrics counted
    end = run_end(run, summary)                      # what the end writes (Records.end_run)
    await ended(redis, record, summary, answered)    # approval wait, regression case

The run span is a child of the request that created the run (its ``traceparent`` is kept in
the run's ``kwargs.trace``), so one trace holds the request, the run, and every specialist
call, even when the run starts later on another replica. A run retried after its replica
died is a second ``run`` span in the same trace (``langgraph.run_attempt`` tells them
apart); a resume is a new request, so a new trace, whose run names the thread.

Usage counts what this attempt's model calls used (the supervisor's here, the specialists'
returned in their results): tokens and model seconds by model and role, tool seconds, cost
(``agents.pricing``), and ``other_s``, the run's wall time outside model and tool calls
(calls running in parallel overlap, so it is floored at 0).
"""

from __future__ import annotations

import contextlib
import json
import time
import weakref
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from redis.asyncio import Redis

from agents import pricing, telemetry
from serve_app.keys import responses_key
from serve_app.runs import regressions
from serve_app.runs.records import RunEnd

# runs observed here, until their executor lets go of them (weak: a run handed back or
# retried never reaches ``finish``; its span then ends when the object goes, see __del__)
_active: weakref.WeakValueDictionary[tuple[str, int], RunTelemetry] = \
    weakref.WeakValueDictionary()
STREAMED = frozenset({"token", "messages", "messages/partial"})

class RunTelemetry:
    def __init__(self, run: dict[str, Any], replica_id: str):
        self.run = run
        self.usage = telemetry.Usage()
        self.responses: list[dict[str, Any]] = []
        self.started = time.perf_counter()
        self.first_output: float | None = None
        self._stack: contextlib.ExitStack | None = None
        carrier = (run.get("kwargs") or {}).get("trace") or {}
        self._parent = carrier
        self.ids = {"run_id": run["run_id"], "thread_id": run["thread_id"],
                    "graph_id": run["graph_id"], "replica": replica_id}
        self.span: Any = None
        self.trace_id: str | None = None
        queued = _age_s(run.get("created_at"))
        if queued is not None and run.get("attempt", 1) == 1:
            telemetry.observe("run_queue_seconds", queued, graph=run["graph_id"])

    @classmethod
    def begin(cls, run: dict[str, Any], replica_id: str) -> RunTelemetry:
        observed = cls(run, replica_id)
        _active[(run["run_id"], run["attempt"])] = observed
        return observed

    def attach(self) -> None:
        """The run's span, usage and recorder current in this task (until ``detach``);
        the span itself ends in ``finish``."""
        stack = contextlib.ExitStack()
        stack.enter_context(telemetry.continue_trace(self._parent, fresh=True))
        self.span = telemetry.start_span(f"run {self.run['graph_id']}", **{
            "langgraph.run_id": self.run["run_id"],
            "langgraph.thread_id": self.run["thread_id"],
            "langgraph.graph_id": self.run["graph_id"],
            "langgraph.assistant_id": self.run.get("assistant_id"),
            "langgraph.run_attempt": self.run.get("attempt"),
            "agent_cluster.replica": self.ids["replica"]})
        stack.enter_context(telemetry.activate(self.span))
        stack.enter_context(telemetry.collect_usage(self.usage, **self.ids))
        stack.enter_context(telemetry.record_responses(self.responses))
        self.trace_id = telemetry.trace_id()
        self._stack = stack

    def detach(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def __del__(self) -> None:
        """Handed back or retried (no ``finish``): the attempt's span ends here."""
        span, self.span = self.span, None
        if span is not None and span.is_recording():
            span.set_attribute("agent_cluster.status", "attempt_abandoned")
            span.end()

    @property
    def metadata(self) -> dict[str, Any]:
        """For the run's ``metadata`` event."""
        return {"trace_id": self.trace_id} if self.trace_id else {}

    async def watch(self, events: AsyncIterator[tuple[str, Any]]
                    ) -> AsyncIterator[tuple[str, Any]]:
        """The run's events, noting when the first streamed output went out."""
        async for event, data in events:
            if self.first_output is None and event.split("|")[0] in STREAMED:
                self.first_output = time.perf_counter()
                telemetry.observe("run_ttft_seconds", self.first_output - self.started,
                                  graph=self.run["graph_id"])
            yield event, data

    def summary(self, status: str) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.started
        usage = pricing.summarize(self.usage.as_dict())
        usage["duration_s"] = elapsed
        usage["other_s"] = max(0.0, elapsed - usage["model_s"] - usage["tool_s"])
        if self.first_output is not None:
            usage["ttft_s"] = self.first_output - self.started
        return usage


def finish(run: dict[str, Any], status: str, error: dict | None = None,
           interrupted: bool = False) -> dict[str, Any]:
    """End the run's span and count its metrics; the fields its record, its ``end`` event
    and its thread's totals get ({} if the run was not observed in this process)."""
    observed = _active.pop((run["run_id"], run["attempt"]), None)
    if observed is None:
        return {}
    usage = observed.summary(status)
    graph = run["graph_id"]
    telemetry.observe("run_seconds", usage["duration_s"], graph=graph, status=status)
    for model, row in usage["by_model"].items():
        for role, by_role in observed.usage.by.items():
            if not role.startswith(f"{model}|"):
                continue
            role = role.partition("|")[2]
            telemetry.count("tokens", by_role["input_tokens"], model=model, role=role,
                            direction="input")
            telemetry.count("tokens", by_role["output_tokens"], model=model, role=role,
                            direction="output")
        telemetry.count("cost_usd", row["cost_usd"], model=model)
    span, observed.span = observed.span, None
    if span is not None:
        span.set_attributes({
            "gen_ai.usage.input_tokens": usage["input_tokens"],
            "gen_ai.usage.output_tokens": usage["output_tokens"],
            "agent_cluster.cost_usd": usage["cost_usd"],
            "agent_cluster.model_s": usage["model_s"], "agent_cluster.tool_s": usage["tool_s"],
            "agent_cluster.status": status})
        if error:
            from opentelemetry.trace import Status, StatusCode
            span.set_status(Status(StatusCode.ERROR, f"{error.get('error')}: "
                                                     f"{error.get('message')}"))
        span.end()
    out = {"usage": usage}
    if observed.trace_id:
        out["trace_id"] = observed.trace_id
    out["_responses"] = observed.responses
    out["_span"] = span
    out["_interrupted"] = interrupted
    return out


def end_event(summary: dict[str, Any]) -> dict[str, Any]:
    """What the run's last SSE event adds: its trace id and usage."""
    return {k: v for k, v in summary.items() if not k.startswith("_")}


def run_end(run: dict[str, Any], summary: dict[str, Any]) -> RunEnd:
    """What the run's end writes with its status: usage and trace id on its record (and a
    compact copy in its metadata, as LangGraph Platform clients read runs), its thread's
    cumulative totals, the approval it leaves pending, the model's responses (a day)."""
    if not summary:
        return RunEnd()
    usage = summary["usage"]
    compact = {"input_tokens": usage["input_tokens"], "output_tokens": usage["output_tokens"],
               "cost_usd": usage["cost_usd"]}
    fields = {"usage": usage,
              "metadata": {**(run.get("metadata") or {}), **compact,
                           **({"trace_id": summary["trace_id"]} if "trace_id" in summary
                              else {})}}
    if "trace_id" in summary:
        fields["trace_id"] = summary["trace_id"]
    span = summary.get("_span")
    asks = ""
    if summary.get("_interrupted"):  # this run waits for an approval from now on
        context = span.get_span_context() if span is not None else None
        asks = json.dumps({"at": time.time(), "trace_id": summary.get("trace_id"),
                           "span_id": format(context.span_id, "016x") if context else None})
    return RunEnd(
        fields=fields, totals={**compact, "runs": 1, "model_calls": usage["model_calls"]},
        asks=asks, answers=bool(((run.get("kwargs") or {}).get("command") or {}).get("resume")),
        responses=json.dumps(summary.get("_responses") or [], default=str),
        responses_key=responses_key(run["thread_id"], run["run_id"]),
        responses_ttl_s=regressions.RESPONSES_TTL_S)


async def ended(redis: Redis, record: dict[str, Any], summary: dict[str, Any],
                answered: dict[str, Any] | None, graph: Any = None) -> None:
    """After the end is written: the wait for the approval this run answered, and a failed
    run kept as a regression case (``serve_app.runs.regressions``)."""
    if not summary:
        return
    if summary.get("_interrupted"):
        telemetry.count("approvals_requested", graph=record["graph_id"])
    if answered:
        _approval_waited(answered, record, summary.get("_span"))
    if graph is not None:
        await regressions.after_run(redis, record, summary.get("_responses") or [], graph)


def _approval_waited(asked: dict[str, Any], record: dict[str, Any], run_span: Any) -> None:
    """The wait from an approval's request to the decision (the resume run's creation): a
    metric, and an ``approval wait`` span in the resume's trace linked to the asking run."""
    decided = _timestamp(record.get("created_at")) or time.time()
    waited = max(0.0, decided - float(asked["at"]))
    telemetry.count("approvals_decided", graph=record["graph_id"])
    telemetry.observe("approval_wait_seconds", waited, graph=record["graph_id"])
    if run_span is None:
        return
    from opentelemetry import trace
    links = []
    if asked.get("trace_id") and asked.get("span_id"):
        links.append(trace.Link(trace.SpanContext(
            int(asked["trace_id"], 16), int(asked["span_id"], 16), is_remote=True,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))))
    parent = trace.set_span_in_context(run_span)
    wait = trace.get_tracer(telemetry.SCOPE).start_span(
        "approval wait", context=parent, links=links, start_time=int(float(asked["at"]) * 1e9),
        attributes={"langgraph.thread_id": record["thread_id"],
                    "langgraph.run_id": record["run_id"], "agent_cluster.wait_s": waited})
    wait.end(end_time=int(decided * 1e9))


def _timestamp(stamp: str | None) -> float | None:
    try:
        return datetime.fromisoformat(stamp).timestamp() if stamp else None
    except ValueError:
        return None


def _age_s(stamp: str | None) -> float | None:
    at = _timestamp(stamp)
    return None if at is None else max(0.0, time.time() - at)
