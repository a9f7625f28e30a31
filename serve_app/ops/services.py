"""The embedded services alone, for a Ray user who deploys with ``serve run`` instead of
``make run``:

    .venv/bin/python -m serve_app.ops.services      # prints the export lines, runs until Ctrl-C
    # in another shell, in the project's root, with the venv active:
    export REDIS_URL=... OPENAI_BASE_URL=...        # as printed
    serve run configs/local.yaml

Redis (RedisJSON + RediSearch) and the stub model start as ``make run`` starts them
(``agents/local/services.py``: not when ``REDIS_URL`` / ``OPENAI_BASE_URL`` are set already).
Every replica reads the printed variables from the environment ``serve run`` passes on to the
Ray it starts. SIGTERM or Ctrl-C stops both services.
"""

from __future__ import annotations

import shlex
import signal

from agents.local.services import local_services
from agents.settings import Settings, get_settings


def exports(settings: Settings) -> list[str]:
    """The shell lines that point a Serve app's replicas at these services."""
    env = {"REDIS_URL": settings.redis_url, "OPENAI_BASE_URL": settings.model.base_url}
    if settings.redis.cluster:
        env["AGENT_CLUSTER_REDIS__CLUSTER"] = "true"
    return [f"export {name}={shlex.quote(value or '')}" for name, value in env.items()]


def _stop_once(_signum: int, _frame: object) -> None:
    """The first SIGTERM or Ctrl-C unwinds the start; later ones are ignored until the
    services have stopped."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt


def main() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop_once)
    try:
        with local_services(get_settings()) as settings:
            print("\n".join(exports(settings)), flush=True)
            print("# then, in another shell with these exported: serve run configs/local.yaml\n"
                  "# Ctrl-C (or SIGTERM) here stops Redis and the stub model.", flush=True)
            while True:
                signal.pause()
    except KeyboardInterrupt:
        print("# stopped", flush=True)


if __name__ == "__main__":
    main()
