"""Human approval of sensitive tool calls: what is asked, and what an answer may say.

The question is also LangGraph's ``HumanInterrupt`` (``action_request``, ``config``,
``description``) and an answer may be LangGraph's ``HumanResponse`` (``{"type": "accept" |
"edit" | "response" | "ignore", "args": ...}``, alone or in a list of one, as LangChain's
Agent Inbox and agent-chat-ui send it), so those clients can answer our approvals; the
same shapes describe a user's graph that interrupts with a bare ``HumanInterrupt``.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, computed_field, model_validator

from agents.errors import InvalidDecisionError


class ActionRequest(BaseModel):
    """LangGraph's: the action (our tool) a human is asked about, with its arguments."""

    action: str
    args: dict[str, Any] = Field(default_factory=dict)


class HumanInterruptConfig(BaseModel):
    """LangGraph's: which answers the interrupt takes."""

    allow_ignore: bool = True
    allow_respond: bool = True
    allow_edit: bool = True
    allow_accept: bool = True


class HumanInterrupt(BaseModel):
    """LangGraph's ``HumanInterrupt`` (``langgraph.prebuilt.interrupt``), as read from an
    interrupt's value."""

    action_request: ActionRequest
    config: HumanInterruptConfig
    description: str | None = None


class ApprovalRequest(BaseModel):
    """The payload of the ``interrupt()``: shown to the human in the thread state; its
    ``action_request``, ``config`` and ``description`` make it a ``HumanInterrupt``."""

    type: Literal["approval"] = "approval"
    tool: str
    args: dict[str, Any]
    tool_call_id: str
    requested_by: str = Field(description="the agent (role) that wants to run the tool")
    config: HumanInterruptConfig = HumanInterruptConfig()

    @computed_field
    @property
    def action_request(self) -> ActionRequest:
        return ActionRequest(action=self.tool, args=self.args)

    @computed_field
    @property
    def description(self) -> str:
        return (f"The {self.requested_by} asks to run `{self.tool}` with these arguments. "
                "Accept to run it, edit its arguments, or respond with why not (the agent "
                "is told); ignore rejects it.")


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


ALLOWED_BY = {"accept": "allow_accept", "edit": "allow_edit", "response": "allow_respond",
              "ignore": "allow_ignore"}


class HumanResponse(BaseModel):
    """LangGraph's answer to a ``HumanInterrupt``. As a decision of ours: accept approves,
    edit edits (``args`` the edited ``ActionRequest``), response rejects with its text as
    the reason (the tool is not run and the agent reads the text, as LangGraph means it)
    and ignore rejects. ``by`` is ours: who answers, kept only without auth."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["accept", "edit", "response", "ignore"]
    args: ActionRequest | str | None = None
    by: str | None = None

    @model_validator(mode="after")
    def _args_fit_the_type(self) -> HumanResponse:
        if self.type == "edit" and not isinstance(self.args, ActionRequest):
            raise ValueError("an 'edit' response needs args {'action': ..., 'args': {...}}")
        if self.type == "response" and not (isinstance(self.args, str) and self.args.strip()):
            raise ValueError("a 'response' needs its text in args")
        return self

    def decision(self) -> ApprovalDecision:
        by = {"by": self.by} if self.by else {}
        if self.type == "accept":
            return ApprovalDecision(action="approve", **by)
        if self.type == "edit":
            return ApprovalDecision(action="edit", args=self.args.args, **by)
        reason = self.args.strip() if self.type == "response" else "ignored"
        return ApprovalDecision(action="reject", reason=reason, **by)

    def wire(self) -> dict[str, Any]:
        """As LangGraph's ``HumanResponse``: what a user's graph gets back."""
        return self.model_dump(mode="json", exclude={"by"})


def human_interrupts(value: Any) -> list[HumanInterrupt] | None:
    """The ``HumanInterrupt`` requests of an interrupt's value (a dict, or a list as
    ``interrupt([request])`` raises it), or None when it is not of that shape."""
    items = value if isinstance(value, list) else [value]
    try:
        return [HumanInterrupt.model_validate(item) for item in items] or None
    except ValidationError:
        return None


def human_responses(value: Any) -> list[HumanResponse] | None:
    """A resume value as ``HumanResponse`` answers (one, or a list), or None when it is
    not of that shape (no ``type``, or our own ``action``); a malformed one raises
    ``InvalidDecisionError``."""
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(i, dict) and "type" in i and "action" not in i
                            for i in items):
        return None
    try:
        return [HumanResponse.model_validate(item) for item in items]
    except ValidationError as exc:
        raise InvalidDecisionError(f"invalid HumanResponse {value!r}: {exc}") from exc


def check_responses(asked: list[HumanInterrupt], responses: list[HumanResponse]) -> None:
    """One response per request, each of a type its config allows, an edit of the same
    action: else ``InvalidDecisionError``."""
    if len(asked) != len(responses):
        raise InvalidDecisionError(f"{len(asked)} request(s) asked, {len(responses)} "
                                   "HumanResponse(s) given: answer each one")
    for request, response in zip(asked, responses, strict=True):
        if not getattr(request.config, ALLOWED_BY[response.type]):
            raise InvalidDecisionError(f"{response.type!r} is not allowed here "
                                       f"({ALLOWED_BY[response.type]} is false)")
        if response.type == "edit" and response.args.action != request.action_request.action:
            raise InvalidDecisionError(
                f"the edit is of {response.args.action!r}, the request of "
                f"{request.action_request.action!r}")


def parse_decision(value: Any) -> ApprovalDecision:
    """Validate a resume value (ours, or a ``HumanResponse``), raising
    ``InvalidDecisionError`` with the reason."""
    if isinstance(value, ApprovalDecision):
        return value
    if isinstance(value, str):
        value = {"action": value}
    responses = human_responses(value)
    if responses is not None:
        if len(responses) != 1:
            raise InvalidDecisionError("an approval takes one HumanResponse, "
                                       f"{len(responses)} were given")
        return responses[0].decision()
    try:
        return ApprovalDecision.model_validate(value)
    except ValidationError as exc:
        raise InvalidDecisionError(f"invalid approval decision {value!r}: {exc}") from exc


class ApprovalVerifier(Protocol):
    """Checks, just before a sensitive call runs, that its approval was recorded (the
    serving layer's approval log): None if it was, else why not."""

    async def check(self, thread_id: str, call: dict[str, Any],
                    decision: dict[str, Any]) -> str | None: ...
