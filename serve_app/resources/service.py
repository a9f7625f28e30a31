"""What the HTTP API does, independent of FastAPI: the shared context (``ServiceContext``)
and one service per resource over it, composed for one replica."""

from __future__ import annotations

from agents.system import AgentSystem
from serve_app.resources.assistants import AssistantsService
from serve_app.resources.run_streams import RunStreams
from serve_app.resources.runs import RunsService
from serve_app.resources.service_context import ServiceContext
from serve_app.resources.threads import ThreadsService


class AgentService(ServiceContext):
    """The context plus its resource services: ``assistants``, ``threads``, ``runs``,
    ``streams`` (a run's events)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.streams = RunStreams(self)
        self.assistants = AssistantsService(self)
        self.threads = ThreadsService(self, self.streams)
        self.runs = RunsService(self, self.assistants, self.threads, self.streams)

    @classmethod
    def in_process(cls, system: AgentSystem, replica_id: str) -> AgentService:
        """The service over one process's graphs, specialists in-process, no Ray: the
        benchmark's floor and the service's tests. Its runs go to a pool of its own."""
        runtime = system.runtime
        graphs = {"supervisor": system.supervisor, **system.specialists}
        return cls(runtime.redis, graphs, runtime.settings.api, replica_id, runtime.checkpointer,
                   pool=f"in-process:{replica_id}", retention=runtime.settings.retention)
