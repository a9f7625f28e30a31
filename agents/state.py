"""State schemas of every graph: what is checkpointed in Redis after each node.

Reducers follow the seed: ``messages`` append (by id, so an edited message replaces its
original), ``steps`` last write wins, ``context`` dicts merge.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal, NotRequired

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict  # pydantic builds JSON schemas only from this one


def merge_context(left: dict[str, Any] | None, right: dict[str, Any] | None) -> dict[str, Any]:
    """Shallow dict merge: keys written later win, other keys are kept."""
    return {**(left or {}), **(right or {})}


def last_write_wins(_left: Any, right: Any) -> Any:
    return right


class AgentState(TypedDict):
    """What every graph shares (the seed's schema)."""

    messages: Annotated[list[AnyMessage], add_messages]
    steps: Annotated[int, last_write_wins]
    context: Annotated[dict[str, Any], merge_context]


class Decision(TypedDict):
    """A human's answer to a pending approval, as recorded in the specialist's state."""

    key: str
    tool_call_id: str
    tool: str
    action: Literal["approve", "reject", "edit"]
    args: dict[str, Any]
    by: str
    reason: NotRequired[str]
    approval: NotRequired[dict[str, str]]  # where the serving layer recorded it


class SpecialistState(AgentState):
    """A specialist's run: the seed's state plus the audit log of approval decisions."""

    decisions: Annotated[list[Decision], operator.add]


class Assignment(TypedDict):
    """One sub-task the supervisor hands to one worker."""

    worker: str
    task: str
    task_id: str


class SupervisorState(AgentState):
    """The parent thread: conversation plus the routing decision of the last supervisor step."""

    assignments: Annotated[list[Assignment], last_write_wins]


class WorkerInput(TypedDict):
    """What one parallel worker branch (a ``Send``) carries."""

    assignment: Assignment
