"""Every tool of every specialist, by name, built on the process's Redis client and settings."""

from __future__ import annotations

from langchain_core.tools import BaseTool
from redis.asyncio import Redis

from agents.memory import memory_tools
from agents.settings import Settings
from agents.tools.backoffice import backoffice_tools, seed_backoffice
from agents.tools.code import code_tools
from agents.tools.corpus import corpus_tools, index_corpus

__all__ = ["build_toolbox", "prepare_tools"]


def build_toolbox(redis: Redis, settings: Settings) -> dict[str, BaseTool]:
    """All tools by name; the roles' settings pick theirs from it."""
    tools = [*corpus_tools(redis, settings.corpus_dir), *code_tools(settings),
             *backoffice_tools(redis), *memory_tools()]
    return {tool.name: tool for tool in tools}


async def prepare_tools(redis: Redis, settings: Settings) -> None:
    """Index the corpus and seed the back office. Idempotent and safe from many processes."""
    await index_corpus(redis, settings.corpus_dir)
    await seed_backoffice(redis)
