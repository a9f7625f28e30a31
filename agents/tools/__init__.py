"""Every tool of every specialist, by name, built on the process's Redis client and settings;
and a user's tools by import path (``roles.<name>.tools: ["my_pkg.tools:lookup_order"]``)."""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping

from langchain_core.tools import BaseTool, tool
from redis.asyncio import Redis

from agents.memory import memory_tools
from agents.settings import Settings
from agents.tools.backoffice import backoffice_tools, seed_backoffice
from agents.tools.code import code_tools
from agents.tools.corpus import corpus_tools, index_corpus

__all__ = ["build_toolbox", "prepare_tools", "resolve_tools"]


def build_toolbox(redis: Redis, settings: Settings) -> dict[str, BaseTool]:
    """All tools by name; the roles' settings pick theirs from it."""
    tools = [*corpus_tools(redis, settings.corpus_dir), *code_tools(settings),
             *backoffice_tools(redis), *memory_tools()]
    return {tool.name: tool for tool in tools}


def import_tool(path: str) -> BaseTool:
    """``package.module:attr``: a LangChain tool, or a function made one (its name, its
    docstring and its typed parameters are what the model sees)."""
    module, _, attr = path.partition(":")
    try:
        found = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"tool {path!r} does not import: {type(exc).__name__}: {exc}") from exc
    if isinstance(found, BaseTool):
        return found
    if callable(found):
        return tool(found)
    raise ValueError(f"tool {path!r} is a {type(found).__name__}, not a tool or a function")


def resolve_tools(names: Iterable[str], toolbox: Mapping[str, BaseTool]) -> list[BaseTool]:
    """A role's tools: names of the toolbox, and import paths (anything with a ``:``)."""
    resolved = []
    for name in names:
        if ":" in name:
            resolved.append(import_tool(name))
        elif name in toolbox:
            resolved.append(toolbox[name])
        else:
            raise ValueError(f"no tool {name!r}: a tool of agents/tools/ ({sorted(toolbox)}) "
                             "or an import path 'package.module:attr'")
    return resolved


async def prepare_tools(redis: Redis, settings: Settings) -> None:
    """Index the corpus and seed the back office. Idempotent and safe from many processes."""
    await index_corpus(redis, settings.corpus_dir)
    await seed_backoffice(redis)
