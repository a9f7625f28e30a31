"""Each escape the model's code might try is contained, comes back as a failed run_python
result (a tool error, never an exception in the replica), and leaves the replica unharmed."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest
from redis.asyncio import Redis

from agents.settings import PROJECT_ROOT, Settings
from agents.tools.code import code_tools
from agents.tools.sandbox import isolation


def with_sandbox(settings: Settings, **sandbox) -> Settings:
    return settings.model_copy(update={"sandbox": settings.sandbox.model_copy(update=sandbox)})


async def run_python(settings: Settings, code: str, persist: bool = False) -> dict:
    tool = next(t for t in code_tools(settings) if t.name == "run_python")
    return json.loads(await tool.ainvoke({"code": code, "persist": persist}))


def sandbox_pids(settings: Settings) -> list[int]:
    """Live processes running as any run's uid."""
    low, high = settings.sandbox.uid_base, settings.sandbox.uid_base + settings.sandbox.uid_count
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        uid = int(status.split("\nUid:")[1].split()[0])
        if low < uid <= high and "\nState:\tZ" not in status:
            pids.append(int(pid))
    return pids


async def assert_contained(settings: Settings, out: dict, *errors: str) -> None:
    """Reported as a failure naming one of ``errors``; nothing of it left; the next run works."""
    assert out["timed_out"] or out["exit_code"] != 0, out
    assert not errors or any(error in out["stderr"] for error in errors), out["stderr"]
    assert sandbox_pids(settings) == []
    assert (await run_python(settings, "print(6 * 7)"))["stdout"] == "42\n"


def namespaces_permitted() -> bool:
    if os.geteuid() != 0:
        return False
    return subprocess.run(["unshare", "--net", "--mount", "true"], capture_output=True,
                          check=False).returncode == 0


@pytest.fixture
def sandboxed(settings: Settings) -> Settings:
    """The session's settings with uids of the tests' own: the session's Serve app may be
    running the coder's code meanwhile, as uids of the default range, which must not be
    taken for what a test left behind."""
    return with_sandbox(settings, uid_base=settings.sandbox.uid_base
                        + settings.sandbox.uid_count + 1)


async def test_isolation_is_the_strongest_the_machine_permits(sandboxed):
    mode = await isolation(sandboxed.sandbox)
    assert mode == "namespaces" if namespaces_permitted() else mode in ("user", "python")


async def test_without_namespaces_sockets_are_still_blocked(sandboxed, redis_url):
    fallback = with_sandbox(sandboxed, isolation="user")
    assert await isolation(fallback.sandbox) in ("user", "python")
    address = urlparse(redis_url)
    code = f"import socket\nsocket.create_connection(({address.hostname!r}, {address.port}))\n"
    out = await run_python(fallback, code)
    await assert_contained(fallback, out, "PermissionError: sandbox: socket.")


async def test_fork_bomb(sandboxed):
    code = ("import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
            "            os.setsid()  # leave the group: the uid sweep still finds it\n"
            "            time.sleep(60)\n        n += 1\nfinally:\n    print(n, flush=True)\n")
    out = await run_python(sandboxed, code)
    await assert_contained(sandboxed, out, "BlockingIOError", "PermissionError: sandbox: os.fork")
    assert int(out["stdout"] or 0) < sandboxed.sandbox.max_processes


async def test_connect_to_the_redis_port(sandboxed, redis_url):
    address = urlparse(redis_url)
    code = (f"import socket\ns = socket.create_connection(({address.hostname!r}, "
            f"{address.port}), timeout=3)\ns.sendall(b'PING\\r\\n')\nprint(s.recv(64))\n")
    out = await run_python(sandboxed, code)
    await assert_contained(sandboxed, out, "Network is unreachable", "PermissionError: sandbox")
    assert "PONG" not in out["stdout"]
    async with Redis.from_url(redis_url) as redis:
        assert await redis.ping()


async def test_connect_to_an_outside_address(sandboxed):
    code = "import socket\nsocket.create_connection(('192.0.2.1', 80), timeout=5)\n"
    out = await run_python(sandboxed, code)
    await assert_contained(sandboxed, out, "Network is unreachable", "PermissionError: sandbox")
    assert out["duration_ms"] < 4000  # refused at once, not the 5 s connect timeout


async def test_write_to_the_project_dir(sandboxed, tmp_path):
    """Even an approved persist run writes only to the workspace."""
    target = PROJECT_ROOT / f"sandbox-escape-{uuid.uuid4().hex}"
    workspace = tmp_path / "workspace"
    persisting = sandboxed.model_copy(update={"workspace_dir": workspace})
    code = f"open('kept.txt', 'w').write('ok')\nopen({str(target)!r}, 'w').write('escaped')\n"
    try:
        out = await run_python(persisting, code, persist=True)
        await assert_contained(sandboxed, out, "Read-only file system", "PermissionError")
        assert not target.exists()
        assert (workspace / "kept.txt").read_text() == "ok"
    finally:
        target.unlink(missing_ok=True)


async def test_write_to_tmp_outside_its_dir(sandboxed):
    target = Path(tempfile.gettempdir()) / f"sandbox-escape-{uuid.uuid4().hex}"
    code = (f"import os\nprint(os.environ['TMPDIR'])\nopen(os.environ['TMPDIR'] + '/own', 'w')\n"
            f"open({str(target)!r}, 'w').write('escaped')\n")
    try:
        out = await run_python(sandboxed, code)
        await assert_contained(sandboxed, out, "Read-only file system", "PermissionError")
        assert not target.exists()
        assert not Path(out["stdout"].strip()).exists()  # its own is gone afterwards too
    finally:
        target.unlink(missing_ok=True)


async def test_read_the_parents_environ(sandboxed, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-sandbox-test-secret")
    code = ("import os\nprint(sorted(os.environ))\n"
            f"print(open('/proc/{os.getpid()}/environ', 'rb').read())\n")
    out = await run_python(sandboxed, code)
    await assert_contained(sandboxed, out, "FileNotFoundError", "PermissionError")
    assert "sk-sandbox-test-secret" not in out["stdout"] + out["stderr"]
    assert "OPENAI_API_KEY" not in out["stdout"] and "REDIS_URL" not in out["stdout"]


async def test_huge_output(sandboxed):
    limited = with_sandbox(sandboxed, timeout_s=2.0, max_output_chars=1000)
    out = await run_python(limited, "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n")
    await assert_contained(limited, out)
    assert out["timed_out"] and len(out["stdout"]) <= 1000 and "truncated" in out["stdout"]


async def test_infinite_loop(sandboxed):
    limited = with_sandbox(sandboxed, timeout_s=1.0)
    out = await run_python(limited, "while True:\n    pass\n")
    await assert_contained(limited, out)
    assert out["timed_out"] and out["duration_ms"] < 3000


@pytest.mark.parametrize("code", [
    "hoard = []\nwhile True:\n    hoard.append(bytearray(10 ** 7))\n",
    "import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(60,), "
    "daemon=True).start()\n",
], ids=["allocations", "threads"])
async def test_memory_bomb(sandboxed, code):
    out = await run_python(sandboxed, code)
    await assert_contained(sandboxed, out, "MemoryError", "can't start new thread")
