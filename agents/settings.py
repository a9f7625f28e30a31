"""One settings object for the whole system, read from env vars and ``configs/agents.yaml``.

Precedence (highest first): explicit keyword arguments, environment variables
(``AGENT_CLUSTER_<FIELD>``, nested with ``__``; plus the conventional ``REDIS_URL``,
``OPENAI_BASE_URL``, ``OPENAI_API_KEY`` and ``OPENAI_MODEL``), the YAML file named by
``AGENT_CLUSTER_CONFIG`` (default ``configs/agents.yaml``), then the defaults below.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ROLES = ("researcher", "coder", "reviewer")


def _config_file() -> Path:
    return Path(os.environ.get("AGENT_CLUSTER_CONFIG", PROJECT_ROOT / "configs" / "agents.yaml"))


class RedisSettings(BaseModel):
    """Connection pool shared by everything in one process (checkpoints, tools, runs)."""

    pool_size: int = Field(64, ge=1, description="BlockingConnectionPool max_connections")
    pool_timeout_s: float = Field(5.0, gt=0, description="wait for a free connection")
    socket_timeout_s: float = Field(5.0, gt=0, description="per-command socket timeout")
    connect_timeout_s: float = Field(2.0, gt=0, description="timeout of opening a connection")
    retries: int = Field(5, ge=0, description="reconnect attempts (exponential backoff)")
    checkpoint_ttl_minutes: float | None = Field(
        None, description="expire checkpoints this long after their last write (None: keep)"
    )
    maxmemory: str | None = Field(
        "2gb", description="the embedded Redis's maxmemory (policy noeviction: when full, "
        "writes are refused, nothing stored is evicted); None: no limit")
    cluster: bool = Field(
        False, description="REDIS_URL is a node of a Redis Cluster (OSS cluster protocol): "
        "every process uses RedisCluster clients")
    shards: int = Field(
        0, ge=0, description="without REDIS_URL: start an embedded Redis Cluster of this many "
        "masters (implies cluster) instead of one embedded Redis; 0: one Redis")
    replicas: int = Field(0, ge=0, description="replicas per master of the embedded cluster")

    @model_validator(mode="after")
    def _shards_are_a_cluster(self) -> RedisSettings:
        if self.shards:
            self.cluster = True
        return self


class ModelSettings(BaseModel):
    """Any OpenAI-compatible endpoint: the stub, OpenAI, vLLM, Ollama."""

    base_url: str | None = Field(None, description="None: the embedded stub model server")
    api_key: str = Field("stub-key", description="the endpoint's API key")
    name: str = Field("stub-model", description="the model every role calls (a run's "
                      "context may name another)")
    temperature: float = Field(0.0, description="sampling temperature of every call")
    timeout_s: float = Field(60.0, description="one model call's HTTP timeout")
    max_retries: int = Field(3, description="retries of a call after 429, 5xx or a timeout "
                             "(exponential backoff with jitter); then the run errors")


class StubModelSettings(BaseModel):
    """Latency and faults of the embedded stub model server."""

    ttft_ms: float = Field(0.0, ge=0, description="time to first token")
    tokens_per_s: float = Field(0.0, ge=0, description="0: no delay between tokens")
    fault_rate: float = Field(0.0, ge=0, le=1, description="share of requests that fail")
    fault_status: int = Field(500, description="HTTP status of an injected fault (429 or 5xx)")


class SandboxSettings(BaseModel):
    """Limits and isolation of the coder's Python subprocess (``agents/tools/sandbox.py``)."""

    timeout_s: float = Field(10.0, description="wall time of one execution; then its "
                             "processes are killed")
    memory_mb: int = Field(512, description="address space of each process (AS)")
    max_output_chars: int = Field(4000, description="characters kept of stdout (its "
                                  "head) and of stderr (its tail)")
    isolation: str = Field(
        "auto", pattern="^(auto|namespaces|user|python)$",
        description="the strongest isolation to use (auto: the strongest this machine allows); "
        "a weaker one is used, with a warning, where it is not permitted")
    max_processes: int = Field(64, ge=1, description="processes + threads of one run (NPROC)")
    max_open_files: int = Field(64, ge=16, description="open files of each process (NOFILE)")
    max_file_mb: int = Field(16, ge=1, description="largest file a run can write (FSIZE)")
    scratch_mb: int = Field(
        64, ge=1, description="size of a run's working dir, a tmpfs, under namespaces")
    uid_base: int = Field(
        1_900_000_000, ge=1000, description="each run gets a uid (and group) of its own above "
        "this, so runs cannot signal, trace or starve each other; it is also the group that "
        "may write to the persist workspace")
    uid_count: int = Field(1_000_000, ge=1, description="how many uids above uid_base")


