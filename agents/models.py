"""The chat model client: ``ChatOpenAI`` against any OpenAI-compatible endpoint."""

from __future__ import annotations

from urllib.parse import urlparse

from langchain_openai import ChatOpenAI

from agents.settings import ModelSettings
from agents.telemetry import ModelCallback


def build_chat_model(settings: ModelSettings) -> ChatOpenAI:
    """Streaming with usage on: without ``stream_usage`` a custom ``base_url`` reports no tokens.

    Transient 429/5xx/timeouts are retried by the ``openai`` client with exponential backoff.
    Every call is traced and counted by ``agents.telemetry.ModelCallback``.
    """
    if settings.base_url is None:
        raise ValueError("model.base_url is not set (start the stub model or set OPENAI_BASE_URL)")
    return ChatOpenAI(
        base_url=settings.base_url,
        api_key=settings.api_key,
        model=settings.name,
        temperature=settings.temperature,
        timeout=settings.timeout_s,
        max_retries=settings.max_retries,
        streaming=True,
        stream_usage=True,
        callbacks=[ModelCallback(settings.name, server=urlparse(settings.base_url).hostname)],
    )
