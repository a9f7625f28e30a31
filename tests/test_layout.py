"""The code's layers, read from its imports: ``agents`` never imports Ray or ``serve_app``, and a
package of ``serve_app`` imports only the packages below it (``serve_app/__init__.py``)."""

from __future__ import annotations

import ast
from pathlib import Path

from agents.settings import PROJECT_ROOT

# Lowest first: a module may import its own package and those before it.
LAYERS = ["keys", "telemetry", "runs", "resources", "api", "deployments", "ops", "app",
          "__main__"]


def imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def layer_of(module: str) -> str | None:
    """``serve_app.runs.executor`` -> ``runs``; None for anything outside ``serve_app``."""
    parts = module.split(".")
    return parts[1] if parts[0] == "serve_app" and len(parts) > 1 else None


def violations() -> list[str]:
    found = []
    for path in sorted((PROJECT_ROOT / "agents").rglob("*.py")):
        for module in imports(path):
            if module.split(".")[0] in ("ray", "serve_app"):
                found.append(f"{path.relative_to(PROJECT_ROOT)} imports {module}")
    for path in sorted((PROJECT_ROOT / "serve_app").rglob("*.py")):
        parts = path.relative_to(PROJECT_ROOT / "serve_app").with_suffix("").parts
        own = parts[0]
        if own == "__init__":
            continue
        assert own in LAYERS, f"serve_app/{own} is in no layer: add it to LAYERS and the docs"
        for module in imports(path):
            target = layer_of(module)
            if target in LAYERS and LAYERS.index(target) > LAYERS.index(own):
                found.append(f"{path.relative_to(PROJECT_ROOT)} ({own}) imports {module}")
    return found


def test_every_import_goes_down_the_layers():
    assert violations() == []


def test_a_violation_is_seen():
    """The check itself: an upward import is reported."""
    upward = PROJECT_ROOT / "serve_app" / "runs" / "_upward_probe.py"
    upward.write_text("from serve_app.api.http_api import build_api\n")
    try:
        assert "serve_app/runs/_upward_probe.py (runs) imports serve_app.api.http_api" in (
            violations())
    finally:
        upward.unlink()
