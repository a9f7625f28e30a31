"""Failed and flagged runs kept as regression cases; exported to files; replayed offline.

Every run that ends ``error`` or ``timeout``, and every run a user flags with
``POST /threads/{tid}/runs/{rid}/feedback`` (``{"score": 0..1, "comment": ...}``, a score
below 0.5 flags it), is kept in Redis (``ac:regressions``) as a case: the run's input, the
conversation it started from (the messages at its ``checkpoint_before``), its config, the
model responses it received (recorded by ``agents.telemetry``, the specialists' included,
per role, in order), the error, the trace id and the feedback. A resume (the run an
approval's decision starts) also keeps the run that stopped for that approval
(``interrupted_by``: its input, the conversation it started from, its responses), so the
replay can reach the same interrupt before it resumes.

    python -m serve_app.runs.regressions export [--redis URL] [--out tests/regressions]

writes one ``<case>.json`` per case and ``dataset.jsonl`` (input, conversation, what the
model answered, the outcome, the feedback: few-shot examples or an eval set).
``tests/test_regressions.py`` (``make test``) replays every exported case through the real
graphs in one process, the model replaced by its recorded responses (no model server, the
same answers every time): a case fails the suite while its run still fails, unless the case
file says ``"known_cause"`` (then it is an expected failure, and the suite says so).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, messages_from_dict, messages_to_dict
from langchain_core.outputs import ChatGeneration, ChatResult
from langgraph.types import Command
from pydantic import BaseModel, Field
from redis.asyncio import Redis

from agents import telemetry
from agents.checkpoint import create_redis
from agents.settings import PROJECT_ROOT
from serve_app.keys import REGRESSION_CASES, responses_key, thread_runs_key
from serve_app.runs.records import Records

RESPONSES_TTL_S = 86_400  # a run's model responses, kept a day for feedback to flag it
FAILED = frozenset({"error", "timeout"})
DEFAULT_DIR = PROJECT_ROOT / "tests" / "regressions"


async def keep(redis: Redis, record: dict[str, Any], responses: list[dict[str, Any]],
               graph: Any, reason: str, feedback: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    """Store the case of a run (``reason``: its status, or ``feedback``)."""
    kwargs = record.get("kwargs") or {}
    messages_before = await messages_at(graph, record["thread_id"],
                                        record.get("checkpoint_before"))
    resumes = (kwargs.get("command") or {}).get("resume") is not None
    case = {
        "case_id": record["run_id"], "reason": reason, "kept_at": time.time(),
        "graph_id": record["graph_id"], "thread_id": record["thread_id"],
        "run_id": record["run_id"], "trace_id": record.get("trace_id"),
        "input": kwargs.get("input"), "command": kwargs.get("command"),
        "config": kwargs.get("config") or {},
        "checkpoint_id": record.get("checkpoint_before"),
        "messages_before": messages_before or [],
        "responses": responses, "status": record.get("status"), "error": record.get("error"),
        "usage": {k: (record.get("usage") or {}).get(k)
                  for k in ("input_tokens", "output_tokens", "cost_usd")},
        "feedback": feedback,
        "interrupted_by": await interrupted_run(redis, record, graph) if resumes else None,
    }
    await redis.hset(REGRESSION_CASES, case["case_id"], json.dumps(case, default=str))
    telemetry.count("regression_cases_kept", reason=reason)
    return case


async def messages_at(graph: Any, thread_id: str, checkpoint_id: str | None
                      ) -> list[dict[str, Any]]:
    """The conversation a run started from, as plain dicts."""
    if not checkpoint_id:
        return []
    state = await graph.aget_state({"configurable": {"thread_id": thread_id,
                                                     "checkpoint_id": checkpoint_id}})
    return messages_to_dict(state.values.get("messages") or [])


async def interrupted_run(redis: Redis, record: dict[str, Any], graph: Any
                          ) -> dict[str, Any] | None:
    """The thread's run before this resume (the one that stopped for the approval), as a
    replay needs it; None if it is gone (deleted, pruned, or its responses expired)."""
    thread_id = record["thread_id"]
    run_ids = [r.decode() if isinstance(r, bytes) else r
               for r in await redis.zrange(thread_runs_key(thread_id), 0, -1)]
    if record["run_id"] not in run_ids or run_ids.index(record["run_id"]) == 0:
        return None
    before_id = run_ids[run_ids.index(record["run_id"]) - 1]
    before = await Records(redis).get_run(thread_id, before_id)
    raw = await redis.get(responses_key(thread_id, before_id))
    if before is None or raw is None:
        return None
    return {"run_id": before_id, "input": (before.get("kwargs") or {}).get("input"),
            "messages_before": await messages_at(graph, thread_id,
                                                 before.get("checkpoint_before")),
            "responses": json.loads(raw)}


async def after_run(redis: Redis, record: dict[str, Any], responses: list[dict[str, Any]],
                    graph: Any) -> None:
    """Keep a failed run's case (every run's responses are kept a day by
    ``run_telemetry.run_end``, for feedback to flag it later)."""
    if record.get("status") in FAILED:
        await keep(redis, record, responses, graph, record["status"])


class RunFeedback(BaseModel):
    score: float = Field(ge=0, le=1, description="0 bad .. 1 good; below 0.5 keeps a case")
    comment: str | None = Field(None, max_length=4000)


async def record_feedback(service: Any, run: dict[str, Any], body: RunFeedback
                          ) -> dict[str, Any]:
    """``POST /threads/{tid}/runs/{rid}/feedback``: on the run record, and a case if low."""
    result = await feedback(service.redis, run, body.score, body.comment,
                            service.graphs[run["graph_id"]])
    await service.records.update_run(run["thread_id"], run["run_id"], feedback=result)
    return result


async def feedback(redis: Redis, record: dict[str, Any], score: float, comment: str | None,
                   graph: Any) -> dict[str, Any]:
    """A user's score of a run (0..1); below 0.5 the run is kept as a case."""
    entry = {"score": score, "comment": comment, "at": time.time()}
    kept = False
    if score < 0.5:
        raw = await redis.get(responses_key(record["thread_id"], record["run_id"]))
        await keep(redis, record, json.loads(raw) if raw else [], graph, "feedback", entry)
        kept = True
    telemetry.count("run_feedback", flagged=str(kept).lower())
    return {**entry, "kept_as_case": kept}


