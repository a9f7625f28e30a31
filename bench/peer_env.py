"""A virtualenv of its own for ``langgraph dev`` (the LangGraph Platform peer).

Why not the project's venv: ``langgraph-cli[inmem]`` (langgraph-api 0.16) pins
``grpcio``/``protobuf`` older than the ones Ray 2.60 runs with here, so installing it next
to Ray would downgrade Ray's gRPC stack. The peer is a separate server process anyway; it
gets the same langgraph / langchain / redis versions as the project, read from the
project's own environment, and imports our ``agents`` package via PYTHONPATH.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

from agents.settings import PROJECT_ROOT

PEER_VENV = Path(os.environ.get("BENCH_PEER_VENV", PROJECT_ROOT / ".data" / "langgraph-peer-venv"))
SHARED = ("langgraph", "langgraph-checkpoint", "langgraph-checkpoint-redis", "langgraph-prebuilt",
          "langchain-core", "langchain-openai", "openai", "redis", "redisvl", "pydantic",
          "pydantic-settings", "pyyaml", "httpx")
PEER = "langgraph-cli[inmem]"


def pins() -> list[str]:
    """The project's versions of what the peer shares with it."""
    found = []
    for name in SHARED:
        try:
            found.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(name)
    return found


def langgraph_bin() -> Path:
    return PEER_VENV / "bin" / "langgraph"


def ensure_peer_venv(log: Path) -> Path:
    """Create the venv once (about 40 s from PyPI); later calls reuse it."""
    marker = PEER_VENV / ".bench-installed"
    wanted = "\n".join([PEER, *pins()])
    if marker.exists() and marker.read_text() == wanted and langgraph_bin().exists():
        return langgraph_bin()
    with log.open("ab") as out:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEER_VENV)], check=True,
                       stdout=out, stderr=subprocess.STDOUT)
        subprocess.run([str(PEER_VENV / "bin" / "pip"), "install", "-q", PEER, *pins()],
                       check=True, stdout=out, stderr=subprocess.STDOUT)
    marker.write_text(wanted)
    return langgraph_bin()
