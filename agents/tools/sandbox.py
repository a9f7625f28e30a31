"""Run a Python snippet in a child process with time, memory and output limits.

One implementation for every tool that executes code (the coder's ``run_python`` and the
reviewer's assert check). These limits stop accidents, not attackers: see
``data/corpus/python-subprocess-limits.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel

from agents.settings import SandboxSettings

SCRIPT_NAME = "main.py"
DRAIN_AFTER_KILL_S = 2.0


class SandboxResult(BaseModel):
    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool
    duration_ms: int


def truncate(text: str, limit: int, keep: str = "head") -> str:
    """At most ``limit`` characters; ``keep="tail"`` keeps the end, where a traceback's error is."""
    if len(text) <= limit:
        return text
    marker = f"[... {len(text) - limit} chars truncated ...]"
    room = max(0, limit - len(marker) - 1)
    if keep == "tail":
        return (marker + "\n" + text[len(text) - room:])[-limit:]
    return (text[:room] + "\n" + marker)[:limit]


async def _read_bounded(stream: asyncio.StreamReader, limit: int, keep: str) -> tuple[bytes, int]:
    """Drain a pipe to EOF keeping at most ``limit`` bytes, so a flood cannot exhaust memory."""
    kept, dropped = bytearray(), 0
    while chunk := await stream.read(65536):
        kept += chunk
        if len(kept) > limit:
            excess = len(kept) - limit
            dropped += excess
            del kept[slice(excess) if keep == "tail" else slice(limit, None)]
    return bytes(kept), dropped


def _decode(data: tuple[bytes, int], limit: int, keep: str) -> str:
    kept, dropped = data
    text = kept.decode("utf-8", errors="replace")
    if dropped:  # the buffer already cut it: say so, then apply the character limit
        marker = f"[... {dropped} bytes dropped ...]"
        text = f"{marker}\n{text}" if keep == "tail" else f"{text}\n{marker}"
    return truncate(text, limit, keep)


def _limit_child(memory_bytes: int, cpu_s: int) -> None:
    """Runs in the child between fork and exec: only setrlimit calls, nothing that locks."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def run_sandboxed(code: str, limits: SandboxSettings, cwd: Path | None = None
                        ) -> SandboxResult:
    """Run ``code`` as a script. It works in a fresh temporary directory, removed afterwards,
    unless ``cwd`` is given (created if missing): files written there are kept."""
    with tempfile.TemporaryDirectory(prefix="sandbox-") as tmp:
        script = Path(tmp) / SCRIPT_NAME
        script.write_text(code, encoding="utf-8")
        workdir = Path(cwd) if cwd is not None else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(workdir),
               "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TMPDIR": tmp}
        memory = limits.memory_mb * 1024 * 1024
        cpu_s = max(1, int(limits.timeout_s) + 1)
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", str(script),
            cwd=workdir, env=env, start_new_session=True,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            preexec_fn=lambda: _limit_child(memory, cpu_s),
        )
        byte_limit = limits.max_output_chars * 4 + 1024
        readers = asyncio.gather(_read_bounded(proc.stdout, byte_limit, "head"),
                                 _read_bounded(proc.stderr, byte_limit, "tail"))
        timed_out = False
        try:
            await asyncio.wait_for(proc.wait(), timeout=limits.timeout_s)
        except TimeoutError:  # wait() also waits for the pipes, which leftovers may hold
            timed_out = proc.returncode is None
        except BaseException:  # cancelled: never leave the group running
            _kill_group(proc.pid)
            readers.cancel()
            readers.add_done_callback(_retrieve)  # so asyncio does not log its CancelledError
            raise
        _kill_group(proc.pid)  # also whatever the snippet left running in the background
        await proc.wait()
        try:  # a grandchild that left the group could hold the pipes open: don't wait forever
            out, err = await asyncio.wait_for(readers, timeout=DRAIN_AFTER_KILL_S)
        except TimeoutError:
            out, err = (b"", 0), (b"[output lost: pipes held open]", 0)
        limit = limits.max_output_chars
        return SandboxResult(
            exit_code=proc.returncode,
            stdout=_decode(out, limit, "head"),
            stderr=_decode(err, limit, "tail"),
            timed_out=timed_out,
            duration_ms=round((time.monotonic() - started) * 1000),
        )
