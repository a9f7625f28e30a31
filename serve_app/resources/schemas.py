"""HTTP bodies, following LangGraph Platform's API. Unknown fields are refused (422 naming
the field): a field this API does not implement must never look accepted."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MultitaskStrategy = Literal["reject", "enqueue", "interrupt", "rollback"]


SortOrder = Literal["asc", "desc"]
Breakpoints = Literal["*"] | list[str]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AssistantFields(Body):
    """What an assistant version holds besides its graph."""

    config: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    name: str | None = Field(None, max_length=200)
    description: str | None = Field(None, max_length=10_000)
    interrupt_before: Breakpoints | None = Field(
        None, description="breakpoints of its runs (a run's own replace them)")
    interrupt_after: Breakpoints | None = None


class AssistantCreate(AssistantFields):
    graph_id: str
    assistant_id: str | None = None
    if_exists: Literal["raise", "do_nothing"] = "raise"


class AssistantPatch(AssistantFields):
    graph_id: str | None = None


class AssistantFilter(Body):
    graph_id: str | None = None
    name: str | None = None
    metadata: dict[str, Any] | None = None


class AssistantSearch(AssistantFilter):
    limit: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0)
    sort_by: Literal["assistant_id", "graph_id", "name", "created_at", "updated_at"] | None \
        = None
    sort_order: SortOrder | None = None
    select: list[Literal["assistant_id", "graph_id", "name", "description", "config",
                         "context", "metadata", "version", "created_at", "updated_at"]] \
        | None = None


class AssistantVersions(Body):
    metadata: dict[str, Any] | None = None
    limit: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0)


class AssistantLatest(Body):
    version: int = Field(ge=1)


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


class ThreadCount(Body):
    metadata: dict[str, Any] | None = None
    values: dict[str, Any] | None = None
    status: Literal["idle", "busy", "interrupted", "error"] | None = None


class ThreadSearch(ThreadCount):
    ids: list[str] | None = Field(None, max_length=1000)
    limit: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0)
    sort_by: Literal["thread_id", "status", "created_at", "updated_at"] | None = None
    sort_order: SortOrder | None = None
    select: list[Literal["thread_id", "created_at", "updated_at", "metadata", "status",
                         "values", "interrupts", "error", "ttl"]] | None = None


class CheckpointRef(Body):
    checkpoint_id: str = Field(min_length=1)
    checkpoint_ns: str = ""
    thread_id: str | None = Field(None, description="if given, the thread of the request")
    checkpoint_map: dict[str, Any] | None = Field(
        None, description="checkpoint ids of the parent graphs (a subgraph's checkpoint)")


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
    """Every field ``langgraph_sdk`` sends for a run (``langsmith_tracer`` excepted: runs
    are traced with OpenTelemetry here, so that field is refused, 422)."""

    assistant_id: str
    input: dict[str, Any] | None = None
    command: CommandBody | None = None
    stream_mode: str | list[str] = "values"
    stream_subgraphs: bool = False
    stream_resumable: bool = Field(
        False, description="streams are always resumable here: every event is kept "
        "(api.event_ttl_s) for a rejoin after Last-Event-ID, whatever this says")
    config: RunConfig | None = None
    context: dict[str, Any] | None = Field(
        None, description="the graph's runtime context (its context_schema), over the "
        "assistant's")
    metadata: dict[str, Any] | None = None
    checkpoint: CheckpointRef | None = Field(
        None, description="start from this checkpoint (a branch); the history stays")
    checkpoint_id: str | None = None
    interrupt_before: Breakpoints | None = None
    interrupt_after: Breakpoints | None = None
    durability: Literal["sync", "async", "exit"] | None = None
    checkpoint_during: bool | None = Field(
        None, description="deprecated form of durability: true = async, false = exit")
    feedback_keys: list[str] | None = Field(None, max_length=100)
    webhook: str | None = Field(None, max_length=2000)
    after_seconds: float | None = Field(None, ge=0, le=366 * 86400)
    multitask_strategy: MultitaskStrategy = "enqueue"
    if_not_exists: Literal["create", "reject"] = "reject"
    strict_resume: bool | None = Field(
        None, description="a resume without a pending interrupt is always refused (409)")
    on_disconnect: Literal["cancel", "continue"] = "continue"
    on_completion: Literal["delete", "keep"] = Field(
        "delete", description="thread-less runs: delete their thread after the run (after "
        "retention.events_grace_s) or keep it")

    @property
    def resumes(self) -> bool:
        """It answers an interrupt (``command.resume``)."""
        return self.command is not None and self.command.resume is not None


class RunBatchItem(RunCreate):
    thread_id: str | None = Field(None, description="none: a thread-less run")


class RunCancelMany(Body):
    thread_id: str | None = None
    run_ids: list[str] | None = Field(None, max_length=1000)
    status: Literal["pending", "running", "all"] | None = None


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
