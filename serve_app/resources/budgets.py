"""A user over a windowed budget (``budgets.user``, ``agents.budgets``) is refused a new run at
once: 429, with ``Retry-After`` saying when the window resets, instead of a run that would
fail at its first model call."""

from __future__ import annotations

import math

from agents import budgets
from serve_app.resources.api_errors import ApiError


async def refuse_over_budget(identity: str, per_user: bool = True) -> None:
    """429 if ``identity``'s budget in the current window is spent (``per_user``: there are
    users to tell apart, not the open mode's)."""
    enforced = budgets.of_process()
    if not per_user or enforced is None:
        return
    spent = await enforced.user_refusal(identity)
    if spent is not None:
        raise ApiError(429, str(spent),
                       headers={"Retry-After": str(max(1, math.ceil(spent.resets_in_s or 0)))})