class ApprovalPolicy(BaseModel):
    """Which tool calls must wait for a human before they run."""

    always: list[str] = Field(["issue_refund", "delete_records"],
                              description="tools that always wait for a decision")
    when_args: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"run_python": {"persist": True}},
        description="tool -> {arg: value}: sensitive when every listed arg has that value",
    )

    def requires_approval(self, tool: str, args: dict[str, Any]) -> bool:
        if tool in self.always:
            return True
        conditions = self.when_args.get(tool)
        return bool(conditions) and all(args.get(k) == v for k, v in conditions.items())


class ApiSettings(BaseModel):
    """The HTTP API's runs and streams."""

    heartbeat_s: float = Field(5.0, gt=0, description="SSE keep-alive comment period")
    event_ttl_s: int = Field(3600, ge=1, description="how long a run's events can be replayed")
    event_linger_ms: float = Field(
        100.0, ge=0, description="an event within this of its stream's last write waits "
        "this long for company (one XADD and one reader wake-up for the batch; after a quiet "
        "spell an event waits 10 ms at most); 0: no batching")
    lease_ttl_s: float = Field(
        3.0, gt=0, description="run and thread leases; renewed every third of it"
    )
    stall_limit_s: float = Field(
        30.0, gt=0, description="a replica whose event loop is silent this long stops "
        "renewing its leases, so its runs go to another replica")
    sweep_interval_s: float = Field(
        1.0, gt=0, description="how often the cluster checks for runs whose owner died "
        "(each replica every this times the live replicas, jittered)")
    orphan_grace_s: float = Field(
        5.0, gt=0, description="a pending run nothing holds or queues is queued again "
        "after this (a replica died between two steps of taking it)")
    run_pool: str = Field(
        "agent-cluster", min_length=1,
        description="the queue this deployment's replicas pull runs from")
    max_concurrent_runs: int = Field(
        16, ge=1, description="at most this many runs at once per replica (fewer while its "
        "event loop lags: serve_app/runs/concurrency.py); the rest wait queued")
    loop_lag_target_ms: float = Field(
        20.0, gt=0, description="a replica takes fewer runs at once while its event loop "
        "wakes up later than this on average (CPU-bound), more while it is prompt")
    overhead_budget_s: float = Field(
        0.1, gt=0, description="...and while its runs' time outside model calls and tools "
        "(median) is more than this above the lowest seen lately")
    max_queued_runs: int = Field(
        32, ge=0, description="per live replica: past this many queued runs, new runs "
        "are refused (503 with Retry-After)")
    max_queue_wait_s: float = Field(
        0.2, gt=0, description="new runs are refused while the wait they would face in "
        "the queue (runs ahead / the rate it drains) or the oldest queued run's wait is "
        "longer than this")
    max_attempts: int = Field(3, ge=1, description="executions of a run before it errors")
    run_timeout_s: float = Field(
        600.0, gt=0, description="one execution of a run; then it ends with status timeout"
    )


