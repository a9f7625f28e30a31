"""Every Redis key the serving layer writes, in one place (prefix ``ac:``)."""

PREFIX = "ac:"
ALL_INFLIGHT = f"{PREFIX}runs:inflight"  # every non-terminal run, for the sweeper
RUN_SEQUENCE = f"{PREFIX}seq"  # creation order of runs
ALL_THREADS = f"{PREFIX}threads"  # every thread by creation time, for search


def thread_key(thread_id: str) -> str:
    return f"{PREFIX}thread:{thread_id}"


def thread_runs_key(thread_id: str) -> str:
    return f"{PREFIX}thread:{thread_id}:runs"


def queue_key(thread_id: str) -> str:
    return f"{PREFIX}thread:{thread_id}:queue"


def thread_lease_key(thread_id: str) -> str:
    return f"{PREFIX}thread:{thread_id}:active"


def fence_key(thread_id: str) -> str:
    return f"{PREFIX}thread:{thread_id}:fence"


def run_key(run_id: str) -> str:
    return f"{PREFIX}run:{run_id}"


def events_key(run_id: str) -> str:
    return f"{PREFIX}run:{run_id}:events"


def run_lease_key(run_id: str) -> str:
    return f"{PREFIX}run:{run_id}:lease"


def claim_key(run_id: str, attempt: int) -> str:
    return f"{PREFIX}run:{run_id}:claim:{attempt}"
