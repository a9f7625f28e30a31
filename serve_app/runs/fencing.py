"""Checkpoint writes fenced by the thread lease: a run that lost its lease (its replica
froze, the sweeper gave the run to another) cannot overwrite its successor's state.

The check and the write are one Lua call, so nothing can take the lease between them, and a
fenced write costs the same single round trip as an unfenced one.
"""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.runnables import RunnableConfig

from agents.errors import AgentClusterError
from agents.redis_saver import Command, LeanRedisSaver
from serve_app.keys import thread_lease_key

FENCE = "fence_token"

# KEYS[1]: the thread's lease, then every key the commands write (declared, as a cluster
# requires; all in the thread's slot); ARGV[1]: the writer's token; then each command as its
# word count followed by its words.
_FENCED_WRITE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local i = 2
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return 1
"""


class LeaseLost(AgentClusterError):
    """This run no longer holds its thread; it must stop without writing."""


class FencedRedisSaver(LeanRedisSaver):
    """``LeanRedisSaver`` whose writes happen only while the writer's fencing token (in the
    run's config) still holds the thread's lease; a write without a token is not fenced."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._fenced_write = self._redis.register_script(_FENCED_WRITE)

    async def _write(self, config: RunnableConfig, commands: list[Command]) -> None:
        thread_id, token = _fence(config)
        if not token:
            return await super()._write(config, commands)
        args: list[Any] = [token]
        keys = [thread_lease_key(thread_id)]
        for command in commands:
            args += [len(command), *command]
            keys.append(command[1])
        if not await asyncio.shield(self._fenced_write(keys=list(dict.fromkeys(keys)),
                                                       args=args)):
            raise LeaseLost(f"run lost thread {thread_id!r} (token {token})")


def _fence(config: RunnableConfig) -> tuple[str, str | None]:
    configurable = config.get("configurable", {})
    return configurable.get("thread_id", ""), configurable.get(FENCE)
