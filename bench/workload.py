"""What simulated users say, and what a correct answer to it looks like.

Every message carries a unique tag, so the audit can find each turn in a thread's state and
tell a lost turn (absent) from a duplicated one (present twice). Three kinds of turn, all
deterministic answers of the stub model: a research question (supervisor -> researcher,
search + read + answer), a memory question (the supervisor quotes the previous message) and
a refund, which stops for a human approval before the coder issues it.

A user's own project (``PROJECT``: the ReAct agent of ``tests/fixtures/react_agent``, a model
with a tool, configured per run by its ``context_schema``) gets research turns only: its
graph answers each with a search and a final message.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from agents.settings import PROJECT_ROOT
from agents.tools.backoffice import ORDER_COUNT, order_amount

Kind = Literal["research", "memory", "approval"]

TOPICS = (
    "redis streams", "redis persistence", "connection pooling", "idempotency keys",
    "langgraph checkpoints", "langgraph interrupts", "ray serve autoscaling",
    "ray serve deployments", "redis replication", "the sse protocol", "refund policy",
    "python subprocess limits",
)

PROJECT = PROJECT_ROOT / "tests" / "fixtures" / "react_agent" / "langgraph.json"
PROJECT_GRAPH = "agent"                       # its assistant id
PROJECT_CONTEXT = {"max_search_results": 5}   # each run's ``context``


@dataclass(frozen=True)
class Turn:
    """One user message and how to recognise its answer."""

    kind: Kind
    text: str
    expect_prefix: str | None = None  # the answer starts with this (None: any non-empty)


def make_turn(rng: random.Random, tag: str, index: int, previous: str | None,
              approval_share: float, memory_share: float) -> Turn:
    """The ``index``-th turn of a thread; ``previous`` is that thread's previous message."""
    draw = rng.random()
    if draw < approval_share:
        order = rng.randint(1, ORDER_COUNT)
        amount = rng.randint(1, int(min(order_amount(order), 25)))
        return Turn("approval", f"Refund ${amount} to order {order} (ref {tag})",
                    f"Refund issued: ${amount} to order {order} ")
    if previous is not None and draw < approval_share + memory_share:
        return Turn("memory", f"What did I ask before? (ref {tag})",
                    f'You asked before: "{previous}"')
    return Turn("research", f"Tell me about {rng.choice(TOPICS)} (ref {tag})")


def answer_ok(turn: Turn, answer: str) -> bool:
    if not answer.strip():
        return False
    return turn.expect_prefix is None or answer.startswith(turn.expect_prefix)
