"""What a killed start left behind, found and cleared by the next one.

A Ray node we start (``serve_app.ray_node``) runs in a process group of its own, recorded in
a state file in the data dir with the process that started it. SIGKILL the launcher and the
node's ``ray start`` stops its raylet, but Serve's HAProxy (started by a proxy actor) lives
on, holding the HTTP, stats and metrics ports. The next start reads the state file and
SIGKILLs what is left of that group, each process verified first by the marker variable the
node's processes inherit (``MARKER`` = the state file's path: Ray renames its workers'
command lines, the environment it keeps). A port still held after that belongs to someone
else: the start says which process holds it and how to stop it, rather than letting HAProxy
die with a bind error.
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
    me = psutil.Process()
    state_file.write_text(json.dumps({"pgid": pgid, "owner_pid": me.pid,
                                      "owner_started": me.create_time()}))


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
    ours = [proc for proc in psutil.process_iter()
            if _in_group(proc, state["pgid"]) and _environ(proc).get(MARKER) == str(state_file)]
    killed = []
    for proc in ours:
        with contextlib.suppress(psutil.Error):
            killed.append(" ".join(proc.cmdline())[:120])
            proc.kill()
    psutil.wait_procs(ours, timeout=5)
    state_file.unlink(missing_ok=True)
    return killed


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


def _in_group(proc: psutil.Process, pgid: int) -> bool:
    try:
        return os.getpgid(proc.pid) == pgid
    except OSError:
        return False


def _environ(proc: psutil.Process) -> dict[str, str]:
    try:
        return proc.environ()
    except psutil.Error:
        return {}
