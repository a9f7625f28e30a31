"""The stub model: its reply policy as pure functions, and its OpenAI wire format over real HTTP
through ``ChatOpenAI`` and the ``openai`` client (streaming, tool calls, usage, faults)."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import statistics
import subprocess
import sys
import time
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.utils.json import parse_partial_json
from langchain_openai import ChatOpenAI, OpenAIEmbeddings

from agents.local.stub_model import policy
from agents.local.stub_model.policy import (
    PARSER_TESTS,
    PARSER_V1,
    PARSER_V2,
    Reply,
    argument_parts,
    content_tokens,
    decide,
)

RESEARCH_AND_CODE = (
    "Research how Redis persistence works and write a Python function that parses a "
    "redis.conf line"
)


def tool_schema(name: str, **params: str) -> dict[str, Any]:
    """An OpenAI tool schema, as ``bind_tools`` sends it."""
    return {"type": "function", "function": {
        "name": name, "description": name,
        "parameters": {"type": "object", "properties": {p: {"type": t} for p, t in params.items()},
                       "required": list(params)},
    }}


ROUTE = [tool_schema("route", next="array")]
RESEARCHER = [tool_schema("search_corpus", query="string"), tool_schema("read_document",
                                                                        doc_id="string")]
CODER = [tool_schema("run_python", code="string"),
         tool_schema("issue_refund", amount="number", order_id="string", reason="string"),
         tool_schema("delete_records", customer_id="string", reason="string")]
REVIEWER = [tool_schema("review_code", code="string")]


# --------------------------------------------------------------------------- policy helpers


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def worker(name: str, text: str) -> dict[str, Any]:
    return {"role": "assistant", "name": name, "content": text}


def called(reply: Reply) -> tuple[str, dict[str, Any]]:
    """The single tool call of a reply, with parsed arguments."""
    assert reply.content is None and len(reply.tool_calls) == 1, reply
    return reply.tool_calls[0].name, json.loads(reply.tool_calls[0].arguments)


def answer_tool(messages: list[dict[str, Any]], reply: Reply, result: Any) -> list[dict]:
    """The conversation after the agent ran the reply's tool call and got ``result``."""
    [call] = reply.tool_calls
    content = result if isinstance(result, str) else json.dumps(result)
    return [*messages,
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call.id, "type": "function",
                 "function": {"name": call.name, "arguments": call.arguments}}]},
            {"role": "tool", "tool_call_id": call.id, "content": content}]


def routed(reply: Reply) -> list[tuple[str, str]]:
    name, args = called(reply)
    assert name == "route"
    return [(step["worker"], step["task"]) for step in args["next"]]


# --------------------------------------------------------------------------- policy: roles


@pytest.mark.parametrize(("tools", "role"), [
    (ROUTE + RESEARCHER, "supervisor"),
    ([tool_schema("Route", next="array")], "supervisor"),
    (RESEARCHER, "researcher"),
    (CODER, "coder"),
    ([tool_schema("issue_refund", amount="number")], "coder"),
    (REVIEWER, "reviewer"),
    ([], "plain"),
])
def test_role_is_read_from_the_offered_tools(tools, role):
    assert policy.detect_role(policy.tool_names(tools)) == role


def test_plain_requests_get_a_greeting_with_the_last_user_text():
    reply = decide([{"role": "system", "content": "be nice"}, user("first"), user("hi there")])
    assert reply == Reply(content="Hello from the stub model. You said: hi there")
    assert reply.finish_reason == "stop"


# --------------------------------------------------------------------------- policy: supervisor