async def cases(redis: Redis) -> list[dict[str, Any]]:
    return sorted((json.loads(v) for v in (await redis.hgetall(REGRESSION_CASES)).values()),
                  key=lambda c: c["kept_at"])


def write(found: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """Each case as ``<out>/<case>.json`` (an existing file keeps its ``known_cause``), and
    ``<out>/dataset.jsonl``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with (out / "dataset.jsonl").open("w") as dataset:
        for case in found:
            path = out / f"{case['reason']}-{case['case_id']}.json"
            if path.exists():
                old = json.loads(path.read_text())
                if old.get("known_cause"):
                    case = {**case, "known_cause": old["known_cause"]}
            path.write_text(json.dumps(case, indent=1, default=str) + "\n")
            written.append(path)
            dataset.write(json.dumps({
                "input": case["input"], "conversation": case["messages_before"],
                "model_responses": case["responses"], "outcome": case["status"],
                "error": case["error"], "feedback": case["feedback"],
                "trace_id": case["trace_id"]}, default=str) + "\n")
    return written


# replay
class ReplayModel(BaseChatModel):
    """A chat model answering with a case's recorded responses, per role, in order. Past
    the recording, a case recorded against the stub model goes on with the stub's own
    deterministic policy (in process: still offline, still the same every time); any other
    model's case fails there (``ReplayExhausted``)."""

    responses: dict[str, list[dict[str, Any]]]
    stub_after: bool = False
    tools: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "replay"

    def bind_tools(self, tools: Any, **kwargs: Any) -> ReplayModel:
        from langchain_core.utils.function_calling import convert_to_openai_tool
        return self.model_copy(update={"tools": [convert_to_openai_tool(t) for t in tools]})

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        role = telemetry.current_role() or "supervisor"
        queue = self.responses.get(role) or []
        if queue:
            recorded = queue.pop(0)
        elif self.stub_after:
            recorded = _stub_reply(messages, self.tools)
        else:
            raise ReplayExhausted(f"the case has no more recorded responses for {role}: "
                                  "the graphs now ask the model more than the run did")
        calls = [{"name": c["name"], "args": c["args"], "id": c.get("id") or uuid.uuid4().hex,
                  "type": "tool_call"} for c in recorded.get("tool_calls") or []]
        message = AIMessage(recorded.get("content") or "", tool_calls=calls)
        return ChatResult(generations=[ChatGeneration(message=message)])


def _stub_reply(messages: Any, tools: list[dict[str, Any]]) -> dict[str, Any]:
    from langchain_openai.chat_models.base import _convert_message_to_dict

    from agents.local.stub_model import policy
    reply = policy.decide([_convert_message_to_dict(m) for m in messages], tools or None)
    return {"content": reply.content or "", "tool_calls": [
        {"name": c.name, "args": json.loads(c.arguments or "{}"), "id": c.id}
        for c in reply.tool_calls]}


class ReplayExhausted(RuntimeError):
    """The replayed graphs asked the model more often than the recorded run did."""


def by_role(responses: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for response in responses:
        grouped.setdefault(response.get("role") or "supervisor", []).append(response)
    return grouped


async def replay(case: dict[str, Any], settings: Any) -> dict[str, Any]:
    """Run the case again through the real graphs in this process, the model replaced by
    its recorded responses; returns ``{"status": "success" | "error", "error"?}``. A resume
    replays the run that stopped for the approval first, then resumes with the decision."""
    from agents.system import AgentSystem, Runtime

    resume = (case.get("command") or {}).get("resume")
    stopped = case.get("interrupted_by")
    if resume is not None and not stopped:
        return {"status": "skipped", "error": "a resume kept without the run that stopped "
                                              "for its approval (gone when it was kept)"}
    first = stopped or case
    responses = [*(stopped or {}).get("responses", []), *case["responses"]]
    runtime = await Runtime.create(settings)
    recorded_models = {r.get("model") for r in responses} - {None}
    model = ReplayModel(responses=by_role(responses),
                        stub_after=recorded_models <= {"stub-model"})
    system = AgentSystem(dataclasses.replace(runtime, model=model))
    config = {"configurable": {"thread_id": f"replay-{case['case_id']}-{uuid.uuid4().hex[:6]}"}}
    messages = [*messages_from_dict(first["messages_before"]),
                *(HumanMessage(m["content"]) if isinstance(m, dict) else HumanMessage(str(m))
                  for m in (first.get("input") or {}).get("messages") or [])]
    try:
        await system.supervisor.ainvoke({"messages": messages}, config)
        if resume is not None:
            if not (await system.supervisor.aget_state(config)).interrupts:
                return {"status": "error", "error": "the replay did not stop for the "
                                                    "approval the case resumes"}
            await system.supervisor.ainvoke(Command(resume=resume), config)
        return {"status": "success"}
    except Exception as exc:
        return {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
    finally:
        await system.aclose()


def case_files(directory: Path = DEFAULT_DIR) -> Iterator[Path]:
    yield from sorted(directory.glob("*.json"))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["export", "list"])
    parser.add_argument("--redis", default=None, help="default: REDIS_URL / settings")
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args(argv)

    async def run() -> None:
        from agents.settings import get_settings
        settings = get_settings()
        url = args.redis or settings.redis_url or "redis://127.0.0.1:6379/0"
        redis = create_redis(url, settings.redis)  # a Redis Cluster too (redis.cluster)
        try:
            found = await cases(redis)
        finally:
            await redis.aclose()
        if args.command == "list":
            for case in found:
                print(case["case_id"], case["reason"], case["status"], case["error"])
            return
        for path in write(found, args.out):
            print(path)
        print(f"{len(found)} cases -> {args.out} (+ dataset.jsonl)")

    asyncio.run(run())


if __name__ == "__main__":
    main()
