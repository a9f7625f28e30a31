"""Our ``agents/`` graphs for ``langgraph dev`` (the LangGraph Platform peer of the benchmark).

The supervisor is compiled without a checkpointer: the peer's runtime supplies its own. The
specialists run in-process (the worker seam's ``SpecialistWorker``) on our Redis
checkpointer, as they do in our cluster, because the supervisor reads their threads' state.
A factory, not a module-level graph, because the Redis saver must be set up inside the
server's event loop; it is built once and cached.
"""

from __future__ import annotations

import asyncio

from langgraph.graph.state import CompiledStateGraph

from agents.settings import Settings
from agents.supervisor import build_supervisor
from agents.system import Runtime

_graph: CompiledStateGraph | None = None
_lock = asyncio.Lock()


async def make_supervisor() -> CompiledStateGraph:
    """The supervisor graph over in-process specialists (REDIS_URL and OPENAI_BASE_URL)."""
    global _graph
    async with _lock:
        if _graph is None:
            runtime = await Runtime.create(Settings())
            worker = runtime.worker(runtime.settings.roles)
            _graph = build_supervisor(runtime.model, dict.fromkeys(worker.graphs, worker),
                                      runtime.settings.roles,
                                      runtime.settings.supervisor_max_steps)
    return _graph
