"""The whole system in one process: the entry point for notebooks, tests and the demo.

    system = await AgentSystem.create(redis_url="redis://...", model_url="http://.../v1")
    result = await system.ainvoke("Refund $500 to order 42", thread_id="t1")
    await system.resume("t1", {"action": "approve", "by": "alice"})

The serving layer builds the same pieces (``Runtime``) per replica instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph.state import CompiledStateGraph
from langgraph.pregel import Pregel
from langgraph.store.base import BaseStore
from langgraph.types import Command
from redis.asyncio import Redis

from agents.approval import ApprovalVerifier, parse_decision
from agents.checkpoint import check_redis, close_redis, create_checkpointer, create_redis
from agents.effects import EffectLedger
from agents.memory import create_store
from agents.models import build_chat_model
from agents.settings import Settings, graph_roles, specialist_roles
from agents.specialist import build_specialist
from agents.supervisor import build_supervisor
from agents.tools import build_toolbox, prepare_tools, resolve_tools
from agents.workers import GraphWorker, SpecialistWorker, Worker


@dataclass
class Runtime:
    """What one process needs to run graphs: settings, Redis, checkpointer, long-term
    memory store, model, tools."""

    settings: Settings
    redis: Redis
    checkpointer: BaseCheckpointSaver
    store: BaseStore
    model: BaseChatModel
    toolbox: dict[str, Any]
    # The serving layer's check that a sensitive call's approval was recorded (None in a
    # notebook: whoever calls ``AgentSystem.resume`` is the approver).
    approval_verifier: ApprovalVerifier | None = None

    @classmethod
    async def create(cls, settings: Settings) -> Runtime:
        if settings.redis_url is None:
            raise ValueError("redis_url is not set (start the embedded Redis or set REDIS_URL)")
        redis = create_redis(settings.redis_url, settings.redis)
        await check_redis(redis, settings.redis_url)
        checkpointer = await create_checkpointer(redis, settings.redis)
        await prepare_tools(redis, settings)
        return cls(settings, redis, checkpointer,
                   await create_store(redis, settings.store, settings.model),
                   build_chat_model(settings, redis), build_toolbox(redis, settings))

    def specialist(self, role: str) -> CompiledStateGraph:
        role_settings = self.settings.roles[role]
        tools = resolve_tools(role_settings.tools, self.toolbox)
        return build_specialist(role, self.model, tools, role_settings,
                                self.settings.approval, self.checkpointer,
                                EffectLedger(self.redis), self.approval_verifier, self.store)

    def worker(self, roles: Iterable[str]) -> SpecialistWorker:
        """These roles' specialists, run in this process behind the worker-call seam."""
        return SpecialistWorker({role: self.specialist(role) for role in roles},
                                token_linger_s=self.settings.token_linger_ms / 1000)

    def workers(self, graphs: Mapping[str, Pregel] | None = None) -> dict[str, Worker]:
        """Every role's worker in this process: the specialists', and a ``GraphWorker`` of
        each role that runs one of the project's ``graphs`` (by graph id)."""
        roles, graphs = self.settings.roles, graphs or {}
        specialists = self.worker(specialist_roles(roles))
        linger = self.settings.token_linger_ms / 1000
        return dict.fromkeys(specialists.graphs, specialists) | {
            role: GraphWorker({role: graphs[graph]}, linger)
            for role, graph in graph_roles(roles, graphs).items()}

    def supervisor(self, workers: Mapping[str, Worker]) -> CompiledStateGraph:
        return build_supervisor(self.model, workers, self.settings.roles,
                                self.settings.supervisor_max_steps, self.checkpointer,
                                self.store)

    async def aclose(self) -> None:
        await close_redis(self.redis)


def config_for(thread_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id}}


class AgentSystem:
    """Supervisor plus in-process specialists sharing one Redis: any instance, in any
    process, continues any thread."""

    def __init__(self, runtime: Runtime, graphs: Mapping[str, Pregel] | None = None):
        """``graphs``: a project's graphs by id, which roles may run (``roles.<name>.graph``)."""
        self.runtime = runtime
        workers = runtime.workers(graphs)
        self.specialists = {role: workers[role].graphs[role]
                            for role in specialist_roles(runtime.settings.roles)}
        self.supervisor = runtime.supervisor(workers)

    @classmethod
    async def create(
        cls,
        settings: Settings | None = None,
        *,
        redis_url: str | None = None,
        model_url: str | None = None,
    ) -> AgentSystem:
        settings = settings or Settings()
        update: dict[str, Any] = {}
        if redis_url:
            update["redis_url"] = redis_url
        if model_url:
            update["model"] = settings.model.model_copy(update={"base_url": model_url})
        return cls(await Runtime.create(settings.model_copy(update=update)))

    async def ainvoke(self, message: str, thread_id: str) -> dict[str, Any]:
        """One user turn; the result holds ``__interrupt__`` when an approval is pending."""
        return await self.supervisor.ainvoke(_turn(message), config_for(thread_id))

    async def astream(
        self, message: str, thread_id: str, stream_mode: str | list[str] = "custom"
    ) -> AsyncIterator[Any]:
        """One user turn, streamed; ``custom`` carries specialists' tokens and progress."""
        async for chunk in self.supervisor.astream(
            _turn(message), config_for(thread_id), stream_mode=stream_mode
        ):
            yield chunk

    async def resume(
        self, thread_id: str, decision: Any, interrupt_id: str | None = None
    ) -> dict[str, Any]:
        """Answer a pending approval of ``thread_id`` (approve, reject or edit); name the
        ``interrupt_id`` when parallel workers wait for approval at the same time."""
        checked = parse_decision(decision).model_dump(exclude_none=True)
        resume = {interrupt_id: checked} if interrupt_id else checked
        return await self.supervisor.ainvoke(Command(resume=resume), config_for(thread_id))

    async def pending_approvals(self, thread_id: str) -> list[dict[str, Any]]:
        """Each pending approval's payload, with the ``interrupt_id`` that answers it."""
        state = await self.supervisor.aget_state(config_for(thread_id))
        return [{**item.value, "interrupt_id": item.id} for item in state.interrupts]

    async def messages(self, thread_id: str) -> list[Any]:
        state = await self.supervisor.aget_state(config_for(thread_id))
        return state.values.get("messages", [])

    async def aclose(self) -> None:
        await self.runtime.aclose()

    async def __aenter__(self) -> AgentSystem:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _turn(message: str) -> dict[str, Any]:
    return {"messages": [HumanMessage(message)]}
