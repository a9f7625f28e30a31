"""The supervisor: routes each turn to workers (several in parallel with ``Send``) until FINISH.

supervisor -> worker x N (parallel) -> supervisor -> ... -> END

Workers are reached through the worker-call seam (``agents.workers``), so the same graph runs
specialists in this process or on other Ray replicas. A specialist's pending approval becomes
an ``interrupt()`` of the parent thread; resuming the parent resumes the specialist. A role
may be a graph of the served project (``roles.<name>.graph``, ``agents.workers.GraphWorker``):
routed to, fanned out to, streamed and interrupted alike.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, SystemMessage, ToolMessage
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.config import get_config, get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore
from langgraph.types import Send, interrupt
from pydantic import BaseModel, Field, ValidationError

from agents.errors import StepLimitExceeded
from agents.memory import current_user
from agents.run_context import RunContext, current_context
from agents.settings import RoleSettings
from agents.specialist import steps_this_turn
from agents.state import Assignment, SupervisorState, WorkerInput
from agents.telemetry import add_responses, add_usage, inject, span, traced_node
from agents.workers import Worker, WorkerResult

FINISH = "FINISH"
ROUTE_RETRIES = 2  # corrections a malformed route call gets before the turn gives up


class RouteStep(BaseModel):
    worker: str = Field(description="a worker's name, or FINISH when the request is answered")
    task: str = Field("", description="what this worker should do, self-contained")


class Route(BaseModel):
    """Send the next sub-tasks to workers (several run in parallel), or FINISH."""

    next: list[RouteStep]


def route_tool() -> dict[str, Any]:
    """The ``Route`` schema as an OpenAI tool named ``route`` (not the class name)."""
    tool = convert_to_openai_tool(Route)
    tool["function"]["name"] = "route"
    return tool


def supervisor_prompt(roles: Mapping[str, RoleSettings]) -> str:
    team = "\n".join(f"- {name}: {role.description}" for name, role in roles.items())
    return (
        "You are the supervisor of a team of agents:\n"
        f"{team}\n"
        "Call the route tool to hand sub-tasks to workers; independent sub-tasks may go to "
        f"several workers at once. When the user's request is answered, route to {FINISH}, "
        "or reply to the user directly without calling a tool."
    )


def sub_thread_id(parent_thread: str, assignment: Assignment) -> str:
    """A specialist's own thread: derived from the parent, unique per assignment."""
    return f"{parent_thread}/{assignment['worker']}/{assignment['task_id']}"


def tagged_interrupt(value: Any, role: str, thread_id: str) -> Any:
    """A worker's interrupt as the parent run's: each request (a dict, or each dict of a
    list as ``langgraph.prebuilt`` raises ``HumanInterrupt`` s) says which role and sub-thread
    asks; any other value is wrapped as ``value``. The answer reaches the worker unchanged."""
    tag = {"role": role, "thread_id": thread_id}
    if isinstance(value, dict):
        return {**value, **tag}
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        return [{**item, **tag} for item in value]
    return {"value": value, **tag}


def route_errors(response: AIMessage, roles: Mapping[str, RoleSettings]) -> list[ToolMessage]:
    """What is wrong with the model's route calls, one tool result per faulty call (as a
    specialist's tool errors go back to its model): arguments that are not JSON or do not
    fit ``Route``, workers that do not exist."""
    known = [*roles, FINISH]
    errors = []
    for call in response.invalid_tool_calls:
        if call.get("name") == "route":
            errors.append((call.get("id"), f"the arguments are not valid JSON "
                                           f"({call.get('error') or 'unparsable'})"))
    for call in response.tool_calls:
        if call["name"] != "route":
            continue
        try:
            steps = Route.model_validate(call["args"]).next
        except ValidationError as exc:
            errors.append((call["id"], f"the arguments do not fit the route schema: {exc}"))
            continue
        unknown = [step.worker for step in steps if step.worker not in known]
        if unknown:
            errors.append((call["id"], f"no worker is named {unknown}; workers: {known}"))
    return [ToolMessage(f"Error: {reason}. Call route again with valid arguments.",
                        tool_call_id=call_id or "route", name="route", status="error")
            for call_id, reason in errors]


def parse_route(response: AIMessage, roles: Mapping[str, RoleSettings]) -> list[Assignment]:
    """Assignments from the model's route call; no call or FINISH means the turn is done."""
    assignments: list[Assignment] = []
    for call in response.tool_calls:
        if call["name"] != "route":
            continue
        for step in Route.model_validate(call["args"]).next:
            if step.worker in roles:
                assignments.append(Assignment(worker=step.worker, task=step.task,
                                              task_id=uuid.uuid4().hex[:12]))
    return assignments


