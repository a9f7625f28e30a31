"""``LeanRedisSaver``: LangGraph checkpoints in one hash per thread, writes in one hash per
checkpoint, every key under the thread's hash tag."""

from __future__ import annotations

import uuid

import ormsgpack
import zstandard
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.graph import START, StateGraph
from redis.cluster import key_slot

from agents.keys import checkpoints_key
from agents.redis_saver import COMPRESSED, PRIMED, LeanRedisSaver, MessageCachingSerializer
from agents.state import AgentState


def chat_graph(checkpointer, **compile_options):
    async def answer(state: AgentState):
        return {"messages": [AIMessage(f"answer {len(state['messages'])}", name="researcher")],
                "steps": state["steps"] + 1, "context": {"seen": len(state["messages"])}}

    async def review(state: AgentState):
        return {"context": {"reviewed": True}}

    graph = StateGraph(AgentState)
    graph.add_node("answer", answer)
    graph.add_node("review", review)
    graph.add_edge(START, "answer")
    graph.add_edge("answer", "review")
    return graph.compile(checkpointer=checkpointer, **compile_options)


async def two_turns(saver, thread_id: str) -> None:
    graph = chat_graph(saver)
    config = {"configurable": {"thread_id": thread_id}}
    for text in ("hello", "and again"):
        await graph.ainvoke({"messages": [HumanMessage(text, id=text)], "steps": 0}, config)


async def test_a_thread_round_trips_with_its_history_in_its_own_slot(redis_client):
    saver = LeanRedisSaver(redis_client)
    thread_id = f"lean-{uuid.uuid4().hex[:8]}"
    await two_turns(saver, thread_id)

    state = await chat_graph(saver).aget_state({"configurable": {"thread_id": thread_id}})
    assert [m.text for m in state.values["messages"]] == \
        ["hello", "answer 1", "and again", "answer 3"]
    assert state.values["steps"] == 1
    assert state.values["context"] == {"seen": 3, "reviewed": True}
    history = [t async for t in saver.alist({"configurable": {"thread_id": thread_id}})]
    assert len(history) == 8  # input, answer, review; twice; plus each turn's start
    ids = [t.config["configurable"]["checkpoint_id"] for t in history]
    assert ids == sorted(ids, reverse=True)
    assert [t.parent_config["configurable"]["checkpoint_id"] for t in history[:-1]] == ids[1:]
    assert history[-1].parent_config is None
    before = [t async for t in saver.alist({"configurable": {"thread_id": thread_id}},
                                           before=history[2].config, limit=2)]
    assert [t.config for t in before] == [t.config for t in history[3:5]]

    keys = [k.decode() async for k in redis_client.scan_iter(match=f"*{thread_id}*")]
    assert keys == [checkpoints_key(thread_id)]  # everything in one hash, in its slot
    assert key_slot(keys[0].encode()) == key_slot(thread_id.encode())


async def test_pending_writes_and_interrupts_survive_in_the_checkpoint(redis_client):
    saver = LeanRedisSaver(redis_client)
    thread_id = f"pause-{uuid.uuid4().hex[:8]}"
    graph = chat_graph(saver, interrupt_after=["answer"])
    config = {"configurable": {"thread_id": thread_id}}
    await graph.ainvoke({"messages": [HumanMessage("hello")], "steps": 0}, config)
    paused = await chat_graph(LeanRedisSaver(redis_client),  # another process, say
                              interrupt_after=["answer"]).aget_state(config)
    assert paused.next == ("review",)
    assert [m.text for m in paused.values["messages"]] == ["hello", "answer 1"]
    done = await graph.ainvoke(None, config)
    assert done["context"] == {"seen": 1, "reviewed": True}

    # a write of a task that finished before its step's checkpoint is read back in order
    # (glob characters in a sub-thread's id do not confuse the search for its writes)
    latest = await saver.aget_tuple(config)
    await saver.aput_writes(latest.config, [("steps", 7), ("context", {"a": 1})], "task-b")
    await saver.aput_writes(latest.config, [("steps", 5)], "task-a")
    again = await saver.aget_tuple(config)
    assert again.pending_writes == [("task-a", "steps", 5), ("task-b", "steps", 7),
                                    ("task-b", "context", {"a": 1})]


async def test_latest_checkpoint_id_from_the_pointer_matches_the_full_read(redis_client):
    saver = LeanRedisSaver(redis_client)
    thread_id = f"lean:{uuid.uuid4().hex[:8]}#x"  # separators in a thread id are fine
    assert await saver.alatest_checkpoint_id(thread_id) is None
    assert await saver.aget_tuple({"configurable": {"thread_id": thread_id}}) is None
    await two_turns(saver, thread_id)
    latest = await saver.aget_tuple({"configurable": {"thread_id": thread_id}})
    assert await saver.alatest_checkpoint_id(thread_id) == \
        latest.config["configurable"]["checkpoint_id"]
    assert latest.checkpoint["channel_values"]["steps"] == 1


