"""The runtime context of a run (LangGraph 1.x ``context_schema``): per-run settings that
are not state, set by an assistant and overridden by a run's ``context``."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import SystemMessage
from langgraph.runtime import get_runtime
from pydantic import BaseModel, ConfigDict, Field

from agents.settings import Budget


class RunContext(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, max_length=200,
                              description="the model name sent to the model API")
    temperature: float | None = Field(None, ge=0, le=2)
    locale: str | None = Field(None, max_length=35,
                               description="the user's locale (BCP 47), e.g. fr-FR")
    budget: Budget | None = Field(
        None, description="this run's budget (agents.budgets), never above the operator's "
        "budgets.run")

    def model_kwargs(self) -> dict[str, Any]:
        """Model call parameters that override the configured model's."""
        return self.model_dump(include={"model", "temperature"}, exclude_none=True)

    def instructions(self) -> list[SystemMessage]:
        if self.locale is None:
            return []
        return [SystemMessage(f"The user's locale is {self.locale}: answer in its language.")]


def current_context() -> RunContext:
    """This run's context (all defaults if it set none)."""
    context = get_runtime(RunContext).context
    return context if isinstance(context, RunContext) else RunContext()