class RetentionSettings(BaseModel):
    """What a thread keeps in Redis, applied as each run ends (no keyspace scans)."""

    enabled: bool = Field(True, description="False: keep everything (as before retention)")
    keep_latest: int = Field(
        0, ge=0, description="checkpoints kept per thread (and checkpoint namespace), newest "
        "first; besides these, every checkpoint a pending interrupt or a queued run needs; "
        "0: every checkpoint (history and time travel, as LangGraph; bytes linear in turns)")
    keep_for_s: float = Field(
        0.0, ge=0, description="with keep_latest > 0: also keep checkpoints younger than "
        "this, for time travel")
    keep_runs: int = Field(
        5, ge=1, description="finished run records kept per thread, newest first")
    events_grace_s: int = Field(
        60, ge=1, description="a finished run's event stream expires this long after its "
        "end (time to reconnect and read it); so does a thread-less run's thread")
    thread_ttl_minutes: float | None = Field(
        None, gt=0, description="default idle TTL of threads (minutes since their last "
        "activity), as ttl on threads.create sets it per thread; None: threads stay")
    sweep_interval_s: float = Field(
        5.0, gt=0, description="how often the cluster deletes expired threads and checks "
        "Redis memory (each replica every this times the live replicas, jittered)")
    delete_wait_s: float = Field(
        10.0, ge=0, description="DELETE of a busy thread cancels its runs and waits this "
        "long for them to end; past it 409")
    audit_ttl_days: float = Field(
        30.0, gt=0, description="approval decisions of pruned specialists' runs are kept "
        "this long (the thread's audit list, with the effect ledger's results)")
    keep_audit_on_delete: bool = Field(
        False, description="True: deleting a thread leaves its audit list and ledger "
        "entries to expire after audit_ttl_days instead of removing them")
    memory_warn_ratio: float = Field(
        0.85, gt=0, le=1, description="log a warning (and gauge redis_memory_ratio) once "
        "Redis uses this share of its maxmemory")


class ApiKey(BaseModel):
    """One key of the built-in API-key auth: only its SHA-256 is kept (``key`` given in
    plain text, e.g. from a secret in the environment, is hashed at load and dropped)."""

    identity: str = Field(min_length=1, description="who the key authenticates")
    sha256: str = Field("", pattern="^([0-9a-f]{64})?$",
                        description=("hex SHA-256 of the key: "
                                     "python -m serve_app.resources.auth hash KEY"))
    key: str | None = Field(None, exclude=True, repr=False,
                            description="the key in plain text; hashed at once, never kept")
    permissions: list[str] = Field(default_factory=list, description="the user's "
                                   "permissions, as LangGraph auth has them (with auth."
                                   "approver_permission it may decide approvals)")

    @model_validator(mode="after")
    def _hash_plain_key(self) -> ApiKey:
        if self.key:
            self.sha256 = hashlib.sha256(self.key.encode()).hexdigest()
            self.key = None
        if not self.sha256:
            raise ValueError(f"api key of {self.identity!r} needs sha256 (or key)")
        return self


class AuthSettings(BaseModel):
    """Who may call the API and do what (``serve_app/resources/auth.py``; docs/security.md)."""

    path: str | None = Field(
        None, description="a LangGraph auth object, as langgraph.json names it: "
        "'./auth.py:auth' (relative to the project root) or 'package.module:auth'")
    api_keys: list[ApiKey] = Field(
        default_factory=list, description="without an auth file: the built-in handler's "
        "keys (X-API-Key or Authorization: Bearer), stored hashed")
    approver_permission: str = Field(
        "approvals:write", min_length=1, description="the permission that may decide a "
        "pending approval of a sensitive tool (resume, /api/approve, update_state)")
    open_on_loopback: bool = Field(
        True, description="with neither an auth file nor API keys, serve without "
        "authentication, but only on a loopback address (the embedded default)")


class LimitsSettings(BaseModel):
    """Per-request and per-user limits (``serve_app/resources/limits.py``); 0 turns one off."""

    max_body_bytes: int = Field(1_048_576, ge=0, description="request body; past it 413")
    max_message_chars: int = Field(
        32_000, ge=0, description="one message's text in a run's input; past it 413")
    runs_per_minute: float = Field(
        60, ge=0, description="runs a user may start per minute (a Redis token bucket "
        "shared by every replica); past it 429 with Retry-After")
    runs_burst: int = Field(20, ge=0, description="runs a user may start at once "
                                                  "(the bucket's size)")
    concurrent_runs: int = Field(
        8, ge=0, description="runs of one user pending or running at once; past it 429")
    threads_per_user: int = Field(
        1000, ge=0, description="threads one user may own; past it 429")


