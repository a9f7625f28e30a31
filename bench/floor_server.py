"""The no-distribution floor: our graphs and our HTTP API in one plain uvicorn process.

    REDIS_URL=... OPENAI_BASE_URL=... python -m bench.floor_server --port N

The same code as a cluster replica (``AgentService`` + ``build_api`` over the same Redis
checkpointer), with the specialists in-process (``AgentSystem``) instead of behind Ray
handles: what one process does with no Ray at all, the floor our distribution must beat.
"""

from __future__ import annotations

import argparse
import asyncio

import uvicorn

from agents.settings import Settings
from agents.system import AgentSystem, Runtime
from serve_app.api.http_api import build_api
from serve_app.resources.service import AgentService


async def serve(port: int) -> None:
    runtime = await Runtime.create(Settings())
    service = AgentService.in_process(AgentSystem(runtime), replica_id="floor")
    service.executor.start()  # needs the running loop
    config = uvicorn.Config(build_api(service), host="127.0.0.1", port=port,
                            log_level="warning", access_log=False)
    try:
        await uvicorn.Server(config).serve()
    finally:
        await service.aclose()
        await runtime.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop  # what plain ``uvicorn`` picks when it is installed
    except ImportError:
        asyncio.run(serve(args.port))
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(args.port))


if __name__ == "__main__":
    main()
