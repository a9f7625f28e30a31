"""The code tools: the coder runs Python, the reviewer judges it; both run it in the sandbox."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import importlib.util
import json
import os
import re
import sys
import tempfile
from pathlib import Path

from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel, Field

from agents.settings import SandboxSettings, Settings
from agents.tools.sandbox import SCRIPT_NAME, run_sandboxed

RUFF_TIMEOUT_S = 20.0
RUFF_FILENAME = "snippet.py"
MAX_RUFF_REASONS = 5


def _require_code(code: str) -> None:
    if not code.strip():
        raise ValueError("code is empty; pass the complete Python script as the 'code' argument")


def ruff_command() -> list[str] | None:
    """The ruff installed with this interpreter, if any: the binary next to it, else the module."""
    binary = Path(sys.executable).parent / "ruff"
    if binary.is_file() and os.access(binary, os.X_OK):
        return [str(binary)]
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    return None


async def ruff_check(code: str) -> tuple[str, list[str]]:
    """("clean" | "issues" | "skipped", reasons) from ruff's default rules, ignoring any config."""
    command = ruff_command()
    if command is None:
        return "skipped", ["ruff is not installed, so lint was skipped"]
    args = ["check", "--isolated", "--no-cache", "--output-format", "concise",
            "--stdin-filename", RUFF_FILENAME, "-"]
    with tempfile.TemporaryDirectory(prefix="ruff-") as tmp:
        proc = await asyncio.create_subprocess_exec(
            *command, *args, cwd=tmp, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(code.encode()), RUFF_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return "skipped", [f"ruff did not finish within {RUFF_TIMEOUT_S:g} s, lint skipped"]
    if proc.returncode == 0:
        return "clean", ["ruff finds no issues"]
    issues = [line.removeprefix(f"{RUFF_FILENAME}:") for line in out.decode().splitlines()
              if line.startswith(f"{RUFF_FILENAME}:")]
    if proc.returncode != 1 or not issues:
        return "skipped", [f"ruff failed ({err.decode().strip()[:200]}), lint skipped"]
    more = len(issues) - MAX_RUFF_REASONS
    shown = [f"ruff: line {issue.strip()}" for issue in issues[:MAX_RUFF_REASONS]]
    return "issues", shown + ([f"ruff: ... and {more} more issues"] if more > 0 else [])


async def run_asserts(code: str, tree: ast.Module, limits: SandboxSettings
                      ) -> tuple[str, list[str]]:
    """("passed" | "failed" | "none", reasons): run the code when it tests itself with asserts."""
    if not any(isinstance(node, ast.Assert) for node in ast.walk(tree)):
        return "none", ["it has no asserts to run; add some to test it"]
    result = await run_sandboxed(code, limits)
    if result.exit_code == 0 and not result.timed_out:
        return "passed", ["its asserts pass"]
    if result.timed_out:
        return "failed", [f"running it timed out after {limits.timeout_s:g} s"]
    return "failed", [f"running its asserts failed{failure(result.stderr, result.exit_code)}"]


def failure(stderr: str, exit_code: int) -> str:
    """': AssertionError: msg (line 7)' from a traceback: what failed and where."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip(" ^~\t")]
    where = re.findall(rf'File "[^"]*{re.escape(SCRIPT_NAME)}", line (\d+)', stderr)
    error = lines[-1] if lines else f"exit code {exit_code}"
    return f": {error}" + (f" (line {where[-1]})" if where else "")


async def review_code(code: str, limits: SandboxSettings) -> dict:
    """Approve only code that compiles, passes its own asserts and is clean under ruff."""
    _require_code(code)
    try:
        tree = ast.parse(code)
        compile(tree, "<review>", "exec")
    except (SyntaxError, ValueError) as exc:
        line = getattr(exc, "lineno", None)
        where = f" at line {line}" if line else ""
        status, lint = await ruff_check(code)
        checks = {"compiles": False, "asserts": "none", "ruff": status}
        reasons = [f"it does not compile: {getattr(exc, 'msg', exc)}{where}", *lint]
        return {"verdict": "changes_requested", "reasons": reasons, "checks": checks}
    (asserts, assert_reasons), (status, lint) = await asyncio.gather(
        run_asserts(code, tree, limits), ruff_check(code)
    )
    approved = asserts != "failed" and status != "issues"
    return {
        "verdict": "approve" if approved else "changes_requested",
        "reasons": ["it compiles", *assert_reasons, *lint],
        "checks": {"compiles": True, "asserts": asserts, "ruff": status},
    }


class RunPythonArgs(BaseModel):
    code: str = Field(description="A complete Python script; print what you want to see.")
    persist: bool = Field(False, description="Run in the shared workspace directory so files "
                                             "it writes are kept (needs a human's approval).")


class ReviewCodeArgs(BaseModel):
    code: str = Field(description="The Python code to review, including its asserts if any.")


def code_tools(settings: Settings) -> list[BaseTool]:
    limits = settings.sandbox

    async def _run(code: str, persist: bool = False) -> str:
        _require_code(code)
        cwd = settings.workspace_dir if persist else None
        return (await run_sandboxed(code, limits, cwd=cwd)).model_dump_json()

    async def _review(code: str) -> str:
        return json.dumps(await review_code(code, limits))

    return [
        StructuredTool.from_function(
            coroutine=_run, name="run_python", args_schema=RunPythonArgs,
            description=f"Run a Python script in a sandbox (timeout {limits.timeout_s:g} s, "
                        f"{limits.memory_mb} MB). Returns exit_code, stdout, stderr, timed_out "
                        "and duration_ms; a non-zero exit_code means the script failed.",
            metadata={"progress": "Running Python..."},
        ),
        StructuredTool.from_function(
            coroutine=_review, name="review_code", args_schema=ReviewCodeArgs,
            description="Review Python code: checks that it compiles, runs its asserts and lints "
                        "it with ruff. Returns a verdict (approve or changes_requested), reasons "
                        "and the individual checks.",
            metadata={"progress": "Reviewing code..."},
        ),
    ]
