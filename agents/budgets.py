"""Budgets: what a run, its thread and its user may spend on the model, enforced per call.

Spend is tokens (input + output), cost in USD at the price table (``agents.pricing``) and
steps (model calls). Each model call's spend is added in Redis as the call ends, to the
run's counters, the thread's and the user's current window (``agents.keys``), so every
replica sees the same totals, and a run taken over after its replica died goes on from
what it had spent (its counters are the run's, not the attempt's). Before each call the
counters are read: one at or past its limit stops the call with ``BudgetExceeded``, which
ends the run ``error`` (its thread keeps its last checkpoint). A run therefore overshoots
by at most the call that crossed the limit (one per branch running in parallel).

Who pays comes from the call's context: the run id from the telemetry ids (carried with the
trace to a specialist on another replica), the thread from the graph's thread id up to its
first ``/`` (a specialist's sub-thread names its parent), the user from
``agents.memory.current_user``, and the run's own limits from its ``context`` (``budget``),
never above the operator's ``budgets.run``. Only levels with a limit are read and written:
with no budget set, budgets cost no Redis command.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler
from redis.asyncio import Redis

from agents import pricing, telemetry
from agents.errors import AgentClusterError
from agents.keys import spend_key, user_spend_key
from agents.memory import ANONYMOUS, current_user
from agents.run_context import current_context
from agents.settings import Budget, BudgetSettings

MEASURES = ("tokens", "cost_usd", "steps")
RUN_TTL_S = 86400  # a run's counters outlive all its attempts
THREAD_TTL_S = 30 * 86400  # a thread's, a month past its last model call (or its deletion)
UNITS = {"tokens": "tokens", "cost_usd": "USD", "steps": "steps"}


class BudgetExceeded(AgentClusterError):
    """A run, thread or user budget is spent: which one, what it used, its limit."""

    def __init__(self, budget: str, measure: str, used: float, limit: float,
                 resets_in_s: float | None = None):
        then = f"; it resets in {math.ceil(resets_in_s)} s" if resets_in_s is not None else \
            "; the thread keeps its last checkpoint"
        super().__init__(f"{budget} budget spent: {used:g} of {limit:g} {UNITS[measure]} "
                         f"used (budgets.{budget}.max_{measure}){then}")
        self.budget, self.measure, self.used, self.limit = budget, measure, used, limit
        self.resets_in_s = resets_in_s

    def __reduce__(self) -> tuple[Any, ...]:  # crosses a Ray handle intact
        return BudgetExceeded, (self.budget, self.measure, self.used, self.limit,
                                self.resets_in_s)

    def as_error(self) -> dict[str, Any]:
        """The run record's and the SSE ``error`` event's ``error``."""
        return {"error": "BudgetExceeded", "message": str(self), "budget": self.budget,
                "measure": self.measure, "used": self.used, "limit": self.limit}


@dataclass(frozen=True)
class Level:
    """One budget a call is charged to: its name, counters, limits and their lifetime."""

    name: str
    key: str
    limits: dict[str, float]
    ttl_s: int
    resets_in_s: float | None = None


class Budgets:
    """The operator's limits and the spend counted against them in Redis."""

    def __init__(self, redis: Redis, settings: BudgetSettings):
        self.redis = redis
        self.settings = settings

    def levels(self, thread_id: str | None, run_id: str | None, user: str | None,
               asked: Budget | None = None) -> list[Level]:
        """The budgets with a limit that a call in this run is charged to."""
        levels = []
        run = self.settings.run.within(asked).limits()
        if run and thread_id and run_id:
            levels.append(Level("run", spend_key(thread_id, run_id), run, RUN_TTL_S))
        if thread_id and (limits := self.settings.thread.limits()):
            levels.append(Level("thread", spend_key(thread_id), limits, THREAD_TTL_S))
        if user and user != ANONYMOUS and (limits := self.settings.user.limits()):
            window_s = self.settings.user.window_s
            now = time.time()
            window = int(now // window_s)
            levels.append(Level("user", user_spend_key(user, window), limits,
                                math.ceil(window_s) + 60, (window + 1) * window_s - now))
        return levels

    async def spent(self, levels: list[Level]) -> list[dict[str, float]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for level in levels:
                pipe.hmget(level.key, MEASURES)
            replies = await pipe.execute()
        return [{m: float(v or 0) for m, v in zip(MEASURES, reply, strict=True)}
                for reply in replies]

    async def check(self, levels: list[Level]) -> None:
        """``BudgetExceeded`` for the first limit already reached."""
        if not levels:
            return
        for level, used in zip(levels, await self.spent(levels), strict=True):
            for measure, limit in level.limits.items():
                if used[measure] >= limit:
                    telemetry.count("budget_refusals", budget=level.name, measure=measure)
                    raise BudgetExceeded(level.name, measure, used[measure], limit,
                                         level.resets_in_s)

    async def charge(self, levels: list[Level], tokens: int, cost_usd: float) -> None:
        if not levels:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for level in levels:
                pipe.hincrby(level.key, "tokens", tokens)
                pipe.hincrbyfloat(level.key, "cost_usd", cost_usd)
                pipe.hincrby(level.key, "steps", 1)
                pipe.expire(level.key, level.ttl_s)
            await pipe.execute()

    async def user_refusal(self, user: str) -> BudgetExceeded | None:
        """Why a new run of ``user`` is refused now (its window's budget is spent), if so."""
        levels = self.levels(None, None, user)
        try:
            await self.check(levels)
        except BudgetExceeded as exc:
            return exc
        return None


_process: Budgets | None = None  # the budgets of this process's model (``of_process``)


def of_process() -> Budgets | None:
    """The budgets the process's model enforces (None before one is built)."""
    return _process


class BudgetCallback(AsyncCallbackHandler):
    """On the chat model: each call checked against its budgets first, charged after."""

    raise_error = True  # a spent budget stops the call
    run_inline = True

    def __init__(self, budgets: Budgets, model: str):
        global _process
        _process = budgets
        self.budgets = budgets
        self.model = model
        self._calls: dict[UUID, tuple[list[Level], str, str]] = {}

    async def on_chat_model_start(self, serialized: Any, messages: list[list[Any]], *,
                                  run_id: UUID, **kwargs: Any) -> None:
        config = _graph_config()
        configurable = config.get("configurable") or {}
        thread_id = configurable.get("thread_id")
        user = current_user(config) if config else ANONYMOUS
        asked = current_context().budget if config else None
        levels = self.budgets.levels(thread_id and thread_id.partition("/")[0],
                                     telemetry.current_ids().get("run_id"), user, asked)
        await self.budgets.check(levels)
        model = (kwargs.get("invocation_params") or {}).get("model") or self.model
        self._calls[run_id] = (levels, user, model)

    async def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        levels, user, model = self._calls.pop(run_id, ([], ANONYMOUS, self.model))
        usage = telemetry.generated(response)[2]
        input_tokens = int(usage.get("input_tokens") or 0)
        output_tokens = int(usage.get("output_tokens") or 0)
        cost = pricing.cost_usd(model, input_tokens, output_tokens)
        telemetry.count("user_spend_usd", cost, user=user)
        telemetry.count("user_spend_tokens", input_tokens + output_tokens, user=user)
        await self.budgets.charge(levels, input_tokens + output_tokens, cost)

    async def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._calls.pop(run_id, None)


def _graph_config() -> dict[str, Any]:
    """The running graph's config ({} outside a graph)."""
    try:
        from langgraph.config import get_config
        return get_config()
    except RuntimeError:
        return {}
