"""A LangGraph project as LangGraph's CLI describes it (``langgraph.json``): read, checked key
by key, and its graphs loaded, compiled with our checkpointer and store.

``graphs`` name ``"./path/file.py:attr"`` (relative to the file) or ``"package.module:attr"``;
the attribute is a compiled graph, a ``StateGraph``, or a factory (sync or async, taking a
``RunnableConfig`` or nothing) returning one of those. A factory is called once per process
that loads the graph (each replica), not once per run as ``langgraph dev`` does.

Nothing is ignored silently: keys that only matter to an image build are accepted with a
note, keys we do not serve are refused naming them, unknown keys are warned about.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import importlib.util
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

from dotenv import dotenv_values
from langchain_core.runnables import RunnableConfig
from langgraph.graph import StateGraph
from langgraph.pregel import Pregel
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agents.settings import StoreIndexSettings, StoreSettings, StoreTtlSettings

GRAPH_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
IMAGE_ONLY = ("python_version", "node_version", "dockerfile_lines", "pip_config_file",
              "pip_installer", "image_distro", "base_image", "keep_pkg_tools", "api_version",
              "_INTERNAL_docker_tag")
REFUSED = {
    "http": "a custom app, CORS and route switches are not served here: the cluster's own "
            "API is the only HTTP app (remove http.{keys})",
    "ui": "JavaScript UI components are not served here (remove ui)",
}


class ProjectError(Exception):
    """A project that cannot be served as written: the start stops with this message."""


class GraphLoadError(ProjectError):
    """A graph that does not load, naming the file, the attribute and the cause."""

    def __init__(self, graph_id: str, target: str, attr: str, cause: str):
        super().__init__(f"graph {graph_id!r}: {target}:{attr}: {cause}")
        self.graph_id, self.target, self.attr = graph_id, target, attr


class GraphSpec(BaseModel):
    """A graph given as an object (``{"path": ..., "description": ...}``)."""

    model_config = ConfigDict(extra="forbid")
    path: str
    description: str | None = None


class CheckpointerTTL(BaseModel):
    model_config = ConfigDict(extra="forbid")
    strategy: Literal["delete"] = "delete"
    default_ttl: float | None = Field(None, gt=0, description="minutes")
    sweep_interval_minutes: float | None = Field(None, gt=0)


class CheckpointerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ttl: CheckpointerTTL | None = None


class AuthConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    path: str | None = None


class Project(BaseModel):
    """One ``langgraph.json`` (``path``); relative paths start from its folder (``root``)."""

    model_config = ConfigDict(extra="allow")
    path: Path = Field(exclude=True)
    graphs: dict[str, str | GraphSpec] = Field(min_length=1)
    dependencies: list[str] = Field(default_factory=list)
    env: str | dict[str, str] | None = None
    auth: AuthConfig | None = None
    store: dict[str, Any] | None = None
    checkpointer: CheckpointerConfig | None = None

    @classmethod
    def load(cls, path: str | Path) -> Project:
        """Read and check ``path``; ProjectError names the file and what is wrong."""
        path = Path(path).resolve()
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ProjectError(f"{path}: {exc}") from None
        if not isinstance(raw, dict):
            raise ProjectError(f"{path}: a JSON object expected")
        refused = [f"{key}: {why.format(keys=', '.join(map(str, raw[key])))}"
                   for key, why in REFUSED.items() if raw.get(key)]
        if refused:
            raise ProjectError(f"{path}: " + "; ".join(refused))
        try:
            return cls.model_validate({**raw, "path": path})
        except ValidationError as exc:
            errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                               for e in exc.errors())
            raise ProjectError(f"{path}: {errors}") from None

    def notes(self) -> list[str]:
        """One line per key accepted without effect here, or not known at all."""
        extra = self.model_extra or {}
        notes = [f"note: {key} only matters to an image build (langgraph build); "
                 "not used here" for key in IMAGE_ONLY if key in extra]
        notes += [f"warning: unknown key {key!r} in langgraph.json, not used" for key in extra
                  if key not in IMAGE_ONLY and key not in REFUSED and key != "$schema"]
        store = self.store or {}
        if "sweep_interval_minutes" in (store.get("ttl") or {}):
            notes.append("note: store.ttl.sweep_interval_minutes: not needed here (Redis "
                         "expires the store's items itself)")
        known = {"ttl": {*StoreTtlSettings.model_fields, "sweep_interval_minutes"},
                 "index": set(StoreIndexSettings.model_fields)}
        notes += [f"warning: unknown key 'store.{key}' in langgraph.json, not used"
                  for key in store if key not in known]
        notes += [f"warning: unknown key 'store.{part}.{key}' in langgraph.json, not used"
                  for part, keys in known.items() for key in store.get(part) or {}
                  if key not in keys]
        if self.auth and self.auth.model_extra:
            notes.append(f"note: auth.{', auth.'.join(self.auth.model_extra)}: not used "
                         "here (only auth.path)")
        return notes

    def check_ids(self, built_ins: list[str]) -> None:
        """A project graph may not take a built-in graph's id."""
        clash = sorted(set(self.graphs) & set(built_ins))
        if clash:
            raise ProjectError(f"graph ids {clash} of {self.path} clash "
                               f"with the built-in graphs {sorted(built_ins)}: rename them")

    @field_validator("graphs")
    @classmethod
    def _ids_name_deployments(cls, graphs: dict[str, Any]) -> dict[str, Any]:
        """Each id names a Serve deployment and a queue: letters, digits, ``_.-``."""
        bad = [graph_id for graph_id in graphs if not GRAPH_ID.fullmatch(graph_id)]
        if bad:
            raise ValueError(f"graph ids {bad}: use letters, digits, '_', '.' and '-' only")
        return graphs

    @field_validator("store")
    @classmethod
    def _store_fits_our_settings(cls, store: dict[str, Any] | None) -> dict[str, Any] | None:
        if store is not None:
            StoreSettings.model_validate(store)
        return store

    @property
    def root(self) -> Path:
        return self.path.parent

    def description(self, graph_id: str) -> str | None:
        spec = self.graphs[graph_id]
        return spec.description if isinstance(spec, GraphSpec) else None

    # the environment
    def local_paths(self) -> list[Path]:
        """Dependencies that are folders of this machine (``"."``, ``"./lib"``)."""
        return [(self.root / dep).resolve() for dep in self.dependencies
                if dep.startswith((".", "/"))]

    def pip_requirements(self) -> list[str]:
        """What pip installs: packages by name, and local folders that are packages (a
        folder without ``pyproject.toml`` or ``setup.py`` is put on the path instead, as
        LangGraph's CLI does)."""
        local = {str(p) for p in self.local_paths()}
        named = [dep for dep in self.dependencies if not dep.startswith((".", "/"))]
        return named + sorted(p for p in local if is_package(Path(p)))

    def install(self) -> None:
        """pip-install the dependencies into this interpreter's environment; ProjectError
        with pip's reason if it cannot."""
        wanted = self.pip_requirements()
        if not wanted:
            return
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", *wanted],
                              capture_output=True, text=True)
        if done.returncode != 0:
            said = (done.stderr or done.stdout).splitlines()  # its words, not its traceback
            reason = [line for line in said
                      if line.strip() and not line.startswith((" ", "Traceback"))][-6:]
            raise ProjectError(f"dependencies {wanted} of {self.path} "
                               "could not be installed:\n  " + "\n  ".join(reason))

    def env_vars(self) -> dict[str, str]:
        """``env`` (a file, relative to the project, or a mapping), and the keys that map
        onto our settings (``auth.path``, ``checkpointer.ttl``): every replica's."""
        if isinstance(self.env, str):
            file = self.root / self.env
            if not file.is_file():
                raise ProjectError(f"env: no file {file}")
            env = {k: v or "" for k, v in dotenv_values(file).items()}
        else:
            env = dict(self.env or {})
        if self.auth and self.auth.path:
            target, _, attr = self.auth.path.rpartition(":")
            env["AGENT_CLUSTER_AUTH__PATH"] = f"{self._file_or_module(target)}:{attr}"
        if self.store:  # store.index and store.ttl (agents.memory)
            env["AGENT_CLUSTER_STORE"] = StoreSettings.model_validate(self.store
                                                                      ).model_dump_json()
        ttl = self.checkpointer.ttl if self.checkpointer else None
        if ttl and ttl.default_ttl:
            env["AGENT_CLUSTER_RETENTION__THREAD_TTL_MINUTES"] = str(ttl.default_ttl)
        if ttl and ttl.sweep_interval_minutes:
            env["AGENT_CLUSTER_RETENTION__SWEEP_INTERVAL_S"] = str(ttl.sweep_interval_minutes
                                                                   * 60)
        return env

    # the graphs
    def _file_or_module(self, target: str) -> str:
        if target.endswith(".py") or "/" in target:
            return str((self.root / target).resolve())
        return target

    def on_path(self) -> None:
        """Local dependencies importable in this process (the project's own modules)."""
        for folder in reversed(self.local_paths()):
            if str(folder) not in sys.path:
                sys.path.insert(0, str(folder))

    def target(self, graph_id: str) -> tuple[str, str]:
        """Where ``graphs[graph_id]`` is: (an absolute file or a module, the attribute)."""
        spec = self.graphs[graph_id]
        path = spec.path if isinstance(spec, GraphSpec) else spec
        where, sep, attr = path.rpartition(":")
        if not sep or not where or not attr:
            raise GraphLoadError(graph_id, path, "?", "must be './file.py:attr' or "
                                 "'package.module:attr'")
        return self._file_or_module(where), attr

    def import_graph(self, graph_id: str) -> Any:
        """The attribute ``graphs[graph_id]`` names, imported (GraphLoadError if not)."""
        where, attr = self.target(graph_id)
        self.on_path()
        try:
            module = import_file(Path(where)) if where.endswith(".py") else \
                importlib.import_module(where)
        except Exception as exc:
            raise GraphLoadError(graph_id, where, attr, f"{type(exc).__name__}: {exc}") from exc
        if not hasattr(module, attr):
            raise GraphLoadError(graph_id, where, attr, "no such attribute")
        return getattr(module, attr)

    async def load_graph(self, graph_id: str, checkpointer: Any = None,
                         store: Any = None) -> Pregel:
        """The graph compiled (or re-bound) with ``checkpointer`` and ``store``."""
        found = self.import_graph(graph_id)
        if not isinstance(found, StateGraph | Pregel) and callable(found):
            try:
                found = await call_factory(found)
            except Exception as exc:
                raise GraphLoadError(graph_id, *self.target(graph_id),
                                     f"the factory raised {type(exc).__name__}: {exc}") from exc
        try:
            if isinstance(found, StateGraph):
                return found.compile(checkpointer=checkpointer, store=store)
            if isinstance(found, Pregel):
                return found.copy(update={"checkpointer": checkpointer, "store": store})
        except Exception as exc:
            raise GraphLoadError(graph_id, *self.target(graph_id),
                                 f"it does not compile: {type(exc).__name__}: {exc}") from exc
        raise GraphLoadError(graph_id, *self.target(graph_id),
                             f"{type(found).__name__} is not a graph (a compiled graph, a "
                             "StateGraph, or a factory returning one)")

    async def load_graphs(self, checkpointer: Any = None, store: Any = None
                          ) -> dict[str, Pregel]:
        return {graph_id: await self.load_graph(graph_id, checkpointer, store)
                for graph_id in self.graphs}

    def check(self, built_ins: list[str]) -> list[str]:
        """What a start needs, checked in this process before replicas start: the ids,
        every graph loaded (with this process's environment). Returns the notes to print."""
        self.check_ids(built_ins)
        asyncio.run(self.load_graphs())
        return self.notes()


def is_package(folder: Path) -> bool:
    return (folder / "pyproject.toml").is_file() or (folder / "setup.py").is_file()


def import_file(file: Path) -> Any:
    """A module from its file, under a name of its own (registered, so that pickling and
    dataclasses find it)."""
    if not file.is_file():
        raise FileNotFoundError(f"no file {file}")
    name = f"langgraph_project_{hashlib.sha256(str(file).encode()).hexdigest()[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


async def call_factory(factory: Any) -> Any:
    """A graph factory called as LangGraph's server calls one: with a config if it takes
    a parameter, awaited if it is async, entered if it is a context manager (and left
    open: the graph lives as long as the process)."""
    takes_config = bool(inspect.signature(factory).parameters)
    made = factory(RunnableConfig(configurable={})) if takes_config else factory()
    if hasattr(made, "__aenter__"):
        return await made.__aenter__()
    if hasattr(made, "__enter__"):
        return made.__enter__()
    return await made if inspect.isawaitable(made) else made
