"""Our Ray Serve cluster as a child process of the benchmark.

    REDIS_URL=... OPENAI_BASE_URL=... python -m bench.cluster_server --config X --port N [--hop]
        [--project path/langgraph.json]

A child process, because Ray can be initialised only once per process and the benchmark
deploys several configurations (1 and 2 replicas) one after the other. Prints
``READY <url>`` when the app answers, then (``--hop``) ``HOP <json>``: the Ray handle hop
micro-benchmark, measured on this same Ray before any load. ``--project``: that
``langgraph.json``'s graphs served too, read and checked as ``python -m serve_app --config``
does. Stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path

from agents.settings import get_settings
from serve_app.__main__ import check_project, open_project
from serve_app.ops.launcher import serve_cluster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hop", action="store_true", help="run the handle-hop micro-benchmark")
    parser.add_argument("--project", type=Path, help="a langgraph.json to serve too")
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    settings = get_settings()
    project = open_project(args.project) if args.project else None
    if project is not None:
        check_project(project, settings)
    with serve_cluster(settings, args.config, port=args.port, project=project) as url:
        print(f"READY {url}", flush=True)
        if args.hop:
            from bench.ray_hop import measure_hops

            try:
                print(f"HOP {json.dumps(measure_hops())}", flush=True)
            except Exception as exc:  # reported, not fatal: the load test goes on
                print(f"HOP {json.dumps({'error': f'{type(exc).__name__}: {exc}'})}", flush=True)
        stop.wait()
    print("STOPPED", flush=True)


if __name__ == "__main__":
    main()
