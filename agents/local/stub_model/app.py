"""The stub model's HTTP face: enough of the OpenAI Chat Completions and Embeddings APIs for
``ChatOpenAI`` and ``OpenAIEmbeddings``.

Real HTTP, real SSE streaming (one word per chunk, paced), tool calls, usage counts,
configurable latency and injected faults, so the agents and the serving layer are exercised
exactly as against a hosted model. The replies themselves come from ``policy``.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agents.local.stub_model import policy
from agents.local.stub_model.embeddings import EmbeddingRequest, embeddings_body
from agents.local.stub_model.policy import Reply

MODEL_ID = "stub-model"
Body = TypeVar("Body", bound=BaseModel)
MAX_CALLS_KEPT = 1000


class StubConfig(BaseModel):
    """Live latency and fault settings (``POST /admin/config`` changes them)."""

    model_config = ConfigDict(extra="forbid")

    ttft_ms: float = Field(0.0, ge=0, description="delay before the first chunk or the answer")
    tokens_per_s: float = Field(0.0, ge=0, description="pacing between tokens; 0: none")
    fault_rate: float = Field(0.0, ge=0, le=1, description="share of chat requests that fail")
    fault_status: int = Field(500, description="429 or a 5xx")
    retry_after_s: float = Field(0.0, ge=0, description="the Retry-After of an injected "
                                 "fault (a 429 always has one, 0 by default)")
    fault_for_s: float = Field(0.0, ge=0, description="an outage: every chat request fails "
                               "for this long from the update that sets it, then none")
    hang_rate: float = Field(0.0, ge=0, le=1, description="share of chat requests that hang")
    hang_s: float = Field(0.0, ge=0, description="how long a hanging request sends nothing")
    seed: int = Field(0, description="seed of the fault sequence, so tests are repeatable")

    @field_validator("fault_status")
    @classmethod
    def _retryable_status(cls, value: int) -> int:
        if value != 429 and not 500 <= value <= 599:
            raise ValueError("fault_status must be 429 or a 5xx status")
        return value


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatMessage(BaseModel):
    """One OpenAI message; unknown fields are kept and ignored."""

    model_config = ConfigDict(extra="allow")

    role: str
    content: Any = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ChatRequest(BaseModel):
    """The fields of a chat completion request the stub uses; others are accepted."""

    model_config = ConfigDict(extra="allow")

    model: str = MODEL_ID
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    functions: list[dict[str, Any]] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    def offered_tools(self) -> list[dict[str, Any]]:
        return self.tools or self.functions or []


def what_was_asked(req: ChatRequest) -> dict[str, Any]:
    """What a call record keeps of the request, so tests can see what the caller sent:
    the model, its temperature and the system prompts (a run's context sets them)."""
    return {"model": req.model, "temperature": (req.model_extra or {}).get("temperature"),
            "system": [m.content for m in req.messages
                       if m.role == "system" and isinstance(m.content, str)]}


class StubError(Exception):
    """An error answered in OpenAI's shape instead of a traceback."""

    def __init__(self, status: int, message: str, type_: str, code: str):
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code


class StubState:
    """Config, fault sequence and call statistics of one app instance."""

    def __init__(self, config: StubConfig):
        self.config = config
        self.rng = random.Random(config.seed)
        self.requests = 0
        self.faults = 0
        self.hangs = 0
        self.fault_until = 0.0
        self.by_role: Counter[str] = Counter()
        self.calls: deque[dict[str, Any]] = deque(maxlen=MAX_CALLS_KEPT)

    def configure(self, update: dict[str, Any]) -> StubConfig:
        """Apply a partial update; restarting the fault sequence keeps fault tests repeatable."""
        self.config = StubConfig.model_validate({**self.config.model_dump(), **update})
        self.rng = random.Random(self.config.seed)
        if "fault_for_s" in update:
            self.fault_until = time.time() + self.config.fault_for_s
        return self.config

    def reset(self) -> None:
        self.requests = self.faults = self.hangs = 0
        self.by_role.clear()
        self.calls.clear()
        self.rng = random.Random(self.config.seed)

    def next_is_fault(self) -> bool:
        return time.time() < self.fault_until or self.rng.random() < self.config.fault_rate

    def next_hangs(self) -> bool:
        return self.config.hang_rate > 0 and self.rng.random() < self.config.hang_rate

    def stats(self) -> dict[str, Any]:
        return {"requests": self.requests, "by_role": dict(self.by_role), "faults": self.faults,
                "hangs": self.hangs,
                "calls": list(self.calls)}


def error_body(message: str, type_: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def error_response(exc: StubError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(exc.message, exc.type, exc.code), exc.status, headers=headers)


def bad_request(message: str) -> StubError:
    return StubError(400, message, "invalid_request_error", "invalid_request")


async def read_json(request: Request) -> Any:
    try:
        return json.loads(await request.body() or b"null")
    except ValueError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from exc


async def parse_body(request: Request, model: type[Body]) -> Body:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise bad_request(f"invalid request: {where}: {first['msg']}") from exc


def fault(status: int, retry_after_s: float = 0.0) -> tuple[StubError, dict[str, str]]:
    """An injected failure as the real API would send it."""
    headers = {"retry-after": f"{retry_after_s:g}"} if retry_after_s or status == 429 else {}
    if status == 429:
        return (StubError(429, "Rate limit reached for stub-model (injected fault).",
                          "rate_limit_error", "rate_limit_exceeded"), headers)
    return (StubError(status, f"The stub model failed with {status} (injected fault).",
                      "server_error", "stub_fault"), headers)


def usage_of(req: ChatRequest, messages: list[dict[str, Any]], reply: Reply) -> dict[str, int]:
    prompt = policy.prompt_tokens(messages, req.offered_tools())
    completion = policy.completion_tokens(reply)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def wire_tool_calls(reply: Reply) -> list[dict[str, Any]]:
    return [{"id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": c.arguments}} for c in reply.tool_calls]


def completion_body(completion_id: str, model: str, reply: Reply,
                    usage: dict[str, int]) -> dict[str, Any]:
    """A non-streamed ``chat.completion``: content is null when there are only tool calls."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.tool_calls:
        message["tool_calls"] = wire_tool_calls(reply)
    return {
        "id": completion_id, "object": "chat.completion", "created": int(time.time()),
        "model": model, "system_fingerprint": "stub",
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": reply.finish_reason}],
        "usage": usage,
    }


def chunk_deltas(reply: Reply) -> list[tuple[dict[str, Any], bool]]:
    """The deltas to stream, each flagged when it carries a token (and so is paced)."""
    deltas: list[tuple[dict[str, Any], bool]] = [
        ({"role": "assistant", "content": "" if reply.content is not None else None}, False)
    ]
    deltas += [({"content": token}, True) for token in policy.content_tokens(reply.content)]
    for index, tool_call in enumerate(reply.tool_calls):
        deltas.append(({"tool_calls": [{
            "index": index, "id": tool_call.id, "type": "function",
            "function": {"name": tool_call.name, "arguments": ""},
        }]}, False))
        deltas += [({"tool_calls": [{"index": index, "function": {"arguments": part}}]}, True)
                   for part in policy.argument_parts(tool_call.arguments)]
    return deltas


def sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


async def stream_reply(completion_id: str, model: str, reply: Reply, usage: dict[str, int],
                       include_usage: bool, config: StubConfig,
                       record: dict[str, Any]) -> AsyncIterator[str]:
    """SSE chunks, really flushed one by one; the call's end is recorded even on disconnect."""
    base = {"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, "system_fingerprint": "stub"}
    pause = 1.0 / config.tokens_per_s if config.tokens_per_s > 0 else 0.0
    try:
        await asyncio.sleep(config.ttft_ms / 1000)
        paced = False
        for delta, is_token in chunk_deltas(reply):
            if is_token and paced and pause:
                await asyncio.sleep(pause)
            paced = paced or is_token
            yield sse({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                            "finish_reason": None}]})
        yield sse({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                        "finish_reason": reply.finish_reason}]})
        if include_usage:
            yield sse({**base, "choices": [], "usage": usage})
        yield sse("[DONE]")
    finally:
        record["finished"] = time.time()


