"""A checkpoint stores what changed: a message list channel's messages are kept once each in
the thread's hash and each checkpoint names its messages, so every checkpoint can be kept
(history as LangGraph lists it) at a cost linear in turns; on the session's real Redis."""

from __future__ import annotations

import operator
import uuid
from typing import Annotated

import ormsgpack
from langchain_core.messages import AIMessage, HumanMessage, RemoveMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict

from agents import redis_saver
from agents.keys import MESSAGE, checkpoints_key
from agents.redis_saver import CHUNK, LeanRedisSaver, Stored
from agents.settings import Settings
from serve_app.runs.fencing import FENCE, FencedRedisSaver
from serve_app.runs.leases import Leases
from tests.test_checkpoint import chat_graph
from tests.test_fencing import holder
from tests.test_platform_api import sdk_over


class UserState(TypedDict):
    messages: Annotated[list, add_messages]
    items: Annotated[list, operator.add]  # a list of anything else: stored as before
    notes: list  # messages and other values mixed: stored as before


def user_graph(checkpointer):
    async def reply(state: UserState):
        return {"messages": [AIMessage(f"reply {len(state['messages'])}")],
                "items": [len(state["items"])],
                "notes": [*state.get("notes", []), HumanMessage("noted"), {"n": 1}]}

    graph = StateGraph(UserState)
    graph.add_node("reply", reply)
    graph.add_edge(START, "reply")
    return graph.compile(checkpointer=checkpointer)


def fields(stored: dict[bytes, bytes], prefix: str) -> dict[str, bytes]:
    return {k.decode(): v for k, v in stored.items() if k.decode().startswith(prefix)}


def shape(values: dict) -> dict:
    """A state's values with messages as (type, text): comparable across savers (message
    ids are random)."""
    return {k: [(m.type, m.text) if hasattr(m, "type") else m for m in v]
            if isinstance(v, list) else v for k, v in values.items()}


async def test_each_message_is_stored_once_and_history_matches_langgraphs_own_saver(
        redis_client):
    thread_id = f"deltas-{uuid.uuid4().hex[:8]}"
    config = {"configurable": {"thread_id": thread_id}}
    ours, reference = LeanRedisSaver(redis_client), InMemorySaver()
    for saver in (ours, reference):
        graph = chat_graph(saver)
        for text in ("hello", "and again", "third"):
            await graph.ainvoke({"messages": [HumanMessage(text, id=text)], "steps": 0},
                                config)

    stored = await redis_client.hgetall(checkpoints_key(thread_id))
    assert len(fields(stored, MESSAGE)) == 6  # three questions, three answers: once each
    for name, raw in stored.items():  # no checkpoint holds its messages, it names them
        if not name.startswith((b"~", b"!")) and not name.endswith(b"#latest"):
            checkpoint = Stored.unpack(Stored(thread_id, "", ""), raw)
            assert "messages" not in ours.decode(checkpoint)["channel_values"]
    history = [shape(t.checkpoint["channel_values"]) async for t in ours.alist(config)]
    expected = [shape(t.checkpoint["channel_values"]) async for t in reference.alist(config)]
    assert history == expected and len(history) == 12  # a checkpoint per step, as LangGraph


async def test_a_users_graph_keeps_other_lists_in_the_checkpoint(redis_client):
    saver = LeanRedisSaver(redis_client)
    thread_id = f"user-{uuid.uuid4().hex[:8]}"
    config = {"configurable": {"thread_id": thread_id}}
    graph = user_graph(saver)
    for text in ("one", "two"):
        await graph.ainvoke({"messages": [HumanMessage(text)], "items": ["x"], "notes": []},
                            config)
    state = (await saver.aget_tuple(config)).checkpoint["channel_values"]
    assert [m.text for m in state["messages"]] == ["one", "reply 1", "two", "reply 3"]
    assert state["items"] == ["x", 1, "x", 3]
    assert [getattr(n, "text", n) for n in state["notes"]] == ["noted", {"n": 1}]
    latest = await saver.alatest_checkpoint_id(thread_id)
    (stored,) = await saver.load(thread_id, [Stored(thread_id, "", latest)])
    assert set(stored.lists) == {"messages"}  # items and notes are in the checkpoint


