"""The chat model client: ``ChatOpenAI`` against any OpenAI-compatible endpoint, behind the
endpoint's shared circuit breaker (``agents.breaker``) and the run's budgets
(``agents.budgets``)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlparse

import openai
from langchain_core.outputs import ChatGenerationChunk
from langchain_openai import ChatOpenAI
from redis.asyncio import Redis

from agents import telemetry
from agents.breaker import Breaker
from agents.budgets import BudgetCallback, Budgets
from agents.settings import Settings
from agents.telemetry import ModelCallback

MAX_BACKOFF_S = 8.0


class GuardedChatOpenAI(ChatOpenAI):
    """Retries here, not in the ``openai`` client, so each failed attempt is counted by the
    endpoint's breaker and a provider's ``Retry-After`` holds back every replica. A call
    that hangs is cut by the client's timeout (``model.timeout_s``, no byte for that long)
    and tried again as a new call; a call whose tokens already streamed out is not
    repeated."""

    breaker: Any = None
    attempts: int = 1

    async def _astream(self, *args: Any, **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        """Up to ``attempts`` tries; and while the breaker is open (this call's failures
        may have opened it), waits for it up to ``breaker.max_wait_s`` in all, then tries
        again: a run in flight rides out an outage that short."""
        waits_until = time.monotonic() + self.breaker.settings.max_wait_s
        attempt = 0
        while True:
            await self.breaker.wait(waits_until)
            answered = False
            try:
                async for chunk in super()._astream(*args, **kwargs):
                    if not answered:
                        answered = True
                        await self.breaker.succeeded()
                    yield chunk
                return
            except (openai.APIConnectionError, openai.APIStatusError) as exc:
                if answered or not retryable(exc):
                    raise
                attempt += 1
                retry_after = retry_after_s(exc)
                telemetry.count("model_attempts_failed", endpoint=self.breaker.endpoint,
                                cause=cause(exc))
                await self.breaker.failed(cause(exc), retry_after)
                if self.breaker.known.open_for() > 0:
                    continue  # the breaker says when (and raises past max_wait_s)
                if attempt >= self.attempts:
                    raise
                await asyncio.sleep(min(MAX_BACKOFF_S, 0.5 * 2 ** (attempt - 1))
                                    * random.uniform(0.75, 1.0))


def retryable(exc: Exception) -> bool:
    """Timeouts, refused connections, 408/409/429 and 5xx: worth another attempt."""
    if isinstance(exc, openai.APIConnectionError):  # timeouts included
        return True
    status = getattr(exc, "status_code", 0)
    return status in (408, 409, 429) or status >= 500


def cause(exc: Exception) -> str:
    if isinstance(exc, openai.APITimeoutError):
        return "timed out"
    status = getattr(exc, "status_code", None)
    return f"HTTP {status}" if status else type(exc).__name__


def retry_after_s(exc: Exception) -> float | None:
    """The provider's ``Retry-After`` (seconds or an HTTP date; ``retry-after-ms`` first)."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    try:
        if headers.get("retry-after-ms"):
            return max(0.0, float(headers["retry-after-ms"]) / 1000) or None
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return max(0.0, float(value)) or None
        except ValueError:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time()) or None
    except (TypeError, ValueError):
        return None


def endpoint(base_url: str) -> str:
    parsed = urlparse(base_url)
    return f"{parsed.netloc}{parsed.path.rstrip('/')}"


def build_chat_model(settings: Settings, redis: Redis) -> ChatOpenAI:
    """Streaming with usage on: without ``stream_usage`` a custom ``base_url`` reports no tokens.

    Every call is traced and counted by ``agents.telemetry.ModelCallback``, checked and
    charged against its budgets by ``agents.budgets.BudgetCallback``, and tried
    ``model.max_retries`` more times on a transient failure through the breaker.
    """
    model = settings.model
    if model.base_url is None:
        raise ValueError("model.base_url is not set (start the stub model or set OPENAI_BASE_URL)")
    return GuardedChatOpenAI(
        base_url=model.base_url,
        api_key=model.api_key,
        model=model.name,
        temperature=model.temperature,
        timeout=model.timeout_s,
        # A client of its own: langchain-openai shares one per (base URL, timeout) in the
        # process, and an asyncio client belongs to the event loop it first ran in (a
        # runtime in another loop, a notebook's or a test server's thread, found it closed).
        http_async_client=openai.DefaultAsyncHttpxClient(timeout=model.timeout_s),
        max_retries=0,
        attempts=model.max_retries + 1,
        breaker=Breaker(redis, endpoint(model.base_url), settings.breaker),
        streaming=True,
        stream_usage=True,
        callbacks=[ModelCallback(model.name, server=urlparse(model.base_url).hostname),
                   BudgetCallback(Budgets(redis, settings.budgets), model.name)],
    )
