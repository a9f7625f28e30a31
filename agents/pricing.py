"""Cost in USD of a run's tokens: ``configs/prices.yaml`` (self-hosted models, the stub)
first, then the maintained public table of ``genai-prices``; a model neither knows costs 0
(logged once)."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)
DEFAULT_TABLE = Path(__file__).resolve().parent.parent / "configs" / "prices.yaml"


@functools.cache
def overrides() -> dict[str, dict[str, float]]:
    path = Path(os.environ.get("AGENT_CLUSTER_PRICES") or DEFAULT_TABLE)
    if not path.exists():
        return {}
    return (yaml.safe_load(path.read_text()) or {}).get("models") or {}


@functools.cache
def _warn_unknown(model: str) -> None:
    log.warning("no price for model %r (configs/prices.yaml, genai-prices): counted as 0",
                model)


def cost_usd(model: str, input_tokens: int, output_tokens: int) -> float:
    price = overrides().get(model)
    if price is not None:
        return (input_tokens * price.get("input_per_mtok", 0.0)
                + output_tokens * price.get("output_per_mtok", 0.0)) / 1e6
    try:
        from genai_prices import Usage, calc_price
        return float(calc_price(Usage(input_tokens=input_tokens, output_tokens=output_tokens),
                                model_ref=model).total_price)
    except (ImportError, LookupError):
        _warn_unknown(model)
        return 0.0


def summarize(usage: dict[str, Any]) -> dict[str, Any]:
    """A ``telemetry.Usage.as_dict()`` as the run record shows it: totals, cost, and the
    same by model and by role."""
    by_model: dict[str, dict[str, float]] = {}
    by_role: dict[str, dict[str, float]] = {}
    total = {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0, "model_calls": 0,
             "model_s": 0.0}
    for key, entry in (usage.get("by") or {}).items():
        model, _, role = key.partition("|")
        cost = cost_usd(model, int(entry["input_tokens"]), int(entry["output_tokens"]))
        row = {"input_tokens": int(entry["input_tokens"]),
               "output_tokens": int(entry["output_tokens"]), "cost_usd": cost,
               "model_calls": int(entry.get("calls", 0)),
               "model_s": float(entry.get("model_s", 0.0))}
        for table, name in ((by_model, model), (by_role, role)):
            acc = table.setdefault(name, dict.fromkeys(row, 0))
            for field, value in row.items():
                acc[field] += value
        for field, value in row.items():
            total[field] += value
    return {**total, "tool_s": float(usage.get("tool_s", 0.0)),
            "tool_calls": int(usage.get("tool_calls", 0)),
            "by_model": by_model, "by_role": by_role}
