"""The settings reference, ``docs/settings.md``, generated from ``Settings`` so that it cannot
drift from the code: ``.venv/bin/python -m agents.settings_doc > docs/settings.md``.

``tests/test_docs.py`` fails when the committed page differs from what this prints, or when a
setting has no description."""

from __future__ import annotations

import json
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import annotated_types
from pydantic import AliasChoices, BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from agents.settings import PROJECT_ROOT, Settings, _OpenAIEnv

ENV_PREFIX = "AGENT_CLUSTER_"
_CONVENTIONAL_ENV = {("model", key): env for env, key in _OpenAIEnv._ENV.items()}
_BOUNDS = ((annotated_types.Gt, "gt", ">"), (annotated_types.Ge, "ge", ">="),
           (annotated_types.Lt, "lt", "<"), (annotated_types.Le, "le", "<="))


@dataclass(frozen=True)
class Setting:
    """One row of the reference: a leaf of ``Settings``, or an item field of a collection."""

    path: tuple[str, ...]
    type: str
    default: str
    description: str
    env: str

    @property
    def name(self) -> str:
        return ".".join(self.path)


def settings(model: type[BaseModel] = Settings, path: tuple[str, ...] = (),
             item_of: str = "") -> Iterator[Setting]:
    """Every setting of ``model``, depth first; a collection of models (``roles``,
    ``auth.api_keys``) is one row, then a row per field of its items."""
    for name, field in model.model_fields.items():
        here = (*path, name)
        section = model_of(field.annotation)
        if section is not None and field.annotation is section:
            yield from settings(section, here, item_of)
            continue
        env = f"in `{item_of}` (JSON)" if item_of else _env(here, field)
        yield Setting(here, _type(field), _default(field), field.description or "", env)
        if section is not None:
            item = "<name>" if typing.get_origin(field.annotation) is dict else "[i]"
            yield from settings(section, (*here, item), item_of or _env_name(here))


def model_of(annotation: object) -> type[BaseModel] | None:
    """The model a field holds: itself, or its items' (``dict[str, M]``, ``list[M]``)."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _env_name(path: tuple[str, ...]) -> str:
    return ENV_PREFIX + "__".join(path).upper()


def _env(path: tuple[str, ...], field: FieldInfo) -> str:
    names = [_env_name(path)]
    if isinstance(field.validation_alias, AliasChoices):
        names += [alias for alias in field.validation_alias.choices
                  if isinstance(alias, str) and alias.isupper() and alias not in names]
    if path in _CONVENTIONAL_ENV:
        names.append(_CONVENTIONAL_ENV[path])
    return " or ".join(f"`{name}`" for name in names)


def _type(field: FieldInfo) -> str:
    annotation = field.annotation
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    for module in ("typing.", "agents.settings.", "pathlib."):
        text = text.replace(module, "")
    bounds = [f"{sign} {getattr(meta, attr)}" for meta in field.metadata
              for kind, attr, sign in _BOUNDS if isinstance(meta, kind)]
    bounds += [f"length >= {meta.min_length}" for meta in field.metadata
               if isinstance(meta, annotated_types.MinLen)]
    bounds += [f"matching `{meta.pattern}`" for meta in field.metadata
               if getattr(meta, "pattern", None)]
    return f"`{text}`" + (", " + ", ".join(bounds) if bounds else "")


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, Path):
        relative = value.relative_to(PROJECT_ROOT) if value.is_relative_to(PROJECT_ROOT) else value
        return f"`<project>/{relative}`" if relative is not value else f"`{value}`"
    if isinstance(value, dict) and any(isinstance(v, BaseModel) for v in value.values()):
        return ", ".join(f"`{key}`" for key in value)
    return f"`{json.dumps(to_jsonable_python(value))}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render() -> str:
    """The whole page, in Markdown."""
    lines = [
        "# Settings reference",
        "",
        "Generated from `agents.settings.Settings` by "
        "`.venv/bin/python -m agents.settings_doc > docs/settings.md`; "
        "`tests/test_docs.py` fails when this page differs from what that prints.",
        "",
        "Every setting is read, highest precedence first, from: keyword arguments (tests), "
        f"environment variables (`{ENV_PREFIX}<SECTION>__<KEY>`, e.g. "
        f"`{ENV_PREFIX}REDIS__POOL_SIZE=128`; lists and maps as JSON), "
        "the conventional `REDIS_URL`, `OPENAI_BASE_URL`, `OPENAI_API_KEY` and `OPENAI_MODEL`, "
        "the YAML file named by `AGENT_CLUSTER_CONFIG` (default "
        "[`configs/agents.yaml`](../configs/agents.yaml)), then the defaults below. "
        "`<project>` is the checkout's root.",
    ]
    sections: dict[str, list[Setting]] = {"": []}
    for row in settings():
        sections.setdefault(_section(row.path[0]), []).append(row)
    for section, rows in sections.items():
        lines += ["", *_heading(section), "",
                  "| setting | type | default | env var | what it does |",
                  "|---|---|---|---|---|"]
        for row in rows:
            cells = (f"`{row.name}`", row.type, row.default, row.env,
                     row.description.replace("<", "&lt;"))  # not an HTML tag
            lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def _section(top: str) -> str:
    """Where a top-level field is listed: its own section if it holds models, else "Top level"."""
    return top if model_of(Settings.model_fields[top].annotation) else ""


def _heading(section: str) -> list[str]:
    if not section:
        return ["## Top level"]
    model = model_of(Settings.model_fields[section].annotation)
    doc = " ".join((model.__doc__ or "").split()) if model else ""
    return [f"## `{section}`", "", doc] if doc else [f"## `{section}`"]


if __name__ == "__main__":
    print(render(), end="")