async def test_pruned_checkpoints_and_sub_threads_take_their_unused_messages(redis_client):
    """A message no kept checkpoint names goes with the checkpoints deleted (here: removed
    from the state, then every older checkpoint pruned); a sub-thread deleted takes all of
    its messages."""
    saver = LeanRedisSaver(redis_client)
    thread_id = f"gc-{uuid.uuid4().hex[:8]}"
    sub = f"{thread_id}/researcher/task1"
    config = {"configurable": {"thread_id": thread_id}}
    graph = chat_graph(saver)
    await graph.ainvoke({"messages": [HumanMessage("secret", id="secret")], "steps": 0},
                        config)
    await graph.aupdate_state(config, {"messages": [RemoveMessage(id="secret")]})
    await chat_graph(saver).ainvoke({"messages": [HumanMessage("sub")], "steps": 0},
                                    {"configurable": {"thread_id": sub}})
    key = checkpoints_key(thread_id)

    async def texts(prefix: str) -> list[str]:
        found = fields(await redis_client.hgetall(key), prefix)
        return sorted(saver.serde.loads_typed(tuple(ormsgpack.unpackb(v))).text
                      for v in found.values())

    assert await texts(MESSAGE + "#") == ["answer 1", "secret"]
    latest = await saver.alatest_checkpoint_id(thread_id)
    older = [r for r in await saver.refs(thread_id) if r.checkpoint_id != latest]
    assert await saver.delete(thread_id, older) == len(older) > 0
    assert await texts(MESSAGE + "#") == ["answer 1"]  # "secret" went with its checkpoints
    state = (await saver.aget_tuple(config)).checkpoint["channel_values"]
    assert [m.text for m in state["messages"]] == ["answer 1"]

    assert await texts(MESSAGE + "/") == ["answer 1", "sub"]
    await saver.adelete_thread(sub)
    assert await texts(MESSAGE + "/") == []
    assert await texts(MESSAGE + "#") == ["answer 1"]


async def test_bytes_grow_linearly_with_every_checkpoint_kept(redis_client):
    """Twice the turns, about twice the bytes (a checkpoint holding the whole conversation
    made it ~4x; from 20 turns on, where the hash is past Redis's compact encoding), and a
    turn sends Redis about as much at 40 turns as at 20."""
    saver = LeanRedisSaver(redis_client)
    thread_id = f"linear-{uuid.uuid4().hex[:8]}"
    config = {"configurable": {"thread_id": thread_id}}
    graph = chat_graph(saver)
    sizes, sent = {}, {}
    for n in range(1, 41):
        text = f"What is Redis persistence, and how does the AOF work? ({n})"
        before = (await redis_client.info("stats"))["total_net_input_bytes"]
        await graph.ainvoke({"messages": [HumanMessage(text)], "steps": 0}, config)
        sent[n] = (await redis_client.info("stats"))["total_net_input_bytes"] - before
        if n in (20, 40):
            sizes[n] = await redis_client.memory_usage(checkpoints_key(thread_id), samples=0)
    assert len([t async for t in saver.alist(config)]) == 40 * 4  # every checkpoint kept
    assert sizes[40] <= 2.2 * sizes[20], sizes
    assert sent[40] <= 1.3 * sent[20], sent  # a turn sends what changed, not the history


