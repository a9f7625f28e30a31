"""The state a run streamed is the state reading the thread back gives (no read-back)."""

from __future__ import annotations

from typing import Annotated, TypedDict

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

from agents.streamed_state import StreamedState


class State(TypedDict):
    log: Annotated[list[str], lambda a, b: a + b]


def build():
    def plan(state: State) -> dict:
        return {"log": ["plan"]}

    def approve(state: State) -> dict:
        decision = interrupt({"ask": "refund?"})
        return {"log": [f"approved:{decision}"]}

    def act(state: State) -> dict:
        return {"log": ["act"]}

    graph = StateGraph(State)
    for name, node in (("plan", plan), ("approve", approve), ("act", act)):
        graph.add_node(name, node)
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "approve")
    graph.add_edge("approve", "act")
    graph.add_edge("act", END)
    return graph.compile(checkpointer=InMemorySaver())


async def streamed(graph, graph_input, config, **options) -> StreamedState:
    state = StreamedState()
    async for mode, chunk in graph.astream(graph_input, config,
                                           stream_mode=["values", "updates"], **options):
        state.follow(mode, chunk)
    return state


@pytest.mark.parametrize("steps", [
    [({"log": []}, {})],  # stops at the interrupt
    [({"log": []}, {}), (Command(resume="yes"), {})],  # resumed to the end
    [({"log": []}, {"interrupt_before": ["approve"]})],  # a breakpoint before a node
    [({"log": []}, {"interrupt_after": ["plan"]})],  # a breakpoint after a node
    [({"log": []}, {}), (Command(resume="yes"), {}), (None, {})],  # nothing left to do
], ids=["interrupt", "resumed", "before", "after", "nothing-to-do"])
async def test_streamed_state_matches_the_read_back(steps):
    graph = build()
    config = {"configurable": {"thread_id": "t"}}
    for graph_input, options in steps:
        state = await streamed(graph, graph_input, config, **options)
    stored = await graph.aget_state(config)
    assert state.values == stored.values
    assert [(i.id, i.value) for i in state.interrupts] == \
        [(i.id, i.value) for i in stored.interrupts]
    assert bool(state.next) == bool(stored.next)
