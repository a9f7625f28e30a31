"""A specialist: a cyclic ReAct graph (agent -> [approve] -> tools -> agent ... -> END).

Sensitive tool calls stop at the ``approve`` node with ``interrupt()`` before they run; one
call is decided per visit, so every decision is checkpointed on its own. Tool failures and
malformed arguments go back to the model as tool messages and the loop goes on.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Mapping
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import BaseTool
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.config import get_config, get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore
from langgraph.types import interrupt

from agents.approval import ApprovalRequest, ApprovalVerifier, parse_decision
from agents.effects import EffectLedger
from agents.errors import StepLimitExceeded
from agents.keys import effect_key
from agents.run_context import RunContext, current_context
from agents.settings import ApprovalPolicy, RoleSettings
from agents.state import Decision, SpecialistState
from agents.telemetry import tool_call, traced_node


def system_prompt(role: str, settings: RoleSettings) -> str:
    return (
        f"You are the {role} of a team of agents: you {settings.description}. "
        "Use your tools when they help; when a tool fails, read the error and try again "
        "differently. When you are done, answer concisely."
    )


def last_ai_message(state: SpecialistState) -> AIMessage | None:
    message = state["messages"][-1] if state["messages"] else None
    return message if isinstance(message, AIMessage) else None


def steps_this_turn(state: Mapping[str, Any]) -> int:
    """Steps restart when a new human message opens a turn (clients send only messages)."""
    messages = state.get("messages") or []
    if messages and isinstance(messages[-1], HumanMessage):
        return 0
    return state.get("steps", 0)


def progress_text(tool: BaseTool, args: dict[str, Any]) -> str:
    template = (tool.metadata or {}).get("progress", f"Calling {tool.name}...")
    try:
        return template.format(**args)
    except (KeyError, IndexError, ValueError):
        return f"Calling {tool.name}..."


async def _as_text(result: Awaitable[Any]) -> str:
    output = await result
    return output if isinstance(output, str) else json.dumps(output, default=str)


def tool_error(exc: BaseException) -> str:
    return f"Error: {type(exc).__name__}: {exc}"


def build_specialist(
    role: str,
    model: BaseChatModel,
    tools: list[BaseTool],
    settings: RoleSettings,
    policy: ApprovalPolicy,
    checkpointer: BaseCheckpointSaver | None = None,
    ledger: EffectLedger | None = None,
    verifier: ApprovalVerifier | None = None,
    store: BaseStore | None = None,
) -> CompiledStateGraph:
    """Compile one specialist's graph; every role is built by this one function.

    With a ``ledger``, sensitive calls run at most once per (thread, tool call id), even
    when the tools node is replayed after a crash. A sensitive call runs only with an
    approve or edit decision in the state, and with a ``verifier`` only if that decision
    was recorded by the serving layer, whatever the messages or a state update say. The
    ``store`` is the long-term memory its tools reach with ``get_store()``."""
    tools_by_name = {tool.name: tool for tool in tools}
    bound_model = model.bind_tools(tools) if tools else model
    prompt = SystemMessage(system_prompt(role, settings))

    def undecided_sensitive_calls(state: SpecialistState) -> list[dict[str, Any]]:
        message = last_ai_message(state)
        if message is None:
            return []
        decided = {d["tool_call_id"] for d in state.get("decisions") or []}
        return [
            call for call in message.tool_calls
            if call["id"] not in decided and policy.requires_approval(call["name"], call["args"])
        ]

    async def agent(state: SpecialistState) -> dict[str, Any]:
        steps = steps_this_turn(state)
        if steps >= settings.max_steps:
            raise StepLimitExceeded(role, settings.max_steps)
        context = current_context()
        response = await bound_model.bind(**context.model_kwargs()).ainvoke(
            [prompt, *context.instructions(), *state["messages"]])
        return {"messages": [response], "steps": steps + 1}

    def after_agent(state: SpecialistState) -> str:
        message = last_ai_message(state)
        if message is None or not (message.tool_calls or message.invalid_tool_calls):
            return END
        return "approve" if undecided_sensitive_calls(state) else "tools"

    def approve(state: SpecialistState) -> dict[str, Any]:
        call = undecided_sensitive_calls(state)[0]
        request = ApprovalRequest(
            tool=call["name"], args=call["args"], tool_call_id=call["id"], requested_by=role
        )
        decision = parse_decision(interrupt(request.model_dump()))
        args = decision.args if decision.action == "edit" else call["args"]
        record = Decision(
            key=decision.key or call["id"], tool_call_id=call["id"], tool=call["name"],
            action=decision.action, args=args, by=decision.by,
        )
        if decision.reason:
            record["reason"] = decision.reason
        if decision.approval:
            record["approval"] = decision.approval
        update: dict[str, Any] = {"decisions": [record]}
        if decision.action == "edit":
            message = last_ai_message(state)
            edited = [{**c, "args": args} if c["id"] == call["id"] else c
                      for c in message.tool_calls]
            update["messages"] = [message.model_copy(update={"tool_calls": edited})]
        return update

    def after_approve(state: SpecialistState) -> str:
        return "approve" if undecided_sensitive_calls(state) else "tools"

    async def unapproved(call: dict[str, Any], decisions: dict[str, Decision]) -> str | None:
        """Why a sensitive call may not run (None: it may): it needs an approve or edit
        decision in the state and, with a ``verifier``, one the serving layer recorded."""
        if not policy.requires_approval(call["name"], call["args"]):
            return None
        decision = decisions.get(call["id"])
        if decision is None or decision["action"] not in ("approve", "edit"):
            return "it needs a human approval and none was given"
        if verifier is None:
            return None
        thread_id = get_config()["configurable"]["thread_id"]
        return await verifier.check(thread_id, call, decision)

    async def run_call(call: dict[str, Any], decisions: dict[str, Decision]) -> ToolMessage:
        name, call_id = call["name"], call["id"]
        decision = decisions.get(call_id)
        if decision is not None and decision["action"] == "reject":
            why = f": {decision['reason']}" if decision.get("reason") else ""
            return ToolMessage(f"Rejected by {decision['by']}{why}", tool_call_id=call_id,
                               name=name, status="error")
        refused = await unapproved(call, decisions)
        if refused is not None:
            return ToolMessage(f"Error: {name} was not run: {refused}", tool_call_id=call_id,
                               name=name, status="error")
        tool = tools_by_name.get(name)
        if tool is None:
            known = ", ".join(sorted(tools_by_name))
            return ToolMessage(f"Error: unknown tool {name!r}; available tools: {known}",
                               tool_call_id=call_id, name=name, status="error")
        get_stream_writer()({"type": "progress", "role": role, "tool": name,
                             "text": progress_text(tool, call["args"])})
        with tool_call(name, role, call_id) as traced:
            try:
                if ledger is not None and policy.requires_approval(name, call["args"]):
                    key = effect_key(get_config()["configurable"]["thread_id"], call_id)
                    output = await ledger.run_once(
                        key, lambda: _as_text(tool.ainvoke(call["args"])))
                else:
                    output = await tool.ainvoke(call["args"])
            except Exception as exc:  # the model sees the error and corrects itself
                traced["outcome"] = "error"
                return ToolMessage(tool_error(exc), tool_call_id=call_id, name=name,
                                   status="error")
        content = output if isinstance(output, str) else json.dumps(output, default=str)
        return ToolMessage(content, tool_call_id=call_id, name=name)

    async def run_tools(state: SpecialistState) -> dict[str, Any]:
        message = last_ai_message(state)
        decisions = {d["tool_call_id"]: d for d in state.get("decisions") or []}
        results = await asyncio.gather(*(run_call(c, decisions) for c in message.tool_calls))
        malformed = [
            ToolMessage(
                f"Error: the arguments of {bad.get('name')!r} are not valid JSON for its schema "
                f"({bad.get('error') or 'unparseable'}); call it again with valid JSON arguments.",
                tool_call_id=bad.get("id") or "", name=bad.get("name") or "", status="error",
            )
            for bad in message.invalid_tool_calls
        ]
        return {"messages": [*results, *malformed]}

    graph = StateGraph(SpecialistState, context_schema=RunContext)
    graph.add_node("agent", traced_node(agent, "agent", role))
    graph.add_node("approve", traced_node(approve, "approve", role))
    graph.add_node("tools", traced_node(run_tools, "tools", role))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", after_agent, ["approve", "tools", END])
    graph.add_conditional_edges("approve", after_approve, ["approve", "tools"])
    graph.add_edge("tools", "agent")
    return graph.compile(checkpointer=checkpointer, store=store, name=role)
