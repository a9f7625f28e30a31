"""A demo back office in Redis: the sensitive actions that need a human's approval.

Customers 1..20 each have 3 records (``backoffice:{bo}:customer:<id>:records``, a list of
JSON); orders 1..100 have amounts (``backoffice:{bo}:orders``, a hash order id -> amount).
Every executed action increments its field of ``backoffice:{bo}:effects``, so tests can check
it ran exactly once. Every key has the hash tag ``{bo}``: on a Redis Cluster the back office
is one slot, so its MULTI/EXECs stay valid.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from collections.abc import Callable

from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel, Field
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from agents.effects import LEDGER_TTL_S, current_effect_key
from agents.keys import backoffice_key

SEEDED = backoffice_key("seeded")
CUSTOMERS = backoffice_key("customers")
ORDERS = backoffice_key("orders")
REFUNDS = backoffice_key("refunds")
EFFECTS = backoffice_key("effects")
CUSTOMER_COUNT = 20
ORDER_COUNT = 100
RECORD_KINDS = ("profile", "invoice", "support_ticket")


def records_key(customer_id: str) -> str:
    return backoffice_key(f"customer:{customer_id}:records")


def order_amount(order_id: int) -> float:
    """Deterministic demo amounts between $25 and $1000 (order 42: $875)."""
    return 25.0 * (1 + order_id * 17 % 40)


async def seed_backoffice(redis: Redis) -> bool:
    """Create the demo data once, ever: a later seed must not bring deleted records back.

    The marker is set in the same MULTI/EXEC as the data, watched, so concurrent seeds
    write it exactly once and none returns before the data exists. True if this call seeded.
    """
    async with redis.pipeline(transaction=True) as pipe:
        await pipe.watch(SEEDED)
        if await pipe.get(SEEDED) is not None:  # not EXISTS: a cluster pipeline splits it
            return False
        pipe.multi()
        pipe.set(SEEDED, str(int(time.time())), nx=True)
        for customer in range(1, CUSTOMER_COUNT + 1):
            pipe.sadd(CUSTOMERS, str(customer))
            pipe.delete(records_key(str(customer)))
            pipe.rpush(records_key(str(customer)), *(
                json.dumps({"customer_id": str(customer), "kind": kind, "n": n})
                for n, kind in enumerate(RECORD_KINDS, 1)
            ))
        pipe.hset(ORDERS, mapping={str(o): order_amount(o) for o in range(1, ORDER_COUNT + 1)})
        try:
            await pipe.execute()
        except WatchError:  # another process seeded first
            return False
    return True


async def effect_counts(redis: Redis) -> dict[str, int]:
    """How many times each back-office action has been executed."""
    raw = await redis.hgetall(EFFECTS)
    return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}


def _clean_id(value: str) -> str:
    return str(value).strip().lstrip("#").strip()


async def issue_refund(redis: Redis, amount: float, order_id: str, reason: str) -> dict:
    order = _clean_id(order_id)
    stored = await redis.hget(ORDERS, order)
    if stored is None:
        raise ValueError(f"no order {order_id!r}; order ids are 1..{ORDER_COUNT}")
    total = float(stored)
    if not math.isfinite(amount) or amount <= 0:
        raise ValueError(f"refund amount must be a positive number of dollars, got {amount}")
    if amount > total:
        raise ValueError(f"refund amount {amount:g} exceeds order {order}'s amount {total:g}; "
                         f"refund at most {total:g}")
    refund = {"refund_id": f"rf_{uuid.uuid4().hex[:12]}", "amount": amount, "order_id": order,
              "reason": reason, "status": "refunded"}

    def effect(pipe: Pipeline) -> None:
        pipe.rpush(REFUNDS, json.dumps({**refund, "at": time.time()}))
        pipe.hincrby(EFFECTS, "issue_refund", 1)

    return await _once(redis, refund, effect)


async def delete_records(redis: Redis, customer_id: str, reason: str) -> dict:
    customer = _clean_id(customer_id)
    if not await redis.sismember(CUSTOMERS, customer):
        raise ValueError(f"no customer {customer_id!r}; customer ids are 1..{CUSTOMER_COUNT}")
    deleted = await redis.llen(records_key(customer))

    def effect(pipe: Pipeline) -> None:
        pipe.delete(records_key(customer))
        pipe.hincrby(EFFECTS, "delete_records", 1)

    return await _once(redis, {"customer_id": customer, "deleted": deleted}, effect)


async def _once(redis: Redis, result: dict, effect: Callable[[Pipeline], None]) -> dict:
    """Apply ``effect`` and a receipt of ``result`` under the call's idempotency key in one
    MULTI/EXEC: a replayed call returns the first result and changes nothing. The receipt
    lives in the back office (as an external system keeps the idempotency keys it was sent),
    so the transaction stays in its slot; the caller records the thread's ledger entry."""
    key = current_effect_key.get()
    # by digest: no back-office key names a thread (deleting the thread leaves none behind)
    receipt = backoffice_key(f"receipt:{hashlib.sha256(str(key).encode()).hexdigest()[:32]}")
    async with redis.pipeline(transaction=True) as pipe:
        if key is not None:
            await pipe.watch(receipt)
            if (done := await pipe.get(receipt)) is not None:
                return json.loads(done)
        pipe.multi()
        effect(pipe)
        if key is not None:
            pipe.set(receipt, json.dumps(result), ex=LEDGER_TTL_S)
        try:
            await pipe.execute()
        except WatchError:  # the same call ran concurrently and won
            return json.loads(await redis.get(receipt))
    return result


class RefundArgs(BaseModel):
    amount: float = Field(description="Dollars to refund: more than 0, at most the order's amount.")
    order_id: str = Field(description="The order to refund, e.g. '42'.")
    reason: str = Field(min_length=1, description="Why, e.g. 'damaged on arrival'.")


class DeleteArgs(BaseModel):
    customer_id: str = Field(description="The customer whose records to delete, e.g. '7'.")
    reason: str = Field(min_length=1, description="Why, e.g. 'data deletion request'.")


def backoffice_tools(redis: Redis) -> list[BaseTool]:
    async def _refund(amount: float, order_id: str, reason: str) -> str:
        return json.dumps(await issue_refund(redis, amount, order_id, reason))

    async def _delete(customer_id: str, reason: str) -> str:
        return json.dumps(await delete_records(redis, customer_id, reason))

    return [
        StructuredTool.from_function(
            coroutine=_refund, name="issue_refund", args_schema=RefundArgs,
            description="Refund money to a customer's order (back office; moves real money).",
            metadata={"progress": "Issuing a refund of ${amount} to order {order_id}..."},
        ),
        StructuredTool.from_function(
            coroutine=_delete, name="delete_records", args_schema=DeleteArgs,
            description="Delete all records of a customer (back office; cannot be undone).",
            metadata={"progress": "Deleting records of customer {customer_id}..."},
        ),
    ]