async def test_checkpoints_name_the_run_that_made_them(redis_client):
    saver = LeanRedisSaver(redis_client)
    thread_id = f"runs-{uuid.uuid4().hex[:8]}"
    graph = chat_graph(saver)
    for run_id, text in (("run-1", "hello"), ("run-2", "and again")):
        await graph.ainvoke({"messages": [HumanMessage(text)], "steps": 0},
                            {"configurable": {"thread_id": thread_id},
                             "metadata": {"run_id": run_id, "graph_id": "chat"}})
    state = await graph.aget_state({"configurable": {"thread_id": thread_id}})
    assert state.metadata["run_id"] == "run-2" and state.metadata["graph_id"] == "chat"
    first_run = [t async for t in saver.alist({"configurable": {"thread_id": thread_id}},
                                              filter={"run_id": "run-1"})]
    assert first_run and all(t.metadata["run_id"] == "run-1" for t in first_run)
    assert len(first_run) < len([t async for t in saver.alist(
        {"configurable": {"thread_id": thread_id}})])
    assert {s.run_id for s in await saver.stored(thread_id)} == {"run-1", "run-2"}


async def test_sub_threads_share_the_thread_hash_and_go_with_it(redis_client):
    saver = LeanRedisSaver(redis_client)
    thread_id = f"parent-{uuid.uuid4().hex[:8]}"
    sub = f"{thread_id}/researcher/task1"
    await two_turns(saver, thread_id)
    await two_turns(saver, sub)
    assert {s.thread_id for s in await saver.stored(thread_id, sub_threads=True)} == {sub}
    assert {s.thread_id for s in await saver.stored(thread_id)} == {thread_id}
    sub_state = await saver.aget_tuple({"configurable": {"thread_id": sub}})
    assert sub_state.config["configurable"]["thread_id"] == sub

    await saver.adelete_thread(sub)  # the sub-thread only
    assert await saver.aget_tuple({"configurable": {"thread_id": sub}}) is None
    assert await saver.aget_tuple({"configurable": {"thread_id": thread_id}}) is not None
    assert await saver.delete_all(thread_id) == 1
    assert not [k async for k in redis_client.scan_iter(match=f"*{thread_id}*")]


async def test_within_a_run_a_steps_writes_go_with_the_next_checkpoint(redis_client):
    """Held writes: one HSET per step instead of two, and nothing is lost, including writes
    that no checkpoint followed (an interrupt's, or those held when the run ends)."""
    saver = LeanRedisSaver(redis_client)

    async def hsets() -> int:
        stats = await redis_client.info("commandstats")
        return stats.get("cmdstat_hset", {}).get("calls", 0)

    counts, writes = {}, {}
    for holding in (False, True):
        thread_id = f"held-{holding}-{uuid.uuid4().hex[:8]}"
        config = {"configurable": {"thread_id": thread_id}}
        before = await hsets()
        if holding:
            async with saver.holding_writes():
                await chat_graph(saver).ainvoke(
                    {"messages": [HumanMessage("hello")], "steps": 0}, config)
        else:
            await chat_graph(saver).ainvoke(
                {"messages": [HumanMessage("hello")], "steps": 0}, config)
        counts[holding] = await hsets() - before
        history = [t async for t in saver.alist(config)]
        assert len(history) == 4
        writes[holding] = [sorted(w[1] for w in t.pending_writes) for t in history]
    assert writes[True] == writes[False] and sum(map(len, writes[True])) >= 4  # all there
    assert counts[True] == 4 < counts[False]  # one HSET per checkpoint

    thread_id = f"held-{uuid.uuid4().hex[:8]}*[x]"
    config = {"configurable": {"thread_id": f"{thread_id}/coder/t1"}}
    graph = chat_graph(saver, interrupt_after=["answer"])
    async with saver.holding_writes():
        await graph.ainvoke({"messages": [HumanMessage("hello")], "steps": 0}, config)
        latest = await saver.aget_tuple(config)
        await saver.aput_writes(latest.config, [("steps", 3)], "late-task")
        assert (await saver.aget_tuple(config)).pending_writes == []  # held
    assert (await saver.aget_tuple(config)).pending_writes == [("late-task", "steps", 3)]


async def test_within_a_run_the_latest_checkpoint_is_read_once(redis_client):
    """A run that holds its thread reads a namespace's latest checkpoint id once (here
    before the run, as the executor does) and follows its own saves after; a deletion
    within the run makes it read again."""
    saver = LeanRedisSaver(redis_client)
    thread_id = f"known-{uuid.uuid4().hex[:8]}"
    config = {"configurable": {"thread_id": thread_id}}
    await two_turns(saver, thread_id)

    async def hgets() -> int:
        stats = await redis_client.info("commandstats")
        return stats.get("cmdstat_hget", {}).get("calls", 0)

    latest = await saver.alatest_checkpoint_id(thread_id)
    before = await hgets()
    async with saver.holding_writes(latest={(thread_id, ""): latest}):
        await chat_graph(saver).ainvoke(
            {"messages": [HumanMessage("third", id="third")], "steps": 0}, config)
        assert await hgets() - before == 1  # the latest checkpoint itself, not its id
        inside = await saver.alatest_checkpoint_id(thread_id)
        assert await hgets() - before == 1
    assert inside == await saver.alatest_checkpoint_id(thread_id) != latest
    state = (await saver.aget_tuple(config)).checkpoint["channel_values"]
    assert [m.content for m in state["messages"]] == [
        "hello", "answer 1", "and again", "answer 3", "third", "answer 5"]

    async with saver.holding_writes(latest={(thread_id, ""): inside}):
        await saver.point_latest(thread_id, "", None)
        assert await saver.alatest_checkpoint_id(thread_id) is None  # read again


