"""Run a Python snippet the model wrote in a child process that cannot reach the network, the
replica's files, environment or processes, with limits on time, memory, processes and output.

One implementation for every tool that executes code (the coder's ``run_python`` and the
reviewer's assert check). Isolation is the strongest the machine permits, at most
``SandboxSettings.isolation``; a weaker one is logged as a warning:

- ``namespaces`` (root, ``unshare`` permitted): its own network namespace (no interface is up:
  no route anywhere, not even to localhost), a mount namespace in which every mount is
  read-only, ``/tmp``, ``/var/tmp``, ``/dev/shm`` and ``/run`` are empty and read-only,
  ``/proc`` shows only its own processes and its working dir is a small tmpfs (the workspace,
  bound read-write, for an approved ``persist`` run), and a uid of its own.
- ``user`` (root without namespaces): a uid of its own, plus the Python guard below.
- ``python`` (not root, or the interpreter is not readable by another uid): only the guard, an
  audit hook refusing sockets, new processes, ctypes, writes outside its dirs and other
  processes' ``/proc``: best effort, not a boundary.

Always: a clean environment, no new privileges, rlimits (address space, CPU, processes, open
files, file size), a wall-clock timeout killing all its processes, and capped output.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import secrets
import signal
import stat
import sys
import tempfile
import textwrap
import time
from functools import cache
from pathlib import Path

from pydantic import BaseModel

from agents.settings import SandboxSettings

SCRIPT_NAME = "main.py"
DRAIN_AFTER_KILL_S = 2.0
MODES = ("namespaces", "user", "python")  # strongest first
MASKED = ("/tmp", "/var/tmp", "/dev/shm", "/run")  # shared writables and sockets: emptied
KILL_PASSES = 20
EXIT_POLL_S = 0.02
PROBE_TIMEOUT_S = 30.0  # a loaded machine must not pass for one without namespaces

log = logging.getLogger(__name__)
_modes: dict[str, str] = {}  # requested isolation -> the one that works on this machine


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


def _launch() -> None:
    """Isolate, limit, drop privileges, then exec the snippet's interpreter. Runs first in the
    child, in a fresh ``python -I -S`` (its source is passed with ``-c``): a single thread, so
    unlike a ``preexec_fn`` in the replica it may mount, and it imports only the stdlib."""
    import ctypes
    import json
    import os
    import re
    import resource
    import signal
    import sys

    ms_rdonly, ms_nosuid, ms_nodev, ms_noexec, ms_remount = 1, 2, 4, 8, 32
    ms_bind, ms_rec, ms_private = 4096, 16384, 1 << 18
    new_namespaces = 0x20000 | 0x4000000 | 0x8000000 | 0x40000000  # mount, uts, ipc, net
    pr_set_no_new_privs = 38
    cfg = json.loads(sys.argv[1])
    libc = ctypes.CDLL(None, use_errno=True)

    def check(result: int, what: str) -> None:
        if result != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"{what}: {os.strerror(errno)}")

    def mount(source: str | None, target: str, fstype: str | None, flags: int,
              data: str | None = None) -> None:
        source, fstype, data = (s.encode() if s else None for s in (source, fstype, data))
        check(libc.mount(source, target.encode(), fstype, ctypes.c_ulong(flags), data),
              f"mount {target}")

    def remount(target: str, flags: int) -> None:
        mount(None, target, None, ms_remount | ms_bind | ms_nosuid | ms_nodev | flags)

    if cfg["mode"] == "namespaces":
        with open(cfg["script"], "rb") as original:
            script = original.read()
        check(libc.unshare(new_namespaces), "unshare")
        mount(None, "/", None, ms_rec | ms_private)  # nothing below propagates to the host
        kept = {path: os.open(path, os.O_PATH | os.O_DIRECTORY) for path in cfg["binds"]}
        with open("/proc/self/mountinfo") as mounts:
            points = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4])
                      for line in mounts]
        for point in points:  # keep nodev/noexec where set: /dev itself must stay usable
            nodev_noexec = os.statvfs(point).f_flag & (ms_nodev | ms_noexec)
            mount(None, point, None, ms_remount | ms_bind | ms_rdonly | ms_nosuid | nodev_noexec)
        mount("proc", "/proc", "proc", ms_nosuid | ms_nodev | ms_noexec | ms_rdonly,
              "hidepid=invisible")  # other users' processes, the replica's too, do not exist
        for path in cfg["masks"]:
            os.makedirs(path, exist_ok=True)
            mount("tmpfs", path, "tmpfs", ms_nosuid | ms_nodev, "size=1m,mode=755")
        for path, fd in kept.items():  # what a mask hides but the run needs
            os.makedirs(path, exist_ok=True)
            mount(f"/proc/self/fd/{fd}", path, None, ms_bind | ms_rec)
            remount(path, 0 if path == cfg["workdir"] else ms_rdonly)
        os.makedirs(cfg["run_dir"], exist_ok=True)
        mount("tmpfs", cfg["run_dir"], "tmpfs", ms_nosuid | ms_nodev,
              f"size={cfg['scratch_mb']}m,mode=700,uid={cfg['uid']},gid={cfg['uid']}")
        with open(cfg["script"], "wb") as copy:
            copy.write(script)
        for path in cfg["masks"]:
            remount(path, ms_rdonly)
    for name, soft, hard in cfg["rlimits"]:
        resource.setrlimit(getattr(resource, name), (soft, hard))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-big write fails, not the process
    check(libc.prctl(pr_set_no_new_privs, *(ctypes.c_ulong(v) for v in (1, 0, 0, 0))),
          "no_new_privs")
    if cfg["uid"] is not None:
        os.setgroups(cfg["groups"])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])
    os.umask(0o002)  # the workspace's files stay writable by later persist runs (its group)
    os.chdir(cfg["workdir"])
    os.execv(cfg["argv"][0], cfg["argv"])


def _guarded() -> None:
    """The snippet's interpreter starts here where the kernel does not isolate it (its source
    is passed with ``-c``, the script follows): an audit hook refuses sockets, new processes,
    ctypes, writes outside its dirs and other processes' /proc, then the script runs.
    Python-level, so a last resort rather than a boundary."""
    import os
    import sys

    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    roots = tuple(os.path.realpath(d) + os.sep for d in (os.getcwd(), os.path.dirname(script)))
    own = (f"/proc/{os.getpid()}/", "/proc/self/", "/proc/thread-self/")
    refused = ("socket.", "subprocess.", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
               "os.fork", "ctypes.", "gc.get_")  # fork: RLIMIT_NPROC does not bind root
    changes = frozenset({"os.remove", "os.rename", "os.mkdir", "os.rmdir", "os.chmod",
                         "os.chown", "os.link", "os.symlink", "os.truncate", "os.utime"})
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    frozen = frozenset({"__code__", "__defaults__", "__kwdefaults__"})

    def outside(path: str | bytes) -> bool:
        return not (os.path.realpath(os.fsdecode(path)) + os.sep).startswith(roots)

    def hook(event: str, args: tuple, refused=refused, changes=changes, own=own,
             writes=writes, frozen=frozen, outside=outside) -> None:
        if event.startswith(refused):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "object.__setattr__" and args[1] in frozen:
            raise PermissionError("sandbox: functions cannot be changed")
        if event == "open" and isinstance(args[0], str | bytes):
            path = os.path.realpath(os.fsdecode(args[0]))
            if path.startswith("/proc/") and not (path + "/").startswith(own):
                raise PermissionError(f"sandbox: {path} is not readable")
            if args[2] & writes and outside(path):
                raise PermissionError(f"sandbox: {path} is read-only")
        elif event in changes and any(outside(a) for a in args if isinstance(a, str | bytes)):
            raise PermissionError(f"sandbox: {event} outside the working dir is not allowed")

    with open(script, encoding="utf-8") as source:
        code = compile(source.read(), script, "exec")
    sys.addaudithook(hook)
    exec(code, {"__name__": "__main__", "__file__": script, "__builtins__": __builtins__})


def _entry(function) -> str:
    return textwrap.dedent(inspect.getsource(function)) + f"\n{function.__name__}()\n"


LAUNCHER, GUARD = _entry(_launch), _entry(_guarded)


def _closed(path: str) -> list[str]:
    """The first ancestor of ``path`` that another uid cannot traverse (/root, say), if any."""
    return [str(parent) for parent in reversed(Path(path).parents)
            if not os.stat(parent).st_mode & stat.S_IXOTH][:1]


@cache
def _interpreter_dirs() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(masks, binds): the shared writables, and ancestors of the interpreter's dirs that the
    run's uid cannot traverse (a pyenv under /root), are hidden behind an empty tmpfs; those
    dirs are bound back read-only at the same paths, so the venv's links still resolve."""
    masks = [path for path in MASKED if os.path.isdir(path)]
    binds = []
    for prefix in dict.fromkeys(os.path.realpath(p) for p in (sys.prefix, sys.base_prefix)):
        closed = _closed(prefix)
        masks += closed
        if closed or any(Path(prefix).is_relative_to(mask) for mask in masks):
            binds.append(prefix)
    return tuple(masks), tuple(binds)


