"""A child process we start, wait for, and stop cleanly: the base of our local services."""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, so no service outlives its owner."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ServiceStartError(RuntimeError):
    """A local service did not come up; the message carries the tail of its log."""


# Ports handed out by free_port come from below the kernel's ephemeral range and above Ray's
# worker ports (10002-19999): a port the OS picked (bind to 0) is one the next process that
# connects or binds to port 0 (Ray starts dozens) may take before its owner binds it.
_RESERVED_FLOOR = 20000
_handed_out: set[int] = set()


def _ephemeral_floor() -> int:
    with contextlib.suppress(OSError, ValueError):
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now, outside the range the OS hands out on its own,
    and not handed out before by this process."""
    ceiling = _ephemeral_floor()
    for _ in range(200):
        port = random.randrange(_RESERVED_FLOOR, ceiling) if ceiling > _RESERVED_FLOOR else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            port = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise OSError("no free port below the ephemeral range")


class ManagedProcess:
    """Start ``argv`` in its own process group, poll ``ready()`` until it is true, stop it
    and whatever it started in its group. ``env``: added to this process's environment."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, cwd: Path | None = None,
                 env: dict[str, str] | None = None):
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.cwd = cwd
        self.env = {**os.environ, **env} if env else None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, ready: Callable[[], bool], timeout_s: float = 20.0,
              started: Callable[[int], None] | None = None) -> None:
        """``started``: told the pid (also its process group's id) as soon as it exists."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd, env=self.env,
                start_new_session=True, preexec_fn=_die_with_parent,
            )
        if started:
            started(self._proc.pid)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServiceStartError(f"{self.name} exited with {self._proc.returncode}: "
                                        f"{self._log_tail()}")
            with contextlib.suppress(Exception):
                if ready():
                    return
            time.sleep(0.05)
        self.stop()
        raise ServiceStartError(f"{self.name} not ready after {timeout_s}s: {self._log_tail()}")

    def stop(self, timeout_s: float = 10.0, sig: int = signal.SIGTERM) -> None:
        """Ask politely, then kill; then kill what is left of its group (children it
        started that outlive it); safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout_s)
        with contextlib.suppress(ProcessLookupError):  # the group outlives its leader's pid
            os.killpg(proc.pid, signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL, as a crash would (fault tests)."""
        self.stop(sig=signal.SIGKILL)

    def _log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"
