"""The built-in graphs are a LangGraph project (``configs/langgraph.json``), loaded by the same
path as a user's: in a replica's serving context, and on their own (``langgraph dev``)."""

from __future__ import annotations

import pytest

from agents import builtin
from agents.project import GraphLoadError, Project, ProjectError
from agents.settings import Settings, get_settings, specialist_roles
from agents.system import Runtime


def test_the_built_in_project_names_the_supervisor_and_every_specialist_role():
    project = builtin.check(get_settings())
    assert set(project.graphs) == {"supervisor", *specialist_roles(get_settings().roles)}


def test_a_role_the_built_in_project_lacks_stops_the_start_naming_it():
    roles = {**get_settings().roles, "auditor": get_settings().roles["reviewer"]}
    with pytest.raises(ProjectError) as refused:
        builtin.check(get_settings().model_copy(update={"roles": roles}))
    assert "add ['auditor'], drop []" in str(refused.value)


async def test_built_ins_load_on_the_replicas_runtime_and_workers(settings: Settings):
    runtime = await Runtime.create(settings)
    try:
        workers = runtime.workers()
        with builtin.serving(runtime, workers):
            graphs = await Project.load(builtin.PROJECT).load_graphs(runtime.checkpointer,
                                                                     runtime.store)
        assert graphs["researcher"].checkpointer is runtime.checkpointer
        assert graphs["researcher"].store is runtime.store
        assert "supervisor" in graphs["supervisor"].nodes
        turn = {"messages": [{"role": "user", "content": "What is Redis persistence?"}]}
        done = await graphs["supervisor"].ainvoke(
            turn, {"configurable": {"thread_id": f"builtin-{id(graphs)}"}})
        assert done["messages"][-1].type == "ai" and done["messages"][-1].content
    finally:
        await runtime.aclose()


async def test_outside_a_replica_the_built_ins_make_a_runtime_of_their_own(settings, monkeypatch):
    """As ``langgraph dev --config configs/langgraph.json`` loads them: the settings from
    the environment, specialists in-process."""
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("OPENAI_BASE_URL", settings.model.base_url)
    monkeypatch.setattr(builtin, "_own", None)
    get_settings.cache_clear()
    try:
        supervisor = await Project.load(builtin.PROJECT).load_graph("supervisor")
        assert builtin._own is not None
        assert set(builtin._own.workers) == set(specialist_roles(get_settings().roles))
        assert "supervisor" in supervisor.nodes
        await builtin._own.runtime.aclose()
    finally:
        get_settings.cache_clear()


async def test_a_name_that_is_no_role_stops_the_load_naming_it(tmp_path):
    path = tmp_path / "langgraph.json"
    path.write_text('{"graphs": {"ghost": "agents.builtin:ghost"}}')
    with pytest.raises(GraphLoadError) as refused:
        await Project.load(path).load_graph("ghost")
    assert str(refused.value) == "graph 'ghost': agents.builtin:ghost: no such attribute"