def _real_uid(pid: str) -> int | None:
    """The real uid of a live process, None if it is gone or a zombie."""
    with contextlib.suppress(OSError):
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                      .splitlines() if ":" in line)
        if not fields["State"].strip().startswith("Z"):
            return int(fields["Uid"].split()[0])
    return None


def _kill_user(uid: int) -> None:
    """SIGKILL every process of the run's uid until none is left: this also catches those
    that left its process group and a fork bomb's newest children."""
    for _ in range(KILL_PASSES):
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and _real_uid(p) == uid]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _kill_all(pid: int, uid: int | None) -> None:
    _kill_group(pid)
    if uid is not None:
        _kill_user(uid)


async def _exited(proc: asyncio.subprocess.Process) -> None:
    """Until the script itself exits: ``wait()`` also waits for the pipes, which processes it
    left behind may hold until the timeout."""
    while proc.returncode is None:
        await asyncio.sleep(EXIT_POLL_S)


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


def _share_workspace(path: Path, group: int) -> None:
    """Persist runs have different uids but share the workspace through its group."""
    os.chown(path, -1, group)
    os.chmod(path, 0o2770)  # setgid: what they create there keeps the group


def _config(limits: SandboxSettings, mode: str, run_dir: Path, workdir: Path, persist: bool
            ) -> dict:
    uid = None if mode == "python" else limits.uid_base + 1 + secrets.randbelow(limits.uid_count)
    script = str(run_dir / SCRIPT_NAME)
    masks, binds = _interpreter_dirs() if mode == "namespaces" else ((), ())
    if persist and mode == "namespaces":  # the workspace is bound read-write, past its masks
        masks, binds = (*masks, *_closed(str(workdir))), (*binds, str(workdir))
    memory = limits.memory_mb * 1024 * 1024
    cpu_s = max(1, int(limits.timeout_s) + 1)
    return {
        "mode": mode, "uid": uid, "groups": [limits.uid_base] if persist else [],
        "script": script, "run_dir": str(run_dir), "workdir": str(workdir),
        "masks": sorted(set(masks), key=len), "binds": binds,
        "scratch_mb": limits.scratch_mb,
        "rlimits": [("RLIMIT_AS", memory, memory), ("RLIMIT_CPU", cpu_s, cpu_s + 1),
                    ("RLIMIT_CORE", 0, 0),
                    ("RLIMIT_NPROC", limits.max_processes, limits.max_processes),
                    ("RLIMIT_NOFILE", limits.max_open_files, limits.max_open_files),
                    ("RLIMIT_FSIZE", limits.max_file_mb << 20, limits.max_file_mb << 20)],
        "argv": [sys.executable, "-I", script] if mode == "namespaces"
        else [sys.executable, "-I", "-c", GUARD, script],
    }