def usage_headers(usage: dict[str, int]) -> dict[str, str]:
    return {"x-stub-prompt-tokens": str(usage["prompt_tokens"]),
            "x-stub-completion-tokens": str(usage["completion_tokens"])}


async def chat_completions(state: StubState, request: Request) -> Response:
    """Parse, maybe fail on purpose, decide the reply, then stream or send it."""
    started, clock = time.time(), time.perf_counter()
    req = await parse_body(request, ChatRequest)
    messages = [m.model_dump(exclude_none=True) for m in req.messages]
    tools = req.offered_tools()
    role = policy.detect_role(policy.tool_names(tools))
    config = state.config
    state.requests += 1
    state.by_role[role] += 1
    hangs, fails = state.next_hangs(), state.next_is_fault()  # drawn together: repeatable
    if hangs:  # a provider that accepted the call and sends nothing
        state.hangs += 1
        await asyncio.sleep(config.hang_s)
    if fails:
        state.faults += 1
        state.calls.append({"role": role, "started": started, "finished": time.time(),
                            "status": config.fault_status})
        error, headers = fault(config.fault_status, config.retry_after_s)
        return error_response(error, headers)
    reply = policy.decide(messages, tools)
    usage = usage_of(req, messages, reply)
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    record: dict[str, Any] = {"role": role, "started": started, "finished": None,
                              "status": 200, "stream": req.stream, **what_was_asked(req)}
    state.calls.append(record)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(
            stream_reply(completion_id, req.model, reply, usage, include_usage, config, record),
            media_type="text/event-stream", headers=usage_headers(usage),
        )
    await asyncio.sleep(config.ttft_ms / 1000 + non_stream_pacing(config, usage))
    record["finished"] = time.time()
    headers = {**usage_headers(usage),
               "x-stub-model-ms": f"{(time.perf_counter() - clock) * 1000:.1f}"}
    return JSONResponse(completion_body(completion_id, req.model, reply, usage), headers=headers)


