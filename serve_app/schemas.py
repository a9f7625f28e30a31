"""HTTP bodies, following LangGraph Platform's API (unknown fields are ignored)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MultitaskStrategy = Literal["reject", "enqueue", "interrupt", "rollback"]


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class AssistantSearch(Body):
    graph_id: str | None = None
    metadata: dict[str, Any] | None = None
    limit: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0)


class ThreadCreate(Body):
    thread_id: str | None = None
    metadata: dict[str, Any] | None = None
    if_exists: Literal["raise", "do_nothing"] = "raise"
    ttl: float | dict[str, Any] | None = Field(
        None, description="minutes, or {'strategy': 'delete', 'ttl': minutes}: deleted "
        "after that long without activity")


class ThreadPrune(Body):
    thread_ids: list[str] = Field(min_length=1, max_length=1000)
    strategy: Literal["delete", "keep_latest"] = "delete"


class ThreadSearch(Body):
    metadata: dict[str, Any] | None = None
    status: Literal["idle", "busy", "interrupted", "error"] | None = None
    limit: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0)


class CheckpointRef(Body):
    checkpoint_id: str = Field(min_length=1)
    checkpoint_ns: str = ""


class StateUpdate(Body):
    values: dict[str, Any] | list[Any] | None = None
    as_node: str | None = None
    checkpoint: CheckpointRef | None = None
    checkpoint_id: str | None = Field(None, description="the older flat form of checkpoint")

    @property
    def target(self) -> str | None:
        return self.checkpoint.checkpoint_id if self.checkpoint else self.checkpoint_id


class StateAt(Body):
    checkpoint: CheckpointRef
    subgraphs: bool = False


class ThreadPatch(Body):
    metadata: dict[str, Any] = Field(default_factory=dict)
    ttl: float | dict[str, Any] | None = None


class HistoryQuery(Body):
    limit: int = Field(10, ge=1, le=1000)
    before: str | dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None


class CommandBody(Body):
    resume: Any = None
    update: Any = None
    goto: Any = None


class RunConfig(BaseModel):
    """LangChain's RunnableConfig as a run body carries it; other keys pass through."""

    model_config = ConfigDict(extra="allow")
    configurable: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    recursion_limit: int | None = Field(None, ge=1)


class RunCreate(Body):
    assistant_id: str
    input: dict[str, Any] | None = None
    command: CommandBody | None = None
    stream_mode: str | list[str] = "values"
    stream_subgraphs: bool = False
    config: RunConfig | None = None
    metadata: dict[str, Any] | None = None
    checkpoint_id: str | None = None
    multitask_strategy: MultitaskStrategy = "enqueue"
    if_not_exists: Literal["create", "reject"] = "reject"
    on_disconnect: Literal["cancel", "continue"] = "continue"
    on_completion: Literal["delete", "keep"] = Field(
        "delete", description="thread-less runs: delete their thread after the run (after "
        "retention.events_grace_s) or keep it")


class ChatRequest(Body):
    thread_id: str = Field(min_length=1, max_length=200)
    message: str = Field(min_length=1, max_length=100_000)
    stream: bool = True


class ApproveRequest(Body):
    thread_id: str = Field(min_length=1, max_length=200)
    action: Literal["approve", "reject", "edit"]
    args: dict[str, Any] | None = None
    by: str = "api"
    reason: str | None = None
    interrupt_id: str | None = Field(None, description="needed when several approvals wait")
    stream: bool = False
