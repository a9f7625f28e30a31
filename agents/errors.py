"""Typed errors that callers (the HTTP layer, notebooks) can tell apart."""


class AgentClusterError(Exception):
    """Base of our own errors."""


class RedisUnavailableError(AgentClusterError):
    """Redis cannot be reached; nothing was run."""


class StepLimitExceeded(AgentClusterError):
    """A graph looped more often than its step limit allows (a runaway loop)."""

    def __init__(self, who: str, limit: int):
        super().__init__(f"{who} stopped after reaching its step limit of {limit} steps")
        self.who = who
        self.limit = limit


class UnknownRoleError(AgentClusterError):
    """A worker role that is not configured."""


class InvalidDecisionError(AgentClusterError, ValueError):
    """An approval decision that is not approve / reject / edit with the right fields."""


class WorkerFailed(AgentClusterError):
    """A specialist failed; a plain exception so it crosses a Ray handle intact."""