def non_stream_pacing(config: StubConfig, usage: dict[str, int]) -> float:
    """A non-streamed answer takes as long as streaming it would have."""
    if config.tokens_per_s <= 0:
        return 0.0
    return max(usage["completion_tokens"] - 1, 0) / config.tokens_per_s


def create_app(config: StubConfig | None = None) -> FastAPI:
    """A fresh app with its own config, fault sequence and statistics."""
    app = FastAPI(title="Agent Cluster stub model", docs_url=None, redoc_url=None)
    state = StubState(config or StubConfig())
    app.state.stub = state

    @app.exception_handler(StubError)
    async def _stub_error(_: Request, exc: StubError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        message = f"stub model error: {type(exc).__name__}: {exc}"
        return JSONResponse(error_body(message, "server_error", "internal_error"), 500)

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list",
                "data": [{"id": MODEL_ID, "object": "model", "owned_by": "agent-cluster"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await chat_completions(state, request)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> dict[str, Any]:
        req = await parse_body(request, EmbeddingRequest)
        state.by_role["embeddings"] += 1
        return embeddings_body(req)

    @app.get("/admin/config")
    async def get_config() -> dict[str, Any]:
        return state.config.model_dump()

    @app.post("/admin/config")
    async def set_config(request: Request) -> dict[str, Any]:
        update = await read_json(request)
        if not isinstance(update, dict):
            raise bad_request("the config update must be a JSON object")
        try:
            return state.configure(update).model_dump()
        except ValidationError as exc:
            raise bad_request(f"invalid config: {exc.errors()[0]['msg']}") from exc

    @app.get("/admin/stats")
    async def stats() -> dict[str, Any]:
        return state.stats()

    @app.post("/admin/reset")
    async def reset() -> dict[str, bool]:
        state.reset()
        return {"ok": True}

    return app