async def isolation(limits: SandboxSettings) -> str:
    """The strongest mode at most ``limits.isolation`` that works here, found once per process
    by running an empty script in each mode in turn."""
    requested = limits.isolation
    if requested not in _modes:
        candidates = MODES[0 if requested == "auto" else MODES.index(requested):]
        for mode in candidates[:-1]:
            if os.geteuid() != 0:
                why = "not running as root"
            else:
                probing = limits.model_copy(update={"timeout_s": PROBE_TIMEOUT_S})
                probe = await _execute("pass", probing, None, mode)
                if probe.exit_code == 0:
                    break
                why = (probe.stderr.strip().splitlines() or [f"exit {probe.exit_code}"])[-1]
            log.warning("sandbox: %s isolation is not permitted here (%s)", mode, why)
        else:
            mode = candidates[-1]
        _modes[requested] = mode
        if mode == "namespaces":
            log.info("sandbox: code runs in namespaces of its own, as a uid of its own")
        else:
            log.warning("sandbox: code runs with %s isolation only: no network namespace, "
                        "sockets are blocked by a Python audit hook", mode)
    return _modes[requested]


async def run_sandboxed(code: str, limits: SandboxSettings, cwd: Path | None = None
                        ) -> SandboxResult:
    """Run ``code`` as a script. It works in a fresh temporary directory, gone afterwards,
    unless ``cwd`` is given (created if missing): files written there are kept."""
    return await _execute(code, limits, cwd, await isolation(limits))


async def _execute(code: str, limits: SandboxSettings, cwd: Path | None, mode: str
                   ) -> SandboxResult:
    with tempfile.TemporaryDirectory(prefix="sandbox-") as tmp:
        run_dir = Path(tmp).resolve()
        (run_dir / SCRIPT_NAME).write_text(code, encoding="utf-8")
        workdir = Path(cwd).resolve() if cwd is not None else run_dir
        workdir.mkdir(parents=True, exist_ok=True)
        config = _config(limits, mode, run_dir, workdir, persist=cwd is not None)
        uid = config["uid"]
        if uid is not None:
            os.chown(run_dir, uid, uid)
            if cwd is not None:
                _share_workspace(workdir, limits.uid_base)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(workdir),
               "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TMPDIR": str(run_dir)}
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-S", "-c", LAUNCHER, json.dumps(config),
            cwd=run_dir, env=env, start_new_session=True,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        byte_limit = limits.max_output_chars * 4 + 1024
        readers = asyncio.gather(_read_bounded(proc.stdout, byte_limit, "head"),
                                 _read_bounded(proc.stderr, byte_limit, "tail"))
        timed_out = False
        try:
            await asyncio.wait_for(_exited(proc), timeout=limits.timeout_s)
        except TimeoutError:
            timed_out = proc.returncode is None
        except BaseException:  # cancelled: never leave its processes running
            _kill_all(proc.pid, uid)
            readers.cancel()
            readers.add_done_callback(_retrieve)  # so asyncio does not log its CancelledError
            raise
        _kill_group(proc.pid)  # also whatever the snippet left running in the background
        if uid is not None:
            await asyncio.to_thread(_kill_user, uid)
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
