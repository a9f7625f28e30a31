"""Webhooks: a run's (and a cron's) ``webhook`` gets the finished run, and
``webhooks.approval_url`` hears of every approval that becomes pending.

Delivery never blocks or fails a run, and survives the replica that created it: creating a
run that has something to deliver puts it in a durable outbox in Redis (``Outbox.watch``);
every replica drains the outbox in the background (paced, ``serve_app.runs.pace``: the cluster
as a whole drains about every ``webhooks.poll_interval_s``). An entry waits until its run
has ended, then is POSTed: the run record plus ``values`` (or ``error``),
``run_started_at``, ``run_ended_at`` and ``webhook_sent_at``, as LangGraph Platform sends
it; for a pending approval: ``{"event": "approval.pending", thread_id, run_id,
interrupt_id, tool, args, requested_by}``. Each POST carries ``X-Webhook-Timestamp`` and,
with ``webhooks.secret``, ``X-Webhook-Signature: sha256=<hex HMAC-SHA256(secret,
"<timestamp>.<body>")>``. A failure (no answer, or not 2xx) is retried with exponential
backoff up to ``webhooks.max_attempts``; every attempt is recorded on the run record
(``webhook_deliveries``; approvals: ``approval_deliveries``). A replica that dies mid-POST
leaves its claim to expire and another replica sends it again: delivery is at least once.

Destinations on loopback, private, link-local or reserved addresses are refused at
creation (422 "Webhook host blocked: ..."), unless ``webhooks.allow_private_hosts``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import SplitResult, urlsplit

import httpx
from redis.asyncio import Redis
from redis.exceptions import RedisError

from agents.settings import WebhookSettings
from serve_app.keys import WEBHOOK_ENTRY_PREFIX as ENTRY
from serve_app.keys import WEBHOOKS_DUE as DUE
from serve_app.resources.api_errors import ApiError
from serve_app.runs.jsonable import to_jsonable
from serve_app.runs.pace import Replicas, one_replica, pause
from serve_app.runs.records import TERMINAL, Records, now_iso

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 300.0
WAIT_FOR_END_S = (0.5, 1.0, 2.0, 5.0)  # checks of a running run, then every 5 s

# KEYS[1]: the due set; ARGV[1]: now; ARGV[2]: the claim's end; ARGV[3..]: ids. The ids
# still due, each pushed to the claim's end (so no other replica takes it meanwhile).
_CLAIM = """
local claimed = {}
for i = 3, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) <= tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i])
    table.insert(claimed, ARGV[i])
  end
