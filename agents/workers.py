"""The worker-call seam: how the supervisor reaches a specialist, in-process or remote.

A worker is anything with ``stream(request) -> AsyncIterator[dict]`` yielding plain-dict
events (``token``, ``progress``) and, last, one ``result``. Plain dicts cross a Ray handle
unchanged, so the supervisor graph does not care where the specialist runs.

Every request is idempotent: a specialist's run lives in Redis under its own thread, so a
request repeated after a crash continues that run instead of starting it twice, and a
decision whose ``resume_key`` was already applied is not applied again.

``SpecialistWorker`` runs the built-in ReAct specialists; ``GraphWorker`` runs a project's
graph as a role (``roles.<name>.graph``) through the same seam, on the same sub-threads.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Literal, Protocol

from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langgraph.pregel import Pregel
from langgraph.types import Command, Interrupt, StateSnapshot
from pydantic import BaseModel, Field

from agents.errors import UnknownRoleError
from agents.memory import USER_KEY
from agents.streamed_state import StreamedState
from agents.streaming import relay
from agents.telemetry import Usage, collect_usage, continue_trace, record_responses, span

_CONTINUE = object()  # graph input meaning: resume from the last checkpoint
RESUMED = "resumed_keys"  # checkpoint metadata: the resume keys applied to a sub-thread


def resumed(state: StateSnapshot) -> list[str]:
    """The resume keys applied to a thread so far (space-separated: metadata keeps scalars)."""
    return str((state.metadata or {}).get(RESUMED, "")).split()


class WorkerRequest(BaseModel):
    role: str
    thread_id: str = Field(description="the specialist's own thread, derived from the parent's")
    task: str | None = Field(None, description="start (or continue) the run with this task")
    resume: Any = Field(None, description="the answer to the pending interrupt (an "
                        "approval decision for a specialist)")
    resume_key: str | None = Field(None, description="applied at most once per key")
    trace: dict[str, str] | None = Field(None, description="the caller's W3C trace context")
    user_id: str | None = Field(None, description="whose long-term memories it uses")
    context: dict[str, Any] | None = Field(
        None, description="the parent run's runtime context (agents.run_context)")


class WorkerResult(BaseModel):
    role: str
    thread_id: str
    status: Literal["done", "interrupted"]
    answer: str = ""
    interrupt: Any = Field(None, description="the pending interrupt's value (a "
                           "specialist's approval request), if any")
    steps: int = 0
    usage: dict[str, Any] | None = Field(None, description="tokens and time of this call")
    responses: list[dict[str, Any]] | None = Field(
        None, description="the model's responses in this call (regression cases replay them)")


class Worker(Protocol):
    def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]: ...


class SpecialistWorker:
    """Runs specialists' graphs in this process; the Ray deployment wraps one of these."""

    token_node: str | None = "agent"  # the node whose model tokens stream (None: any)

    def __init__(self, graphs: Mapping[str, Pregel], token_linger_s: float = 0.0):
        self.graphs = dict(graphs)
        self.token_linger_s = token_linger_s

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        req = WorkerRequest.model_validate(request)
        graph = self.graphs.get(req.role)
        if graph is None:
            raise UnknownRoleError(f"no specialist {req.role!r}; known: {sorted(self.graphs)}")
        config = {"configurable": {"thread_id": req.thread_id, USER_KEY: req.user_id}}
        graph_input, state = await self._next_input(graph, config, req)
        if isinstance(graph_input, Command):  # this resume's key goes with its checkpoints
            config["metadata"] = {RESUMED: " ".join([*resumed(state), req.resume_key or ""])}
        latest = (state.config or {}).get("configurable", {}).get("checkpoint_id")
        usage, responses, final = Usage(), [], StreamedState()
        if graph_input is not None:
            events = self._traced(self._events(graph, graph_input, config, req, final, latest,
                                               self.token_node), req, usage, responses)
            async for event in relay(events, self.token_linger_s):
                yield event
        if final.values is not None:  # the run's last state, as it streamed: no read-back
            result = outcome(req, final.values, final.interrupts)
        elif graph_input is None:  # nothing ran (a repeated request): the state as read
            result = outcome(req, state.values, state.interrupts)
        else:
            result = await self.status(graph, config, req)
        result.usage, result.responses = usage.as_dict(), responses
        yield {"type": "result", "result": result.model_dump()}

    @staticmethod
    async def _traced(events: AsyncIterator[dict[str, Any]], req: WorkerRequest,
                      usage: Usage, responses: list) -> AsyncIterator[dict[str, Any]]:
        """The specialist's run in the caller's trace, its usage and model responses
        collected (``relay`` runs this in a task and context of its own)."""
        with continue_trace(req.trace), collect_usage(usage, role=req.role), \
                record_responses(responses), \
                span(f"invoke_agent {req.role}", kind="server", **{
                    "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": req.role,
                    "langgraph.thread_id": req.thread_id, "langgraph.graph_id": req.role}):
            async for event in events:
                yield event

    async def invoke(self, request: dict[str, Any]) -> WorkerResult:
        """The result alone, dropping the token and progress events."""
        async for event in self.stream(request):
            if event["type"] == "result":
                return WorkerResult.model_validate(event["result"])
        raise RuntimeError("worker stream ended without a result")

    async def _next_input(self, graph: Pregel, config: dict, req: WorkerRequest
                          ) -> tuple[Any, StateSnapshot]:
        """What to send the graph now, or None if there is nothing to do (idempotency),
        and the thread's state as read for it (its latest checkpoint, or what a request
        that runs nothing answers)."""
        state = await graph.aget_state(config)
        if req.resume is not None:
            applied = {d.get("key") for d in state.values.get("decisions", [])}
            applied |= set(resumed(state))
            if req.resume_key in applied or not state.interrupts:
                return None, state
            return Command(resume=self.resume_value(req)), state
        if not state.values:
            return self.first_input(req.task or ""), state
        if state.next and not state.interrupts:
            return _CONTINUE, state  # crashed mid-run: go on from the last checkpoint
        return None, state

    @staticmethod
    def first_input(task: str) -> dict[str, Any]:
        return {"messages": [HumanMessage(task)], "steps": 0}

    @staticmethod
    def resume_value(req: WorkerRequest) -> Any:
        """A decision carries its key into the specialist's ``decisions`` (idempotency)."""
        return {**req.resume, "key": req.resume_key}

    @staticmethod
    def context(req: WorkerRequest) -> dict[str, Any] | None:
        return req.context

    @classmethod
    async def _events(cls, graph: Pregel, graph_input: Any, config: dict,
                      req: WorkerRequest, final: StreamedState, latest: str | None,
                      token_node: str | None) -> AsyncIterator[dict[str, Any]]:
        """Token and progress events; ``final`` follows the state streamed. ``latest``: the
        thread's latest checkpoint as read for the input (not read again)."""
        graph_input = None if graph_input is _CONTINUE else graph_input
        role = req.role
        holding = getattr(graph.checkpointer, "holding_writes", None)
        # a step's writes go with the checkpoint after it
        async with holding(latest={(req.thread_id, ""): latest}) if holding else \
                contextlib.nullcontext():
            async for mode, payload in graph.astream(
                graph_input, config, stream_mode=["messages", "custom", "values"],
                context=cls.context(req)
            ):
                if mode == "values":
                    final.follow(mode, payload)
                    continue
                if mode == "custom":
                    yield cls.custom_event(role, payload)
                    continue
                chunk, metadata = payload
                if isinstance(chunk, AIMessageChunk) and chunk.content and \
                        token_node in (None, metadata.get("langgraph_node")):
                    yield {"type": "token", "role": role, "text": chunk.content,
                           "message_id": chunk.id}

    @staticmethod
    def custom_event(role: str, payload: Any) -> dict[str, Any]:
        return payload

    @staticmethod
    async def status(graph: Pregel, config: dict, req: WorkerRequest) -> WorkerResult:
        state = await graph.aget_state(config)
        return outcome(req, state.values, state.interrupts)