def test_supervisor_fans_out_research_and_code_then_review_then_answers():
    messages = [{"role": "system", "content": "supervise"}, user(RESEARCH_AND_CODE)]
    assert routed(decide(messages, ROUTE)) == [
        ("researcher", f"Research: {RESEARCH_AND_CODE}"),
        ("coder", f"Write the code: {RESEARCH_AND_CODE}"),
    ]
    messages += [
        worker("researcher", "Redis saves data with RDB and AOF. (source: redis-persistence)"),
        worker("coder", "Here is the function:\n```python\ndef f():\n    return 1\n```\nOk."),
    ]
    assert routed(decide(messages, ROUTE)) == [
        ("reviewer", "Review this code:\n```python\ndef f():\n    return 1\n```")
    ]
    messages.append(worker("reviewer", "Verdict: approve. Fine.\n```python\ndef f():\n"
                                       "    return 1\n```"))
    final = decide(messages, ROUTE)
    assert not final.tool_calls and final.finish_reason == "stop"
    assert "Source: redis-persistence" in final.content
    assert "approve" in final.content
    assert "```python\ndef f():\n    return 1\n```" in final.content


def test_supervisor_sends_back_office_work_to_the_coder_once():
    for task in ("Refund $500 to order 42", "Delete all records of customer 7"):
        assert routed(decide([user(task)], ROUTE)) == [("coder", task)]
        done = decide([user(task), worker("coder", "Done.")], ROUTE)
        assert routed(done) == [("FINISH", "")]


def test_supervisor_default_is_research_then_finish_and_loop_never_finishes():
    assert routed(decide([user("Tell me about redis streams")], ROUTE)) == [
        ("researcher", "Tell me about redis streams")]
    assert routed(decide([user("x"), worker("researcher", "y")], ROUTE)) == [("FINISH", "")]
    looping = [user("loop forever"), worker("researcher", "failed")] * 3
    assert routed(decide(looping, ROUTE)) == [("researcher", "loop forever")]


def test_supervisor_remembers_what_was_asked_before():
    first = decide([user("What did I ask before?")], ROUTE)
    assert first.content == "This is the first thing you asked in this thread."
    later = decide([user("My favourite database is Redis"), worker("researcher", "ok"),
                    {"role": "assistant", "name": "supervisor", "content": "noted"},
                    user("What did I ask before?")], ROUTE)
    assert later.content == 'You asked before: "My favourite database is Redis"'


def test_supervisor_keeps_the_offered_tool_spelling():
    reply = decide([user("hello")], [tool_schema("Route", next="array")])
    assert reply.tool_calls[0].name == "Route"


# --------------------------------------------------------------------------- policy: specialists


def test_researcher_searches_reads_the_top_hit_and_cites_it():
    messages = [{"role": "system", "content": "research"},
                user("Research: Research how Redis persistence works and write a parser")]
    reply = decide(messages, RESEARCHER)
    assert called(reply) == ("search_corpus", {"query": "redis persistence"})
    messages = answer_tool(messages, reply, {"query": "redis persistence", "hits": [
        {"doc_id": "redis-persistence", "title": "P", "snippet": "s", "score": 1.0},
        {"doc_id": "redis-streams", "title": "S", "snippet": "s", "score": 0.5}]})
    reply = decide(messages, RESEARCHER)
    assert called(reply) == ("read_document", {"doc_id": "redis-persistence"})
    messages = answer_tool(messages, reply, {
        "doc_id": "redis-persistence", "title": "Persistence",
        "text": "# Persistence\n\nRedis has RDB snapshots. It also has an AOF log! Third."})
    assert decide(messages, RESEARCHER).content == (
        "Redis has RDB snapshots. It also has an AOF log! (source: redis-persistence)")


def test_researcher_reports_an_empty_search():
    messages = [user("Tell me about unicorns")]
    reply = decide(messages, RESEARCHER)
    messages = answer_tool(messages, reply, {"query": "unicorns", "hits": []})
    assert decide(messages, RESEARCHER).content == "I found nothing in the corpus about unicorns."