async def test_history_lists_a_checkpoint_per_step_through_the_api(settings: Settings,
                                                                  in_process_service):
    """Two supervisor turns through the API: ``get_history`` lists every step's checkpoint
    (steps -1 .. the last, one each), as LangGraph does, with the default retention."""
    async with in_process_service(settings, "history") as service:
        sdk = sdk_over(service)
        thread_id = (await sdk.threads.create())["thread_id"]
        for text in ("What is Redis persistence?", "And replication?"):
            await sdk.runs.wait(thread_id, "supervisor", input={
                "messages": [{"role": "user", "content": text}]})
        history = await sdk.threads.get_history(thread_id, limit=1000)
        steps = [h["metadata"]["step"] for h in history]
        assert sorted(steps) == list(range(-1, max(steps) + 1)) and len(steps) >= 6
        assert [m["content"] for m in history[0]["values"]["messages"]][::2] == \
            ["What is Redis persistence?", "And replication?"]
        first = history[-1]["checkpoint"]
        assert (await sdk.threads.get_state(thread_id, checkpoint=first))["values"] == \
            history[-1]["values"]
        await sdk.threads.delete(thread_id)


async def test_a_long_list_is_named_by_its_chunks_and_read_back_by_another_process(
        redis_client):
    """Past ``CHUNK`` messages a checkpoint names a chunk of 32 digests, stored once, and
    the messages after it; a process that never saw the chunk and messages reads them."""
    saver = LeanRedisSaver(redis_client)
    thread_id = f"chunks-{uuid.uuid4().hex[:8]}"
    config = {"configurable": {"thread_id": thread_id}}
    graph = chat_graph(saver)
    for n in range(20):
        await graph.ainvoke({"messages": [HumanMessage(f"q{n}", id=f"q{n}")], "steps": 0},
                            config)
    latest = await saver.alatest_checkpoint_id(thread_id)
    (stored,) = await saver.load(thread_id, [Stored(thread_id, "", latest)])
    chunks, tail = stored.parts()["messages"]
    assert (len(chunks), len(tail)) == (1, 40 - CHUNK)

    async def hmgets() -> int:
        stats = await redis_client.info("commandstats")
        return stats.get("cmdstat_hmget", {}).get("calls", 0)

    before = await hmgets()
    await saver.aget_tuple(config)
    assert await hmgets() == before  # this process stored them: nothing to read
    redis_saver._CHUNKS.clear()  # as in a process that never wrote nor read them
    redis_saver._MESSAGES.clear()
    state = (await saver.aget_tuple(config)).checkpoint["channel_values"]
    assert [m.text for m in state["messages"]][::2] == [f"q{n}" for n in range(20)]
    history = [t async for t in saver.alist(config)]
    assert [len(t.checkpoint["channel_values"].get("messages", [])) for t in history[:4]] \
        == [40, 40, 39, 38]


async def test_a_fenced_write_of_thousands_of_new_messages_is_one_call(redis_client):
    """A checkpoint whose messages are all new (here 5,000 at once) goes, fenced, in one
    Lua call of several ``HSET``s (one would pass Lua's stack); so does their deletion."""
    leases = Leases(redis_client, ttl_s=30)
    saver = FencedRedisSaver(redis_client)
    thread_id = f"many-{uuid.uuid4().hex[:8]}"
    config = {"configurable": {"thread_id": thread_id,
                               FENCE: await holder(leases, thread_id)}}
    many = [HumanMessage(f"line {n}", id=f"m{n}") for n in range(5000)]
    await chat_graph(saver).ainvoke({"messages": many, "steps": 0}, config)
    state = (await saver.aget_tuple(config)).checkpoint["channel_values"]
    assert len(state["messages"]) == 5001 and state["messages"][4999].text == "line 4999"

    refs = await saver.refs(thread_id)  # and all of it deleted, fenced, in one call
    doomed = saver.deletion(thread_id, refs, {(thread_id, "")},
                            await saver.unused_messages(thread_id, refs))
    assert len(doomed) > 1
    await saver._write(config, doomed)
    assert await redis_client.hlen(checkpoints_key(thread_id)) == 0
