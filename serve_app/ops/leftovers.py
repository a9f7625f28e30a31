"""What a killed start left behind, found and cleared by the next one.

A Ray node we start (``serve_app.ops.ray_node``) is recorded in a state file in the data dir:
the process that started it and the process group of its ``ray start`` (GCS, raylet,
agents). Its workers (Serve's controller, replicas, proxy) and Serve's HAProxy run in
process groups of their own, but inherit the marker variable ``MARKER`` = the state file's
path. A process is the node's if it carries the marker, or is a Ray process (``ray`` in its
command line; Ray's titles overwrite the environment of some) in the recorded group.
SIGKILL the launcher and its node's ``ray start`` and Serve's HAProxy lives on, holding the
HTTP, stats and metrics ports: the next start SIGKILLs what is left. A port still held
after that belongs to someone else: the start says which process holds it and how to stop
it, rather than letting HAProxy die with a bind error.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import psutil

MARKER = "AGENT_CLUSTER_RAY_NODE"


class PortInUse(RuntimeError):
    """A port the cluster needs is held by a process we did not start."""


class DataDirInUse(RuntimeError):
    """Another live launcher started a Ray node from this data dir."""


def record(state_file: Path, pgid: int) -> None:
    """This process started the node of ``state_file``, whose ``ray start`` leads ``pgid``."""
    me = psutil.Process()
    state_file.write_text(json.dumps({"owner_pid": me.pid, "owner_started": me.create_time(),
                                      "pgid": pgid}))


def clear(state_file: Path) -> list[str]:
    """SIGKILL what is left of the node recorded in ``state_file`` (its owner gone);
    returns the command lines of the processes killed."""
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return []
    if _alive(state["owner_pid"], state["owner_started"]):
        raise DataDirInUse(f"a Ray node recorded in {state_file} belongs to the running "
                           f"process {state['owner_pid']}: stop it first, or use another "
                           "data dir (AGENT_CLUSTER_DATA_DIR)")
    killed = kill_node(state_file, state["pgid"])
    state_file.unlink(missing_ok=True)
    return killed


def kill_node(state_file: Path, pgid: int | None) -> list[str]:
    """SIGKILL every process of the node of ``state_file``; their command lines."""
    ours = [proc for proc in psutil.process_iter() if _of_node(proc, state_file, pgid)]
    killed = []
    for proc in ours:
        with contextlib.suppress(psutil.Error):
            killed.append(" ".join(proc.cmdline())[:120])
            proc.kill()
    psutil.wait_procs(ours, timeout=5)
    return killed


def _of_node(proc: psutil.Process, state_file: Path, pgid: int | None) -> bool:
    try:
        if proc.environ().get(MARKER) == str(state_file):
            return True
        return pgid is not None and os.getpgid(proc.pid) == pgid and \
            "ray" in " ".join(proc.cmdline())
    except (psutil.Error, OSError):
        return False


def check_free(ports: dict[str, int]) -> None:
    """Raise ``PortInUse`` naming the holder of the first of ``ports`` (name -> port) that
    something listens on."""
    listening = {conn.laddr.port: conn.pid for conn in psutil.net_connections("tcp")
                 if conn.status == psutil.CONN_LISTEN}
    for name, port in ports.items():
        if port in listening:
            raise PortInUse(f"{name} port {port} is in use by {_describe(listening[port])}, "
                            f"not by a process this data dir started. Stop it "
                            f"(kill {listening[port]}) or choose another port.")


def _describe(pid: int | None) -> str:
    if pid is None:
        return "a process of another user"
    try:
        return f"pid {pid} ({' '.join(psutil.Process(pid).cmdline())[:160]})"
    except psutil.Error:
        return f"pid {pid}"


def _alive(pid: int, started: float) -> bool:
    try:
        return psutil.Process(pid).create_time() == started
    except psutil.Error:
        return False
