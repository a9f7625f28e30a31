"""The built-in graphs as a LangGraph project's factories: ``configs/langgraph.json`` names
them, and the cluster loads them through ``agents.project`` as it loads anyone's graphs.

A factory builds its graph in the serving context a process sets around the load
(``serving(runtime, workers)``: the replica's ``Runtime``, and the workers the supervisor
calls, Ray handles in the cluster). Outside one (``langgraph dev --config
configs/langgraph.json``, a notebook) it builds a ``Runtime`` of its own from the settings,
once per process, with every specialist in-process.

``supervisor`` is the supervisor; any other attribute that names a specialist role of the
settings (``researcher``, ``coder``, ``reviewer``, or a role added in ``configs/agents.yaml``)
is that role's factory, so a new role needs one line in ``configs/langgraph.json``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from langgraph.graph.state import CompiledStateGraph

from agents.project import Project, ProjectError
from agents.settings import PROJECT_ROOT, Settings, get_settings, specialist_roles
from agents.system import Runtime
from agents.workers import Worker

PROJECT = PROJECT_ROOT / "configs" / "langgraph.json"


@dataclass(frozen=True)
class Serving:
    runtime: Runtime
    workers: Mapping[str, Worker]


_serving: ContextVar[Serving | None] = ContextVar("agent_cluster_serving", default=None)
_own: Serving | None = None
_own_lock = asyncio.Lock()


@contextmanager
def serving(runtime: Runtime, workers: Mapping[str, Worker]) -> Iterator[None]:
    """The built-in factories called inside build on ``runtime`` and call ``workers``."""
    token = _serving.set(Serving(runtime, workers))
    try:
        yield
    finally:
        _serving.reset(token)


async def current() -> Serving:
    """The serving context, or this process's own (made on first use)."""
    global _own
    found = _serving.get()
    if found is not None:
        return found
    async with _own_lock:
        if _own is None:
            runtime = await Runtime.create(get_settings())
            _own = Serving(runtime, runtime.workers())
    return _own


def check(settings: Settings) -> Project:
    """The built-in project, if it names the supervisor and every specialist role of
    ``settings`` and nothing else (else ProjectError saying which line to add or drop)."""
    project = Project.load(PROJECT)
    wanted = {"supervisor", *specialist_roles(settings.roles)}
    missing, extra = sorted(wanted - set(project.graphs)), sorted(set(project.graphs) - wanted)
    if missing or extra:
        raise ProjectError(f"{PROJECT} does not match the settings' roles: add {missing}, "
                           f"drop {extra} (each role '<name>': 'agents.builtin:<name>')")
    return project


async def supervisor() -> CompiledStateGraph:
    """The supervisor, calling the context's workers."""
    context = await current()
    return context.runtime.supervisor(context.workers)


def specialist(role: str) -> Callable[[], Awaitable[CompiledStateGraph]]:
    """The factory of one specialist role."""
    async def build() -> CompiledStateGraph:
        return (await current()).runtime.specialist(role)

    build.__name__ = build.__qualname__ = role
    return build


def __getattr__(name: str) -> Any:
    if name in specialist_roles(get_settings().roles):
        return specialist(name)
    raise AttributeError(f"{__name__} has no {name!r}: not 'supervisor' nor a specialist role "
                         f"of the settings ({specialist_roles(get_settings().roles)})")