def outcome(req: WorkerRequest, values: dict[str, Any],
            interrupts: Sequence[Interrupt] | None) -> WorkerResult:
    """A specialist's answer, or the approval it waits for, from its thread's state."""
    messages = values.get("messages", [])
    answer = messages[-1].text if messages and isinstance(messages[-1], AIMessage) else ""
    pending = interrupts[0].value if interrupts else None
    return WorkerResult(
        role=req.role, thread_id=req.thread_id,
        status="interrupted" if interrupts else "done",
        answer="" if interrupts else answer, interrupt=pending,
        steps=values.get("steps", 0),
    )


class GraphWorker(SpecialistWorker):
    """A project graph as a role of the supervisor (``roles.<name>.graph``), run on the
    role's sub-thread like a specialist: its input is the task as a user message (the graph
    keeps ``messages``), its answer its last AI message, its model tokens and stream-writer
    events the role's lane, its interrupt (whatever the value) the parent run's, resumed
    with the answer as given. The keys of applied resumes ride in its checkpoints' metadata,
    so a repeated resume is not applied twice. It runs with its ``context_schema``'s
    defaults (the parent's ``RunContext`` is not its schema)."""

    token_node = None

    @staticmethod
    def first_input(task: str) -> dict[str, Any]:
        return {"messages": [HumanMessage(task)]}

    @staticmethod
    def resume_value(req: WorkerRequest) -> Any:
        return req.resume

    @staticmethod
    def context(req: WorkerRequest) -> dict[str, Any]:
        return {}  # its context_schema's defaults

    @staticmethod
    def custom_event(role: str, payload: Any) -> dict[str, Any]:
        """What the graph writes: a progress line in the role's lane (its own ``token``
        and ``progress`` events pass as they are, in this role's name)."""
        if isinstance(payload, dict) and payload.get("type") in ("token", "progress"):
            return {**payload, "role": role}
        text = payload if isinstance(payload, str) else json.dumps(payload, default=str)
        return {"type": "progress", "role": role, "text": text, "data": payload}
