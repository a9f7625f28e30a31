"""Assistants: the graphs' default assistants, their drawings and schemas."""

from __future__ import annotations

import uuid
from typing import Any

from serve_app.api_errors import ApiError
from serve_app.service_context import ServiceContext

ASSISTANT_NAMESPACE = uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")
DEFAULT_GRAPH = "supervisor"


def assistant_id(graph_id: str) -> str:
    """A graph's default assistant id, as LangGraph Platform derives it."""
    return str(uuid.uuid5(ASSISTANT_NAMESPACE, graph_id))


class AssistantsService:
    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx

    def all(self) -> list[dict[str, Any]]:
        return [{"assistant_id": assistant_id(g), "graph_id": g, "name": g, "config": {},
                 "context": {}, "metadata": {"created_by": "system"}, "version": 1,
                 "created_at": "2026-01-01T00:00:00+00:00",
                 "updated_at": "2026-01-01T00:00:00+00:00", "description": None}
                for g in self.ctx.graphs]

    def graph_id(self, assistant: str) -> str:
        """A graph name or its default assistant's id."""
        if assistant in self.ctx.graphs:
            return assistant
        for graph in self.ctx.graphs:
            if assistant_id(graph) == assistant:
                return graph
        raise ApiError(404, f"assistant {assistant!r} not found")

    def get(self, assistant: str) -> dict[str, Any]:
        try:
            uuid.UUID(assistant)
        except ValueError:
            raise ApiError(422, f"assistant id must be a UUID, got {assistant!r}") from None
        graph = self.graph_id(assistant)
        return next(a for a in self.all() if a["graph_id"] == graph)

    def graph_drawing(self, assistant: str, xray: bool | int) -> dict[str, Any]:
        """Nodes and edges of an assistant's graph, as LangGraph draws it."""
        return self.ctx.graphs[self.graph_id(assistant)].get_graph(xray=xray).to_json()

    def schemas(self, assistant: str) -> dict[str, Any]:
        graph_id = self.graph_id(assistant)
        graph = self.ctx.graphs[graph_id]
        state = graph.get_output_jsonschema()  # no output schema of its own: the state's
        return {"graph_id": graph_id, "input_schema": graph.get_input_jsonschema(),
                "output_schema": state, "state_schema": state,
                "config_schema": None, "context_schema": graph.get_context_jsonschema()}