def test_researcher_recovers_from_a_wrong_document_id():
    messages = [user("Read the document no-such-doc")]
    reply = decide(messages, RESEARCHER)
    assert called(reply) == ("read_document", {"doc_id": "no-such-doc"})
    messages = answer_tool(messages, reply, "Error: ValueError: no document 'no-such-doc'")
    reply = decide(messages, RESEARCHER)
    assert called(reply) == ("search_corpus", {"query": "no such doc"})
    messages = answer_tool(messages, reply, {"query": "no such doc", "hits": [
        {"doc_id": "redis-streams", "title": "S", "snippet": "s", "score": 0.1}]})
    reply = decide(messages, RESEARCHER)
    assert called(reply) == ("read_document", {"doc_id": "redis-streams"})
    messages = answer_tool(messages, reply, {"doc_id": "redis-streams", "title": "S",
                                             "text": "Streams are logs."})
    assert decide(messages, RESEARCHER).content == "Streams are logs. (source: redis-streams)"


@pytest.mark.parametrize(("tools", "tool"), [(RESEARCHER, "search_corpus"),
                                             (CODER, "run_python"), (REVIEWER, "review_code")])
def test_malformed_arguments_defeat_every_json_parser_then_the_loop_goes_on(tools, tool):
    messages = [user("malformed query about redis persistence")]
    reply = decide(messages, tools)
    [call] = reply.tool_calls
    assert call.name == tool
    with pytest.raises(ValueError):
        json.loads(call.arguments)
    with pytest.raises(ValueError):  # LangChain's lenient parser must not "repair" it
        parse_partial_json(call.arguments)
    messages = answer_tool(messages, reply, "Error: the arguments are not valid JSON")
    after = decide(messages, tools)
    if tool == "search_corpus":
        assert called(after) == ("search_corpus", {"query": "redis persistence"})
    elif tool == "run_python":
        assert called(after)[0] == "run_python"
    else:
        assert after.content == "Nothing to review: no code was given."


def test_loop_forever_calls_the_first_tool_with_new_arguments_every_step():
    messages = [user("loop forever")]
    seen = set()
    for step in range(5):
        reply = decide(messages, RESEARCHER)
        name, args = called(reply)
        assert name == "search_corpus" and args == {"query": f"loop {step + 1}"}
        seen.add(reply.tool_calls[0].id)
        messages = answer_tool(messages, reply, {"query": args["query"], "hits": []})
    assert len(seen) == 5


def test_coder_refund_calls_the_tool_then_reports_the_outcome():
    messages = [user("Refund $500 to order 42")]
    reply = decide(messages, CODER)
    assert called(reply) == ("issue_refund", {"amount": 500, "order_id": "42",
                                              "reason": "customer request"})
    done = answer_tool(messages, reply, {"refund_id": "r-1", "amount": 50.0, "order_id": "42",
                                         "status": "refunded"})
    assert decide(done, CODER).content == "Refund issued: $50 to order 42 (refund r-1)."
    rejected = answer_tool(messages, reply, "Rejected by bob: fraud")
    assert decide(rejected, CODER).content == "The refund was not issued. Rejected by bob: fraud"
    assert called(decide([user("refund 12.5 for order #A7")], CODER))[1]["amount"] == 12.5


def test_coder_deletes_records():
    messages = [user("Delete all records of customer 7")]
    reply = decide(messages, CODER)
    assert called(reply) == ("delete_records", {"customer_id": "7",
                                                "reason": "customer request"})
    done = answer_tool(messages, reply, {"customer_id": "7", "deleted": 3})
    assert decide(done, CODER).content == "Deleted 3 records of customer 7."
    failed = answer_tool(messages, reply, "Rejected by ann")
    assert decide(failed, CODER).content == "Nothing was deleted. Rejected by ann"


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30)


def test_parser_first_version_really_fails_and_the_fix_really_passes():
    first = run_python(PARSER_V1 + PARSER_TESTS)
    assert first.returncode != 0 and "AssertionError" in first.stderr
    fixed = run_python(PARSER_V2 + PARSER_TESTS)
    assert fixed.returncode == 0 and fixed.stdout.strip() == "all tests passed"