class WebhookSettings(BaseModel):
    """Webhooks of runs and crons, and the approval webhook
    (``serve_app/resources/webhooks.py``)."""

    secret: str | None = Field(
        None, repr=False, description="HMAC-SHA256 key: each delivery carries "
        "X-Webhook-Signature: sha256=<hex of HMAC(secret, '<timestamp>.<body>')>; None: unsigned")
    approval_url: str | None = Field(
        None, description="POSTed when an approval becomes pending (thread, tool, args)")
    allow_private_hosts: bool = Field(
        False, description="allow destinations on loopback and private ranges (otherwise "
        "refused 422 'Webhook host blocked: ...', as LangGraph Platform does)")
    max_attempts: int = Field(5, ge=1, description="deliveries tried before giving up")
    backoff_s: float = Field(1.0, gt=0, description="wait before the first retry, doubled "
                                                    "after each failure (at most 5 minutes)")
    timeout_s: float = Field(10.0, gt=0, description="one delivery's HTTP timeout")
    poll_interval_s: float = Field(
        1.0, gt=0, description="how often the cluster drains the outbox (cluster-wide: each "
        "replica drains every interval x live replicas, jittered); a run's entry is first "
        "due 0.5 s after it is made, then as the run goes on")


class CronSettings(BaseModel):
    """Scheduled runs (``serve_app/resources/crons.py``)."""

    tick_interval_s: float = Field(
        1.0, gt=0, description="how often the cluster looks for due crons (cluster-wide: "
        "each replica looks every interval x live replicas, jittered)")


class Budget(BaseModel):
    """What one run, thread or user may spend (``agents/budgets.py``); 0 or None: no limit."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = Field(None, ge=0, description="input + output tokens")
    max_cost_usd: float | None = Field(
        None, ge=0, description="cost in USD at the price table (configs/prices.yaml, "
        "genai-prices)")
    max_steps: int | None = Field(None, ge=0, description="model calls")

    def limits(self) -> dict[str, float]:
        """The limits that are on, by measure (``tokens``, ``cost_usd``, ``steps``)."""
        return {measure: float(value) for measure, value in (
            ("tokens", self.max_tokens), ("cost_usd", self.max_cost_usd),
            ("steps", self.max_steps)) if value}

    def within(self, asked: Budget | None) -> Budget:
        """A run's own budget (its ``context``) under this one: never above a limit here."""
        if asked is None:
            return self
        return Budget(**{name: min((v for v in (getattr(self, name), getattr(asked, name))
                                    if v), default=None)
                         for name in ("max_tokens", "max_cost_usd", "max_steps")})


class UserBudget(Budget):
    window_s: float = Field(86400.0, gt=0, description="a user's spend is counted over "
                            "fixed windows this long; past a limit, new runs get 429 until "
                            "the window ends")


class BudgetSettings(BaseModel):
    """Limits of a run, of a thread (all its runs) and of a user over a window, counted in
    Redis as the model is called, so every replica and a retried run see the same spend."""

    run: Budget = Budget()
    thread: Budget = Budget()
    user: UserBudget = UserBudget()


class BreakerSettings(BaseModel):
    """The circuit breaker each model endpoint shares across replicas (``agents/breaker.py``)."""

    failures: int = Field(5, ge=1, description="consecutive failed calls that open it")
    cooldown_s: float = Field(30.0, gt=0, description="how long it stays open (longer if "
                              "the provider's Retry-After says so)")
    max_wait_s: float = Field(
        60.0, ge=0, description="a model call waits for it to close this long at most "
        "(within its run's deadline); past that it fails at once with ModelUnavailable")


