"""The docs hold together: the settings reference is what the code generates and describes
every setting, ``configs/agents.yaml`` agrees with ``Settings``, no relative link, path or
setting named in the docs is dead, and every page of ``docs/`` is linked from the README."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Annotated, Any

import pytest
import yaml
from langgraph_sdk.client import CronClient, StoreClient
from pydantic import BaseModel, TypeAdapter, ValidationError

from agents.settings import PROJECT_ROOT, Settings
from agents.settings_doc import model_of, render, settings

README = PROJECT_ROOT / "README.md"
DOCS = PROJECT_ROOT / "docs"
REGENERATE = ".venv/bin/python -m agents.settings_doc > docs/settings.md"


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


# --- the settings reference and configs/agents.yaml ---------------------------------------

def test_settings_reference_is_what_the_code_generates():
    assert (DOCS / "settings.md").read_text() == render(), f"stale: run {REGENERATE}"


def test_every_setting_has_a_description():
    assert [row.name for row in settings() if not row.description.strip()] == []


def config_problems(data: dict[str, Any], model: type[BaseModel] = Settings,
                    path: str = "") -> list[str]:
    """Keys of ``data`` that ``model`` does not have, and values it would refuse."""
    problems = []
    for key, value in data.items():
        name = f"{path}{key}"
        field = model.model_fields.get(key)
        if field is None:
            problems.append(f"{name}: no such setting")
            continue
        section = model_of(field.annotation)
        if section is not None and section is field.annotation and isinstance(value, dict):
            problems += config_problems(value, section, f"{name}.")
            continue
        if section is not None and typing.get_origin(field.annotation) is dict \
                and isinstance(value, dict):
            for item, item_value in value.items():
                if isinstance(item_value, dict):
                    problems += config_problems(item_value, section, f"{name}.{item}.")
        if section is not None and isinstance(value, list):
            for i, item_value in enumerate(value):
                if isinstance(item_value, dict):
                    problems += config_problems(item_value, section, f"{name}[{i}].")
        typed = Annotated[(field.annotation, *field.metadata)] if field.metadata \
            else field.annotation
        try:
            TypeAdapter(typed).validate_python(value)
        except ValidationError as exc:
            problems.append(f"{name}: {exc.errors()[0]['msg']} ({value!r})")
    return problems


def test_agents_yaml_names_only_settings_with_values_of_their_type():
    data = yaml.safe_load((PROJECT_ROOT / "configs" / "agents.yaml").read_text())
    assert config_problems(data) == []


def test_a_config_problem_is_seen():
    """The check itself: an unknown key, at any depth, and a value of the wrong type."""
    bad = {"redis": {"pool_sise": 3}, "api": {"lease_ttl_s": "soon"}, "nonsense": 1,
           "roles": {"coder": {"description": "d", "tools": [], "max_stepz": 2}},
           "supervisor_max_steps": 0}
    assert [problem.split(":")[0] for problem in config_problems(bad)] == [
        "redis.pool_sise", "api.lease_ttl_s", "nonsense", "roles.coder.max_stepz",
        "supervisor_max_steps"]


# --- links and paths ------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE_SPAN = re.compile(r"`([^`\n]+)`")
REPO_PATH = re.compile(r"(?:agents|serve_app|tests|bench|configs|notebooks|docs)/[\w./-]*")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The #anchors of a Markdown file's headings (none for any other file)."""
    found: set[str] = set()
    text = page.read_text() if page.suffix == ".md" else ""
    for line in FENCE.sub("", text).splitlines():
        if match := re.match(r"#{1,6} (.+)", line):
            base = slug(match[1])
            anchor, n = base, 0
            while anchor in found:
                n += 1
                anchor = f"{base}-{n}"
            found.add(anchor)
    return found


def dead_links(page: Path, text: str) -> list[str]:
    """Relative links in ``text`` (as if at ``page``) to a missing file or #anchor."""
    dead = []
    for target in LINK.findall(CODE_SPAN.sub("", FENCE.sub("", text))):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists() or (anchor and anchor not in anchors(path)):
            dead.append(target)
    return dead


def dead_paths(text: str) -> list[str]:
    """Files and folders of this repository named in code spans that do not exist."""
    named = {match[0].rstrip(".") for span in CODE_SPAN.findall(text)
             if (match := REPO_PATH.fullmatch(span))}
    return sorted(path for path in named if not (PROJECT_ROOT / path).exists())


SDK_CLIENTS = {"store": StoreClient, "crons": CronClient}  # `store.put_item` is no setting


def dead_setting_names(text: str) -> list[str]:
    """Code spans shaped like a setting (``<section>.<key>``) that name no setting or section
    of ``Settings`` (nor, for ``store`` and ``crons``, a method of the SDK's client)."""
    names = {".".join(row.path[:n]) for row in settings() for n in range(1, len(row.path) + 1)}
    sections = [name for name, field in Settings.model_fields.items()
                if model_of(field.annotation)]
    shape = re.compile(rf"(?:{'|'.join(sections)})\.[a-z_]+(?:\.[\w<>\[\]]+)*")
    dead = []
    for span in CODE_SPAN.findall(text):
        section, _, rest = span.partition(".")
        if not shape.fullmatch(span) or span in names or re.fullmatch(r"py|yaml|json|md", rest):
            continue
        if not hasattr(SDK_CLIENTS.get(section), rest):
            dead.append(span)
    return dead


@pytest.mark.parametrize("page", pages(), ids=lambda page: page.name)
def test_every_setting_named_exists(page: Path):
    assert dead_setting_names(page.read_text()) == []


@pytest.mark.parametrize("page", pages(), ids=lambda page: page.name)
def test_no_dead_link(page: Path):
    assert dead_links(page, page.read_text()) == []


@pytest.mark.parametrize("page", pages(), ids=lambda page: page.name)
def test_every_path_named_exists(page: Path):
    assert dead_paths(page.read_text()) == []


def test_a_dead_link_path_and_setting_are_seen():
    """The checks themselves."""
    text = ("[ok](docs/durability.md#redis-cluster-not) [ok](docs/scaling.md#redis-cluster) "
            "[gone](docs/nowhere.md) [self](#set-up) [nope](#nope) `serve_app/nowhere.py` "
            "`serve_app/keys.py`")
    assert dead_links(README, text) == ["docs/durability.md#redis-cluster-not",
                                        "docs/nowhere.md", "#nope"]
    assert dead_paths(text) == ["serve_app/nowhere.py"]
    named = "`api.lease_ttl_s` `api.lease_ttl` `store.put_item` `store.put_items` `auth.py` `redis`"
    assert dead_setting_names(named) == ["api.lease_ttl", "store.put_items"]


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / target.partition("#")[0]).resolve()
              for target in LINK.findall(README.read_text())}
    assert [page.name for page in DOCS.glob("*.md") if page.resolve() not in linked] == []


def test_the_layout_page_names_every_package():
    layout = (DOCS / "layout.md").read_text()
    packages = [f"`{init.parent.name}/`"
                for init in (PROJECT_ROOT / "serve_app").glob("*/__init__.py")]
    assert [package for package in packages if package not in layout] == []