async def test_a_checkpoint_read_before_the_run_serves_its_first_read_only(redis_client):
    """The executor reads the run's starting checkpoint with the run's start (one round
    trip); the graph's first read of it comes from that, a later one from Redis (and sees
    the writes made since). A deletion within the run drops what was read before."""
    saver = LeanRedisSaver(redis_client)
    thread_id = f"read-{uuid.uuid4().hex[:8]}"
    config = {"configurable": {"thread_id": thread_id}}
    await two_turns(saver, thread_id)
    latest = await saver.alatest_checkpoint_id(thread_id)
    async with redis_client.pipeline(transaction=False) as pipe:
        saver.checkpoint_in(pipe, thread_id, latest)
        read = await pipe.execute()
    expected = (await saver.aget_tuple(config)).checkpoint

    async def hgets() -> int:
        stats = await redis_client.info("commandstats")
        return stats.get("cmdstat_hget", {}).get("calls", 0)

    before = await hgets()
    async with saver.holding_writes(latest={(thread_id, ""): latest},
                                    read={(thread_id, "", latest): read}):
        first = await saver.aget_tuple(config)
        assert await hgets() == before
        assert first.checkpoint["id"] == latest
        assert first.checkpoint["channel_values"] == expected["channel_values"]
        await saver.aget_tuple(config)
        assert await hgets() == before + 1
    async with saver.holding_writes(latest={(thread_id, ""): latest},
                                    read={(thread_id, "", latest): read}):
        await saver.point_latest(thread_id, "", latest)  # re-pointed: read again
        await saver.aget_tuple(config)
        assert await hgets() == before + 3  # the latest pointer, then the checkpoint


async def test_large_values_are_stored_compressed_and_plain_ones_still_read(redis_client):
    """A long message is stored once, zstd-compressed with the primed dictionary (its type
    says so), and reads back whole; values stored plain or compressed without the
    dictionary (``+zstd``, as before) still read."""
    long_text = "Redis persistence: AOF with fsync every second. " * 40
    plain, compressing = LeanRedisSaver(redis_client), LeanRedisSaver(redis_client)
    plain.serde = MessageCachingSerializer()
    for writer, thread_id in ((plain, f"plain-{uuid.uuid4().hex[:8]}"),
                              (compressing, f"zstd-{uuid.uuid4().hex[:8]}")):
        config = {"configurable": {"thread_id": thread_id}}
        await chat_graph(writer).ainvoke(
            {"messages": [HumanMessage(long_text, id="long")], "steps": 0}, config)
        stored = await redis_client.hgetall(checkpoints_key(thread_id))
        messages = [ormsgpack.unpackb(v) for k, v in stored.items() if k.startswith(b"~")]
        assert len(messages) == 2  # the question and the answer, once each
        question = max(messages, key=lambda m: len(
            compressing.serde.loads_typed(tuple(m)).content))
        assert question[0].endswith(PRIMED) == (writer is compressing)
        assert len(question[1]) < len(long_text) or writer is plain
        state = (await compressing.aget_tuple(config)).checkpoint["channel_values"]
        assert state["messages"][0].content == long_text
    legacy = ("json" + COMPRESSED,
              zstandard.ZstdCompressor().compress(b'{"a":"' + b"x" * 600 + b'"}'))
    assert compressing.serde.loads_typed(legacy) == {"a": "x" * 600}


async def test_checkpoint_ttl_expires_the_thread_hash_after_its_last_write(redis_client):
    thread_id = f"ttl-{uuid.uuid4().hex[:8]}"
    await two_turns(LeanRedisSaver(redis_client, ttl_minutes=1), thread_id)
    assert 0 < await redis_client.ttl(checkpoints_key(thread_id)) <= 60
    await two_turns(LeanRedisSaver(redis_client), f"{thread_id}-kept")
    assert await redis_client.ttl(checkpoints_key(f"{thread_id}-kept")) == -1


async def test_langgraphs_own_conformance_suite_passes(redis_client):
    """LangGraph's conformance tests of a ``BaseCheckpointSaver`` (put, writes, get, list,
    delete), run on ours: a drop-in saver."""
    @checkpointer_test(name="LeanRedisSaver")
    async def lean():
        yield LeanRedisSaver(redis_client)

    report = await validate(lean)
    failures = {name: result.failures for name, result in report.results.items()
                if result.passed is False}
    assert report.passed_all_base(), failures