class StoreIndexSettings(BaseModel):
    """The long-term store's semantic index (langgraph.json ``store.index``): what
    ``asearch(namespace, query=...)`` ranks by, with vectors in Redis (``agents.memory``)."""

    dims: int = Field(ge=1, description="the embeddings' size (asked of the endpoint as "
                                        "'dimensions')")
    embed: str = Field(pattern=r"^openai:\S+$", description="'openai:<model>': embeddings "
                       "from the OpenAI-compatible endpoint of model.base_url and api_key")
    fields: list[str] = Field(["$"], min_length=1, description="the JSON paths of an item's "
                              "value that are embedded ('$': all of it)")

    @property
    def model(self) -> str:
        return self.embed.removeprefix("openai:")


class StoreTtlSettings(BaseModel):
    """Expiry of the long-term store's items (langgraph.json ``store.ttl``), kept by Redis."""

    default_ttl: float | None = Field(
        None, gt=0, description="minutes an item lives after its last write (or read, with "
        "refresh_on_read) unless its put sets a ttl; None: items stay")
    refresh_on_read: bool = Field(True, description="a read (get, search) restarts the "
                                                    "items' ttl")


class StoreSettings(BaseModel):
    """The long-term memory store every graph's ``runtime.store`` is (``agents.memory``)."""

    index: StoreIndexSettings | None = Field(
        None, description="None: no semantic search (asearch filters and lists only)")
    ttl: StoreTtlSettings = Field(StoreTtlSettings(), description="items' expiry")


class RoleSettings(BaseModel):
    """One worker of the supervisor: the built-in ReAct specialist with its tools, or a
    graph of the served project (``graph``), routed to alike."""

    description: str = Field(description="what it does, as the supervisor and the "
                             "specialist's own prompt read it")
    tools: list[str] = Field(
        default_factory=list, description="the tools it may call: a name of agents/tools/ or "
        "an import path 'package.module:attr' of a tool or function (the approval policy "
        "names it by its tool name)")
    max_steps: int = Field(12, ge=1, description="model calls per specialist run")
    graph: str | None = Field(
        None, description="a graph id of the served project (make run CONFIG=langgraph.json): "
        "this role runs that graph, its task as a user message, its last AI message the "
        "answer, its interrupts the run's (tools and max_steps do not apply)")

    @model_validator(mode="after")
    def _graph_or_tools(self) -> RoleSettings:
        if self.graph and self.tools:
            raise ValueError(f"a role runs graph {self.graph!r} or the ReAct specialist with "
                             "tools, not both")
        return self


def specialist_roles(roles: dict[str, RoleSettings]) -> list[str]:
    """The roles the built-in ReAct specialist plays (a deployment and an assistant each);
    the others run a project graph."""
    return [name for name, role in roles.items() if not role.graph]


def graph_roles(roles: dict[str, RoleSettings], graph_ids: Iterable[str]) -> dict[str, str]:
    """Role -> the project graph it runs; ValueError naming a role whose graph is not one of
    ``graph_ids`` (the start stops on it)."""
    known = sorted(graph_ids)
    wanted = {name: role.graph for name, role in roles.items() if role.graph}
    missing = {name: graph for name, graph in wanted.items() if graph not in known}
    if missing:
        raise ValueError(f"roles {missing} name graphs the project does not have (its "
                         f"graphs: {known})")
    return wanted


class GraphDeploymentSettings(BaseModel):
    """The replicas of one project graph's deployment (``serve_app/deployments/graph.py``):
    they pull that graph's runs from a pool of its own and scale on it
    (``serve_app/deployments/autoscaling.py``), without taking other graphs' slots."""

    min_replicas: int = Field(
        1, ge=1, description="replicas kept however idle (at least one: replicas pull their "
        "runs from Redis, so an empty deployment would never see a backlog to scale on)")
    max_replicas: int = Field(2, ge=1, description="replicas at most, whatever the backlog")
    upscale_delay_s: float = Field(5.0, ge=0, description="a backlog this long adds replicas")
    downscale_delay_s: float = Field(60.0, ge=0, description="idle this long removes one")
    graceful_shutdown_timeout_s: float = Field(
        20.0, ge=0, description="a stopping replica hands its runs back within this; past "
        "it, they come back when their leases expire (as a new attempt)")


