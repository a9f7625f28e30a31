"""Token coalescing in the worker-call seam (agents.streaming.relay)."""

from __future__ import annotations

import asyncio

import pytest

from agents.streaming import relay


def token(text: str, message_id: str = "m1", role: str = "researcher") -> dict:
    return {"type": "token", "role": role, "text": text, "message_id": message_id}


async def produce(items, gap_s: float = 0.0):
    for item in items:
        if gap_s:
            await asyncio.sleep(gap_s)
        if isinstance(item, Exception):
            raise item
        yield item


async def collect(events, linger_s):
    return [event async for event in relay(events, linger_s)]


async def test_a_burst_is_merged_but_the_first_token_goes_out_alone():
    burst = [token(f"w{i} ") for i in range(30)]
    out = await collect(produce(burst), linger_s=0.05)
    assert out[0] == token("w0 ")
    assert len(out) == 2
    assert "".join(e["text"] for e in out) == "".join(t["text"] for t in burst)


async def test_merging_stops_at_other_events_other_messages_and_roles():
    items = [token("a"), token("b"), {"type": "progress", "text": "Searching corpus..."},
             token("c"), token("d"), token("x", message_id="m2"), token("y", role="coder",
                                                                         message_id="m2")]
    out = await collect(produce(items), linger_s=0.05)
    assert [(e["type"], e.get("text")) for e in out] == [
        ("token", "a"), ("token", "b"), ("progress", "Searching corpus..."), ("token", "cd"),
        ("token", "x"), ("token", "y")]


async def test_tokens_slower_than_the_linger_are_not_merged():
    items = [token(f"w{i} ") for i in range(5)]
    out = await collect(produce(items, gap_s=0.03), linger_s=0.005)
    assert [e["text"] for e in out] == [t["text"] for t in items]


async def test_zero_linger_merges_only_what_is_already_waiting():
    out = await collect(produce([token(f"{i}") for i in range(10)], gap_s=0.01), linger_s=0)
    assert len(out) == 10


async def test_a_producer_error_reaches_the_consumer_after_the_earlier_events():
    out = []
    with pytest.raises(ValueError, match="boom"):
        async for event in relay(produce([token("a"), ValueError("boom")]), 0.01):
            out.append(event)
    assert out == [token("a")]