def model_name(response: AIMessage) -> dict[str, Any]:
    """Which model answered (the run's context may choose it)."""
    name = response.response_metadata.get("model_name")
    return {"model_name": name} if name else {}


def build_supervisor(
    model: BaseChatModel,
    workers: Mapping[str, Worker],
    roles: Mapping[str, RoleSettings],
    max_steps: int,
    checkpointer: BaseCheckpointSaver | None = None,
    store: BaseStore | None = None,
) -> CompiledStateGraph:
    """Compile the supervisor graph; ``workers`` maps each role to the seam that runs it.
    Each worker call carries the run's user, whose memories the specialist uses."""
    router = model.bind_tools([route_tool()], tool_choice="auto")
    prompt = SystemMessage(supervisor_prompt(roles))

    async def supervisor(state: SupervisorState) -> dict[str, Any]:
        steps = steps_this_turn(state)
        if steps >= max_steps:
            raise StepLimitExceeded("supervisor", max_steps)
        context = current_context()
        model = router.bind(**context.model_kwargs())
        conversation = [prompt, *context.instructions(), *state["messages"]]
        response = await model.ainvoke(conversation)
        for _ in range(ROUTE_RETRIES):  # a malformed route: the model hears why, tries again
            errors = route_errors(response, roles)
            if not errors:
                break
            conversation += [response, *errors]
            response = await model.ainvoke(conversation)
        else:
            if route_errors(response, roles):
                response = AIMessage(f"I could not route this request: the route call stayed "
                                     f"malformed after {ROUTE_RETRIES} corrections.",
                                     id=response.id)
        update: dict[str, Any] = {"assignments": parse_route(response, roles), "steps": steps + 1}
        if response.text.strip():  # a direct reply to the user (FINISH with an answer)
            update["messages"] = [AIMessage(
                response.text, name="supervisor", id=response.id,
                response_metadata=model_name(response))]
        return update

    def fan_out(state: SupervisorState) -> list[Send] | Literal["__end__"]:
        return [Send("worker", WorkerInput(assignment=a)) for a in state["assignments"]] or END

    async def worker(state: WorkerInput) -> dict[str, Any]:
        assignment = state["assignment"]
        role, task_id = assignment["worker"], assignment["task_id"]
        config = get_config()
        parent_thread = config["configurable"]["thread_id"]
        request = {"role": role, "thread_id": sub_thread_id(parent_thread, assignment),
                   "task": assignment["task"], "user_id": current_user(config),
                   "context": current_context().model_dump(exclude_none=True) or None}
        started = time.time()
        try:
            result = await call_worker(workers[role], request)
        except Exception as exc:  # the supervisor hears of the failure and decides what next
            return {"messages": [AIMessage(
                f"{role} failed: {type(exc).__name__}: {exc}", name=role,
                response_metadata={"worker": role, "task_id": task_id, "error": True},
            )]}
        # One interrupt per pending approval. On resume this node runs again from the top:
        # each earlier interrupt() returns its recorded decision, and the worker skips any
        # decision whose key it already applied, so nothing is applied twice.
        index = 0
        while result.status == "interrupted":
            decision = interrupt(tagged_interrupt(result.interrupt, role, result.thread_id))
            result = await call_worker(workers[role], {
                **request, "task": None, "resume": decision, "resume_key": f"{task_id}:{index}",
            })
            index += 1
        answer = AIMessage(
            result.answer, name=role,
            response_metadata={"worker": role, "task_id": task_id, "thread_id": result.thread_id,
                               "started_at": started, "finished_at": time.time()},
        )
        return {"messages": [answer]}

    graph = StateGraph(SupervisorState, context_schema=RunContext)
    graph.add_node("supervisor", traced_node(supervisor, "supervisor", "supervisor"))
    graph.add_node("worker", traced_node(worker, "worker", "supervisor"))
    graph.add_edge(START, "supervisor")
    graph.add_conditional_edges("supervisor", fan_out, ["worker", END])
    graph.add_edge("worker", "supervisor")
    return graph.compile(checkpointer=checkpointer, store=store, name="supervisor")


async def call_worker(worker: Worker, request: dict[str, Any]) -> WorkerResult:
    """Stream one worker call, relaying its tokens and progress to this run's stream."""
    write = get_stream_writer()
    role = request["role"]
    with span(f"call {role}", kind="client", **{
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": role,
            "agent_cluster.worker_thread_id": request["thread_id"],
            "agent_cluster.resume": request.get("resume") is not None}):
        async for event in worker.stream({**request, "trace": inject()}):
            if event["type"] == "result":
                result = WorkerResult.model_validate(event["result"])
                add_usage(result.usage)  # the specialist's tokens count for this run
                add_responses(result.responses)
                return result
            write(event)
    raise RuntimeError(f"worker {role} ended its stream without a result")
