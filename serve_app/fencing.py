"""Checkpoint writes fenced by the thread lease: a run that lost its lease (its replica
froze, the sweeper gave the run to another) cannot overwrite its successor's state."""

from __future__ import annotations

from typing import Any

from agents.errors import AgentClusterError
from agents.redis_saver import LeanRedisSaver
from serve_app.leases import Leases

FENCE = "fence_token"


class LeaseLost(AgentClusterError):
    """This run no longer holds its thread; it must stop without writing."""


class FencedRedisSaver(LeanRedisSaver):
    """``LeanRedisSaver`` that checks the writer's fencing token before every write."""

    def __init__(self, *args: Any, leases: Leases, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.leases = leases

    async def _check(self, config: dict) -> None:
        configurable = config.get("configurable", {})
        token = configurable.get(FENCE)
        if token and not await self.leases.holds(configurable["thread_id"], token):
            raise LeaseLost(f"run lost thread {configurable['thread_id']!r} (token {token})")

    async def aput(self, config, checkpoint, metadata, new_versions, *args, **kwargs):
        await self._check(config)
        return await super().aput(config, checkpoint, metadata, new_versions, *args, **kwargs)

    async def aput_writes(self, config, writes, task_id, task_path=""):
        await self._check(config)
        return await super().aput_writes(config, writes, task_id, task_path)
