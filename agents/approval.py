"""Human approval of sensitive tool calls: what is asked, and what an answer may say."""

from __future__ import annotations

from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field, ValidationError, model_validator

from agents.errors import InvalidDecisionError


class ApprovalRequest(BaseModel):
    """The payload of the ``interrupt()``: shown to the human in the thread state."""

    type: Literal["approval"] = "approval"
    tool: str
    args: dict[str, Any]
    tool_call_id: str
    requested_by: str = Field(description="the agent (role) that wants to run the tool")


class ApprovalDecision(BaseModel):
    """What ``Command(resume=...)`` carries: approve, reject (the model is told) or edit."""

    action: Literal["approve", "reject", "edit"]
    args: dict[str, Any] | None = Field(None, description="the edited arguments (edit only)")
    by: str = "unknown"
    reason: str | None = None
    key: str | None = Field(None, description="idempotency key set by the worker seam")
    approval: dict[str, str] | None = Field(
        None, description="where the serving layer recorded this decision: {'log': thread "
        "id, 'id': entry id}; set by the server, never taken from a client")

    @model_validator(mode="after")
    def _edit_needs_args(self) -> ApprovalDecision:
        if self.action == "edit" and not self.args:
            raise ValueError("an 'edit' decision needs the edited 'args'")
        return self


def parse_decision(value: Any) -> ApprovalDecision:
    """Validate a resume value, raising ``InvalidDecisionError`` with the reason."""
    if isinstance(value, ApprovalDecision):
        return value
    if isinstance(value, str):
        value = {"action": value}
    try:
        return ApprovalDecision.model_validate(value)
    except ValidationError as exc:
        raise InvalidDecisionError(f"invalid approval decision {value!r}: {exc}") from exc


class ApprovalVerifier(Protocol):
    """Checks, just before a sensitive call runs, that its approval was recorded (the
    serving layer's approval log): None if it was, else why not."""

    async def check(self, thread_id: str, call: dict[str, Any],
                    decision: dict[str, Any]) -> str | None: ...