def test_coder_writes_runs_fixes_and_answers_with_the_function():
    messages = [user(f"Write the code: {RESEARCH_AND_CODE}")]
    reply = decide(messages, CODER)
    name, args = called(reply)
    assert name == "run_python" and args["code"] == PARSER_V1 + PARSER_TESTS
    messages = answer_tool(messages, reply, {"exit_code": 1, "stdout": "",
                                             "stderr": "AssertionError", "timed_out": False})
    reply = decide(messages, CODER)
    assert called(reply) == ("run_python", {"code": PARSER_V2 + PARSER_TESTS})
    messages = answer_tool(messages, reply, {"exit_code": 0, "stdout": "all tests passed\n",
                                             "stderr": "", "timed_out": False})
    answer = decide(messages, CODER).content
    assert answer == f"Here is the function:\n```python\n{PARSER_V2.strip()}\n```\nIts tests pass."
    assert "assert" not in answer


def test_coder_saves_a_file_with_persist_and_prints_other_tasks():
    name, args = called(decide([user("Save a note to a file")], CODER))
    assert name == "run_python" and args["persist"] is True and "notes.txt" in args["code"]
    messages = [user("say hi")]
    reply = decide(messages, CODER)
    assert called(reply) == ("run_python", {"code": "print('say hi')"})
    messages = answer_tool(messages, reply, {"exit_code": 0, "stdout": "say hi\n", "stderr": ""})
    assert decide(messages, CODER).content == "The code printed: say hi"


def test_reviewer_reviews_the_code_block_and_reports_the_verdict():
    assert decide([user("Review this")], REVIEWER).content == (
        "Nothing to review: no code was given.")
    messages = [user("Review this code:\n```python\nx = 1\n```")]
    reply = decide(messages, REVIEWER)
    assert called(reply) == ("review_code", {"code": "x = 1"})
    messages = answer_tool(messages, reply, {"verdict": "approve", "reasons": ["compiles",
                                                                              "ruff clean"]})
    assert decide(messages, REVIEWER).content == (
        "Verdict: approve. compiles ruff clean\n```python\nx = 1\n```")


MEMORY = [tool_schema("upsert_memory", content="string", context="string")]


def test_memory_agent_upserts_what_to_remember_and_answers_from_the_best_memory():
    messages = [user("Remember that I like tea.")]
    reply = decide(messages, MEMORY)
    assert called(reply) == ("upsert_memory", {"content": "I like tea",
                                               "context": "Remember that I like tea."})
    assert decide(answer_tool(messages, reply, "Stored memory 1"), MEMORY).content == (
        "Noted: I like tea.")
    prompt = {"role": "system", "content": "Hi\n<memories>\n[a]: I like tea (0.9)\n"
                                           "[b]: I have a dog (0.1)\n</memories>"}
    assert decide([prompt, user("What do I drink?")], MEMORY).content == (
        "From what I remember: [a]: I like tea (0.9)")
    empty = {"role": "system", "content": "<memories>\n\n</memories>"}
    assert decide([empty, user("What do I drink?")], MEMORY).content == (
        "I do not know anything about you yet.")


def test_same_request_same_reply_and_ids_look_like_openai():
    messages = [user(RESEARCH_AND_CODE)]
    first, again = decide(messages, ROUTE), decide(messages, ROUTE)
    assert first == again
    assert re.fullmatch(r"call_[0-9a-f]{12}", first.tool_calls[0].id)
    other = decide([*messages, worker("researcher", "a"), worker("coder", "b")], ROUTE)
    assert other.tool_calls[0].id != first.tool_calls[0].id