end
return claimed
"""

OutputOf = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def blocked_reason(address: str) -> str | None:
    ip = ipaddress.ip_address(address)
    if ip.is_loopback:
        return "loopback IP range"
    if ip.is_private or ip.is_link_local or ip.is_reserved or ip.is_multicast or \
            ip.is_unspecified:
        return "private IP range"
    return None


def check_url(url: Any) -> tuple[SplitResult, int]:
    """``url`` split, and its port, if it is an absolute http(s) URL; else ``ApiError`` 422
    (where it may point is ``check_destination``'s rule)."""
    if not isinstance(url, str) or len(url) > 4096:
        raise ApiError(422, "webhook must be an http(s) URL of at most 4096 characters")
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # a malformed host or port
        parts, port = None, 0
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(422, f"webhook {url[:200]!r} is not an absolute http(s) URL")
    return parts, port


async def check_destination(url: Any, settings: WebhookSettings) -> str:
    """``url`` if it may receive webhooks, else ``ApiError`` 422."""
    parts, port = check_url(url)
    if settings.allow_private_hosts:
        return url
    try:
        found = await asyncio.get_running_loop().getaddrinfo(
            parts.hostname, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError, UnicodeError) as exc:
        raise ApiError(422, f"Webhook host {parts.hostname!r} does not resolve: {exc}") from None
    for *_, sockaddr in found:
        reason = blocked_reason(sockaddr[0].split("%")[0])
        if reason:
            raise ApiError(422, f"Webhook host blocked: {reason}")
    return url


def signature(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def run_payload(run: dict[str, Any], output: dict[str, Any], ended_at: str
                ) -> dict[str, Any]:
    """What a run's webhook receives (LangGraph Platform's shape)."""
    payload = {key: value for key, value in run.items()
               if key not in ("webhook_deliveries", "approval_deliveries")}
    payload.update(run_started_at=run["created_at"], run_ended_at=ended_at,
                   webhook_sent_at=now_iso())
    if "__error__" in output:
        payload.update(values=None, error=output["__error__"])
    else:
        payload["values"] = {k: v for k, v in output.items() if k != "__interrupt__"}
    return payload


def approval_payloads(run: dict[str, Any], output: dict[str, Any]) -> list[dict[str, Any]]:
    """One notification per approval the run left pending."""
    found = []
    for pending in output.get("__interrupt__") or ():
        value = pending.get("value") if isinstance(pending, dict) else None
        if isinstance(value, dict) and "tool" in value:
            found.append({"event": "approval.pending", "thread_id": run["thread_id"],
                          "run_id": run["run_id"], "interrupt_id": pending.get("id"),
                          "tool": value["tool"], "args": value.get("args"),
                          "requested_by": value.get("requested_by") or value.get("role"),
                          "sent_at": now_iso()})
    return found


class Outbox:
    """The durable outbox of one Redis, shared by every replica."""

    def __init__(self, redis: Redis, settings: WebhookSettings):
        self.redis = redis
        self.settings = settings
        self.records = Records(redis)
        self._claim = redis.register_script(_CLAIM)

    async def watch(self, run: dict[str, Any], webhook: str | None) -> None:
        """Deliver ``run``'s end to ``webhook`` and, with ``webhooks.approval_url``, its
        pending approvals; nothing to deliver: nothing stored."""
        targets = {"run": webhook, "approval": self.settings.approval_url}
        targets = {kind: url for kind, url in targets.items() if url}
        if not targets:
            return
        delivery_id = run["run_id"]  # not the thread id: no key of the thread's outlives it
        entry = {"thread_id": run["thread_id"], "run_id": run["run_id"], "targets": targets,
                 "checks": 0, "attempts": 0}
        try:
            await self._reschedule(delivery_id, entry, WAIT_FOR_END_S[0])
        except RedisError:  # the run is made: an error now would have it made twice
            log.exception("run %s: its webhooks could not be queued", run["run_id"])

    async def drain_forever(self, output_of: OutputOf,
                            replicas: Replicas = one_replica) -> None:
        """Every replica runs this; each due entry is taken by one replica at a time. The
        replicas' drains are paced: the cluster drains about every ``poll_interval_s``."""
        async with httpx.AsyncClient(timeout=self.settings.timeout_s) as client:
            while True:
                try:
                    await self.drain_once(output_of, client)
                except asyncio.CancelledError:
                    raise
                except Exception:  # Redis away: try again next round
                    log.exception("webhook outbox: drain failed")
                await pause(self.settings.poll_interval_s, replicas)

    async def drain_once(self, output_of: OutputOf, client: httpx.AsyncClient) -> int:
        """Take the due entries and process them; how many were taken."""
        now = time.time()
        due = await self.redis.zrangebyscore(DUE, "-inf", now, start=0, num=50)
        if not due:
            return 0
        claim_end = now + self.settings.timeout_s * 2 + 5
        claimed = await self._claim(keys=[DUE], args=[now, claim_end, *due])
        await asyncio.gather(*(self._process(_text(d), output_of, client) for d in claimed))
        return len(claimed)

    async def _process(self, delivery_id: str, output_of: OutputOf,
                       client: httpx.AsyncClient) -> None:
        raw = await self.redis.get(ENTRY + delivery_id)
        if raw is None:
            await self.redis.zrem(DUE, delivery_id)
            return
        entry = json.loads(raw)
        run = await self.records.get_run(entry["thread_id"], entry["run_id"])
        if run is None:  # deleted (or rolled back): nothing to tell
            await self._forget(delivery_id)
            return
        if run["status"] not in TERMINAL:
            wait = WAIT_FOR_END_S[min(entry["checks"], len(WAIT_FOR_END_S) - 1)]
            entry["checks"] += 1
            await self._reschedule(delivery_id, entry, wait)
            return
        # the end as first seen: recording deliveries on the record moves its updated_at
        entry.setdefault("ended_at", run["updated_at"])
        output = await output_of(run)
        failed = {}
        for kind, url in entry["targets"].items():
            payloads = [run_payload(run, output, entry["ended_at"])] if kind == "run" else \
                approval_payloads(run, output)
            for payload in payloads:
                ok = await self._post(client, run, kind, url, payload, entry["attempts"] + 1)
                if not ok:
                    failed[kind] = url
        entry["attempts"] += 1
        if not failed or entry["attempts"] >= self.settings.max_attempts:
            if failed:
                log.warning("webhook %s: gave up after %d attempts", delivery_id,
                            entry["attempts"])
            await self._forget(delivery_id)
            return
        entry["targets"] = failed
        backoff = min(self.settings.backoff_s * 2 ** (entry["attempts"] - 1), MAX_BACKOFF_S)
        await self._reschedule(delivery_id, entry, backoff)

    async def _post(self, client: httpx.AsyncClient, run: dict[str, Any], kind: str,
                    url: str, payload: dict[str, Any], attempt: int) -> bool:
        body = json.dumps(to_jsonable(payload), default=str).encode()
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "X-Webhook-Timestamp": timestamp,
                   "X-Webhook-Event": "approval.pending" if kind == "approval" else "run"}
        if self.settings.secret:
            headers["X-Webhook-Signature"] = signature(self.settings.secret, timestamp, body)
        attempt_log: dict[str, Any] = {"url": url, "attempt": attempt, "at": now_iso()}
        try:
            response = await client.post(url, content=body, headers=headers)
            attempt_log["status_code"] = response.status_code
            ok = response.is_success
        except httpx.HTTPError as exc:
            attempt_log["error"] = f"{type(exc).__name__}: {exc}"[:500]
            ok = False
        attempt_log["ok"] = ok
        field = "webhook_deliveries" if kind == "run" else "approval_deliveries"
        current = await self.records.get_run(run["thread_id"], run["run_id"])
        if current is not None:
            await self.records.update_run(run["thread_id"], run["run_id"],
                                          **{field: [*current.get(field, []), attempt_log]})
        return ok

    async def _reschedule(self, delivery_id: str, entry: dict[str, Any],
                          after_s: float) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(ENTRY + delivery_id, json.dumps(entry))
            pipe.zadd(DUE, {delivery_id: time.time() + after_s})
            await pipe.execute()

    async def _forget(self, delivery_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(DUE, delivery_id)
            pipe.delete(ENTRY + delivery_id)
            await pipe.execute()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
