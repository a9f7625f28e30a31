"""Turn graph values (LangChain messages, interrupts, pydantic models) into plain JSON.

Every streamed token passes through here (a ``messages`` event is a message chunk and its
metadata), so the common case is made cheap: plain values are recognised first, and
``dumps`` lets orjson walk dicts, lists and strings in C, calling back only for the objects
it does not know.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import orjson
from langchain_core.messages import BaseMessage
from langgraph.types import Interrupt, Send
from pydantic import BaseModel

_PLAIN = (str, int, float, bool, type(None))


def to_jsonable(value: Any) -> Any:
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [to_jsonable(v) for v in value]
    return _convert(value)


def _convert(value: Any) -> Any:
    """An object that is not plain JSON as the API shows it."""
    if isinstance(value, BaseMessage):
        return value.model_dump(exclude={"model_config"})
    if isinstance(value, Interrupt):
        return {"value": to_jsonable(value.value), "id": value.id}
    if isinstance(value, Send):
        return {"node": value.node, "arg": to_jsonable(value.arg)}
    if isinstance(value, BaseModel):
        return to_jsonable(value.model_dump())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, frozenset):
        return [to_jsonable(v) for v in value]
    return str(value)


def dumps(value: Any) -> str:
    """``value`` as compact JSON text, as ``to_jsonable`` would show it."""
    try:
        return orjson.dumps(value, default=_convert, option=orjson.OPT_NON_STR_KEYS |
                            orjson.OPT_PASSTHROUGH_DATACLASS).decode()
    except orjson.JSONEncodeError:  # e.g. an integer past 64 bits: the slow, general way
        return json.dumps(to_jsonable(value), separators=(",", ":"))