def test_tokens_and_argument_parts_rebuild_the_reply_exactly():
    text = "Hello there,\nworld  of tokens. "
    tokens = content_tokens(text)
    assert "".join(tokens) == text and tokens[:2] == ["Hello ", "there,\n"]
    for arguments in ("{}", '{"query": "redis"}', json.dumps({"code": PARSER_V2})):
        parts = argument_parts(arguments)
        assert "".join(parts) == arguments and 1 <= len(parts) <= 3
    assert len(argument_parts(json.dumps({"code": PARSER_V2}))) == 3


# --------------------------------------------------------------------------- HTTP


def model(stub_url: str, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(base_url=stub_url, api_key="x", model="stub-model", streaming=True,
                      stream_usage=True, max_retries=0, timeout=10, **kwargs)


def root(stub_url: str) -> str:
    return stub_url.removesuffix("/v1")


async def test_models_and_health(stub_url):
    async with httpx.AsyncClient(timeout=5) as client:
        listed = (await client.get(f"{stub_url}/models")).json()
        health = (await client.get(f"{root(stub_url)}/healthz")).json()
    assert listed == {"object": "list", "data": [
        {"id": "stub-model", "object": "model", "owned_by": "agent-cluster"}]}
    assert health == {"ok": True}


async def test_supervisor_routes_in_parallel_then_finishes_over_http(stub_url):
    router = model(stub_url).bind_tools(ROUTE)
    first = await router.ainvoke([SystemMessage("supervise"), HumanMessage(RESEARCH_AND_CODE)])
    [route_call] = first.tool_calls
    assert route_call["name"] == "route" and re.fullmatch(r"call_[0-9a-f]{12}", route_call["id"])
    assert [s["worker"] for s in route_call["args"]["next"]] == ["researcher", "coder"]
    # Worker answers travel as named assistant messages: the name must reach the stub.
    done = await router.ainvoke([HumanMessage("Tell me about redis streams"),
                                 AIMessage("Streams are logs.", name="researcher")])
    assert done.tool_calls[0]["args"] == {"next": [{"worker": "FINISH", "task": ""}]}


async def test_researcher_search_read_answer_over_http(stub_url):
    researcher = model(stub_url).bind_tools(RESEARCHER)
    messages: list[Any] = [HumanMessage("Tell me about redis streams")]
    search = await researcher.ainvoke(messages)
    assert search.tool_calls[0]["name"] == "search_corpus"
    assert search.tool_calls[0]["args"] == {"query": "redis streams"}
    hits = {"query": "redis streams", "hits": [
        {"doc_id": "redis-streams", "title": "Streams", "snippet": "s", "score": 1.0}]}
    messages += [search, ToolMessage(json.dumps(hits), tool_call_id=search.tool_calls[0]["id"])]
    read = await researcher.ainvoke(messages)
    assert read.tool_calls[0]["name"] == "read_document"
    assert read.tool_calls[0]["args"] == {"doc_id": "redis-streams"}
    document = {"doc_id": "redis-streams", "title": "Streams",
                "text": "Streams are append-only logs. Consumer groups share them. More."}
    messages += [read, ToolMessage(json.dumps(document), tool_call_id=read.tool_calls[0]["id"])]
    answer = await researcher.ainvoke(messages)
    assert not answer.tool_calls
    assert answer.text == (
        "Streams are append-only logs. Consumer groups share them. (source: redis-streams)")


async def test_coder_refund_call_arguments_over_http(stub_url):
    out = await model(stub_url).bind_tools(CODER).ainvoke([HumanMessage("Refund $500 to order 42")])
    [call] = out.tool_calls
    assert call["name"] == "issue_refund"
    assert call["args"] == {"amount": 500, "order_id": "42", "reason": "customer request"}
    assert out.response_metadata["finish_reason"] == "tool_calls"


async def test_malformed_arguments_arrive_as_invalid_tool_calls(stub_url):
    out = await model(stub_url).bind_tools(RESEARCHER).ainvoke(
        [HumanMessage("malformed query about redis persistence")])
    assert not out.tool_calls
    [bad] = out.invalid_tool_calls
    assert bad["name"] == "search_corpus" and bad["id"].startswith("call_")


async def test_streaming_sends_a_chunk_per_word_and_usage(stub_url):
    chunks = [c async for c in model(stub_url).astream([HumanMessage("one two three four")])]
    texts = [c.text for c in chunks if c.text]
    expected = "Hello from the stub model. You said: one two three four"
    assert "".join(texts) == expected and len(texts) == len(expected.split())
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.usage_metadata["output_tokens"] == len(texts)
    assert merged.usage_metadata["input_tokens"] == 4
    assert merged.usage_metadata["total_tokens"] == 4 + len(texts)


async def sse_events(stub_url: str, body: dict[str, Any]) -> list[Any]:
    async with httpx.AsyncClient(timeout=10) as client, client.stream(
        "POST", f"{stub_url}/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in response.aiter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    return [line[6:] if line == "data: [DONE]" else json.loads(line[6:]) for line in lines]


async def test_sse_wire_format_of_a_streamed_tool_call(stub_url):
    events = await sse_events(stub_url, {
        "model": "stub-model", "messages": [user("Refund $500 to order 42")], "tools": CODER,
        "stream": True, "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["object"] == "chat.completion.chunk"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] > 0
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks[:-2]
             if "tool_calls" in c["choices"][0]["delta"]]
    assert calls[0]["id"].startswith("call_") and calls[0]["function"]["name"] == "issue_refund"
    assert 2 <= len(calls) <= 4 and all(c["index"] == 0 for c in calls)
    arguments = "".join(c["function"]["arguments"] for c in calls)
    assert json.loads(arguments)["order_id"] == "42"


async def test_non_streamed_completion_and_bad_requests(stub_url):
    async with httpx.AsyncClient(base_url=stub_url, timeout=10) as client:
        ok = await client.post("/chat/completions", json={
            "model": "stub-model", "messages": [user("Refund $500 to order 42")],
            "tools": CODER})
        bad_json = await client.post("/chat/completions", content=b"{not json",
                                     headers={"content-type": "application/json"})
        no_messages = await client.post("/chat/completions", json={"model": "m",
                                                                   "messages": []})
    body = ok.json()
    choice = body["choices"][0]
    assert body["object"] == "chat.completion" and choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "issue_refund"
    assert body["usage"]["total_tokens"] == (
        body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"])
    assert float(ok.headers["x-stub-model-ms"]) >= 0
    for bad in (bad_json, no_messages):
        assert bad.status_code == 400
        assert bad.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(("status", "error"), [(429, openai.RateLimitError),
                                               (500, openai.InternalServerError)])
async def test_injected_faults_raise_openai_errors(stub_url, stub_admin, status, error):
    before = stub_admin.get("/stats").json()["faults"]
    stub_admin.post("/config", json={"fault_rate": 1.0, "fault_status": status})
    with pytest.raises(error) as info:
        await model(stub_url).ainvoke([HumanMessage("hi")])
    assert info.value.status_code == status
    if status == 429:
        assert info.value.response.headers["retry-after"] == "0"
    assert stub_admin.get("/stats").json()["faults"] == before + 1


async def test_fault_sequence_is_repeatable(stub_url, stub_admin):
    async def pattern() -> list[int]:
        stub_admin.post("/config", json={"fault_rate": 0.5, "fault_status": 503, "seed": 7})
        async with httpx.AsyncClient(timeout=10) as client:
            return [(await client.post(f"{stub_url}/chat/completions",
                                       json={"messages": [user("hi")]})).status_code
                    for _ in range(12)]

    first = await pattern()
    assert set(first) == {200, 503}
    assert await pattern() == first


async def test_admin_config_validates_and_updates(stub_admin):
    assert stub_admin.post("/config", json={"fault_rate": 2}).status_code == 400
    assert stub_admin.post("/config", json={"fault_status": 404}).status_code == 400
    updated = stub_admin.post("/config", json={"ttft_ms": 5, "tokens_per_s": 1000}).json()
    assert updated["ttft_ms"] == 5 and updated["tokens_per_s"] == 1000
    assert stub_admin.get("/config").json() == updated


async def test_latency_applies_and_stats_show_overlapping_calls(stub_url, stub_admin):
    stub_admin.post("/config", json={"ttft_ms": 400})
    stub_admin.post("/reset")
    started = time.monotonic()
    await asyncio.gather(
        model(stub_url).bind_tools(RESEARCHER).ainvoke([HumanMessage("redis streams")]),
        model(stub_url).bind_tools(CODER).ainvoke([HumanMessage("say hi")]),
    )
    elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 2.0  # each waited its time to first token (at once: below)
    stats = stub_admin.get("/stats").json()
    assert stats["requests"] == 2 and stats["by_role"] == {"researcher": 1, "coder": 1}
    research, code = sorted(stats["calls"], key=lambda c: c["role"], reverse=True)
    assert (research["role"], code["role"]) == ("researcher", "coder")
    assert research["started"] < code["finished"] and code["started"] < research["finished"]


async def test_tokens_are_flushed_one_by_one_at_the_configured_pace(stub_url, stub_admin):
    stub_admin.post("/config", json={"tokens_per_s": 40})
    arrivals = []
    async for chunk in model(stub_url).astream([HumanMessage("a b c")]):
        if chunk.text:
            arrivals.append(time.monotonic())
    assert len(arrivals) == 10  # "Hello from the stub model. You said: a b c"
    assert arrivals[-1] - arrivals[0] >= 9 / 40 * 0.9
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert statistics.median(gaps) > 0.01  # really separate flushes, not one buffered burst


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


async def test_embeddings_are_deterministic_unit_vectors_near_when_words_are_shared(stub_url):
    embeddings = OpenAIEmbeddings(model="text-embedding-3-small", dimensions=256,
                                  base_url=stub_url, api_key="x", max_retries=0,
                                  check_embedding_ctx_length=False)
    coffee, drink, dog = await embeddings.aembed_documents([
        "User likes coffee in the morning", "Which coffee do I drink in the mornings?",
        "My dog is named Rex"])
    again = await embeddings.aembed_query("User likes coffee in the morning")
    assert len(coffee) == 256 and again == coffee
    assert abs(cosine(coffee, coffee) - 1) < 1e-6
    assert cosine(coffee, drink) > 0.5 > abs(cosine(coffee, dog))


async def test_embeddings_wire_format_base64_tokens_and_bad_requests(stub_url):
    client = openai.AsyncOpenAI(base_url=stub_url, api_key="x", max_retries=0)
    as_base64 = await client.embeddings.create(model="m", input=["a red fox", "red"],
                                               dimensions=8)  # the client asks for base64
    as_floats = await client.embeddings.create(model="m", input=["a red fox", "red"],
                                               dimensions=8, encoding_format="float")
    tokens = await client.embeddings.create(model="m", input=[[1, 2, 3]])
    assert [d.index for d in as_base64.data] == [0, 1] and as_base64.object == "list"
    for got, sent in zip(as_base64.data, as_floats.data, strict=True):
        assert got.embedding == pytest.approx(sent.embedding, abs=1e-6)
    assert len(tokens.data[0].embedding) == 1536  # text-embedding-3-small's, by default
    assert as_floats.usage.prompt_tokens == 3  # "red", "fox", "red": a token per word
    async with httpx.AsyncClient(base_url=stub_url, timeout=10) as http:
        no_input = await http.post("/embeddings", json={"model": "m"})
        too_big = await http.post("/embeddings", json={"input": "x", "dimensions": 99999})
    for bad in (no_input, too_big):
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