class GraphDeploymentsSettings(BaseModel):
    """Replicas per project graph (``make run CONFIG=langgraph.json``): ``default`` for every
    graph, ``graphs.<graph id>`` the fields that graph changes (YAML, or the JSON of
    ``AGENT_CLUSTER_GRAPH_DEPLOYMENTS__GRAPHS``)."""

    default: GraphDeploymentSettings = Field(
        default_factory=GraphDeploymentSettings, description="every graph's, unless changed")
    graphs: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="graph id -> the fields of ``default`` it changes")

    def of(self, graph_id: str) -> GraphDeploymentSettings:
        return GraphDeploymentSettings.model_validate(
            {**self.default.model_dump(), **self.graphs.get(graph_id, {})})


def _default_roles() -> dict[str, RoleSettings]:
    return {
        "researcher": RoleSettings(
            description="finds facts in the document corpus and cites its sources, and "
                        "remembers users' stated preferences across threads",
            tools=["search_corpus", "read_document", "remember", "recall"],
        ),
        "coder": RoleSettings(
            description="writes and runs Python, and performs back-office actions",
            tools=["run_python", "issue_refund", "delete_records"],
        ),
        "reviewer": RoleSettings(
            description="reviews code or answers and gives a verdict with reasons",
            tools=["review_code"],
        ),
    }


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AGENT_CLUSTER_", env_nested_delimiter="__", extra="ignore"
    )

    redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices("redis_url", "REDIS_URL", "AGENT_CLUSTER_REDIS_URL"),
        description="None: start the embedded Redis",
    )
    redis: RedisSettings = RedisSettings()
    model: ModelSettings = ModelSettings()
    stub: StubModelSettings = StubModelSettings()
    sandbox: SandboxSettings = SandboxSettings()
    approval: ApprovalPolicy = ApprovalPolicy()
    roles: dict[str, RoleSettings] = Field(
        default_factory=_default_roles, description="the workers the supervisor routes to, "
        "by name: a ReAct specialist (one Serve deployment each) or a graph of the served "
        "project (its deployment)")
    api: ApiSettings = ApiSettings()
    retention: RetentionSettings = RetentionSettings()
    auth: AuthSettings = AuthSettings()
    limits: LimitsSettings = LimitsSettings()
    webhooks: WebhookSettings = WebhookSettings()
    crons: CronSettings = CronSettings()
    budgets: BudgetSettings = BudgetSettings()
    breaker: BreakerSettings = BreakerSettings()
    store: StoreSettings = Field(StoreSettings(), description="the long-term store: "
                                 "semantic index and ttl")
    graph_deployments: GraphDeploymentsSettings = Field(
        default_factory=GraphDeploymentsSettings,
        description="replicas and autoscaling of each project graph's deployment")
    supervisor_max_steps: int = Field(8, ge=1, description="routing decisions per turn")
    token_linger_ms: float = Field(
        40.0, ge=0, description="a specialist's later tokens wait this long to be merged "
        "into one event (the first token of a message never waits); 0: one event per token")
    data_dir: Path = Field(PROJECT_ROOT / ".data", description="the embedded services' "
                           "data and logs (Redis's AOF, the stub) and the Ray node's "
                           "record (ray-head.json); one running start per data dir")
    corpus_dir: Path = Field(PROJECT_ROOT / "data" / "corpus", description="the "
                             "researcher's documents (*.md), indexed into Redis at start")
    workspace_dir: Path = Field(PROJECT_ROOT / ".data" / "workspace", description="where "
                                "an approved persist run of run_python works and writes")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            env_settings,
            _OpenAIEnv(settings_cls),
        ]
        if _config_file().exists():
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=_config_file()))
        return tuple(sources)


class _OpenAIEnv(PydanticBaseSettingsSource):
    """The OpenAI client's conventional variables fill ``model`` without our prefix."""

    _ENV = {"OPENAI_BASE_URL": "base_url", "OPENAI_API_KEY": "api_key", "OPENAI_MODEL": "name"}

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        model = {key: os.environ[env] for env, key in self._ENV.items() if os.environ.get(env)}
        return {"model": model} if model else {}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (tests build their own ``Settings(...)`` instead)."""
    return Settings()
