"""Approvals at the API: who may decide a pending sensitive call, and the log of decisions.

Deciding an interrupt that waits on a sensitive tool (a ``resume`` from the SDK or
``/api/approve``, or any other command or state update while one waits) needs the approver
permission (``auth.approver_permission``). The decision is rewritten before it reaches the
graph: ``by`` is the authenticated identity (a body's ``by`` is ignored; without auth, on
loopback, it is kept but logged as unauthenticated), and it carries where it was recorded.

Each thread keeps an append-only log (a Redis Stream, ``keys.approvals_key``): who, when,
the action, the original and edited args, the reason and the interrupt answered. The
specialists' tools node runs a sensitive call only if its decision is found in that log for
that very call (``RecordedApprovals``), so a forged resume payload or a state update cannot
make it run.

A decision may come in LangGraph's ``HumanResponse`` form (``agents.approval``), as Agent
Inbox and agent-chat-ui send it. A user's graph that interrupts with a bare
``HumanInterrupt`` waits on a human the same way: the approver rule holds and its answers
are logged, then reach the graph as ``HumanResponse`` s, shaped as it asked (a list for a
list).
"""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis

from agents.approval import (
    HumanInterrupt,
    HumanResponse,
    check_responses,
    human_interrupts,
    human_responses,
    parse_decision,
)
from agents.errors import InvalidDecisionError
from serve_app.keys import approvals_key
from serve_app.resources.api_errors import ApiError
from serve_app.runs.records import now_iso


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value


class ApprovalLog:
    """Append-only: entries are only ever added (XADD), read in order, never changed."""

    def __init__(self, redis: Redis):
        self.redis = redis

    async def append(self, thread_id: str, entry: dict[str, Any]) -> str:
        entry_id = await self.redis.xadd(approvals_key(thread_id),
                                         {"entry": json.dumps({**entry, "at": now_iso()})})
        return _text(entry_id)

    async def read(self, thread_id: str, after: str | None = None,
                   limit: int = 100) -> list[dict[str, Any]]:
        start = f"({after}" if after else "-"
        rows = await self.redis.xrange(approvals_key(thread_id), start, "+", count=limit)
        return [{"id": _text(i), **json.loads(f[b"entry"])} for i, f in rows]

    async def get(self, thread_id: str, entry_id: str) -> dict[str, Any] | None:
        try:
            rows = await self.redis.xrange(approvals_key(thread_id), entry_id, entry_id)
        except Exception:  # not a stream id
            return None
        return {"id": entry_id, **json.loads(rows[0][1][b"entry"])} if rows else None


class RecordedApprovals:
    """``agents.approval.ApprovalVerifier`` over the approval log: the decision of a
    sensitive call must point at an entry recorded for this call, on this thread, with
    these args, that approved or edited it."""

    def __init__(self, redis: Redis):
        self.log = ApprovalLog(redis)

    async def check(self, thread_id: str, call: dict[str, Any],
                    decision: dict[str, Any]) -> str | None:
        ref = decision.get("approval")
        if not isinstance(ref, dict) or not ref.get("log") or not ref.get("id"):
            return "no approval was recorded for it (decisions are recorded by the API)"
        entry = await self.log.get(str(ref["log"]), str(ref["id"]))
        if entry is None or entry.get("event") != "decision":
            return "the approval it names was never recorded"
        if entry.get("tool_call_id") != call["id"] or entry.get("target_thread") != thread_id:
            return "the recorded approval is for another call"
        if entry.get("action") not in ("approve", "edit"):
            return f"the recorded decision is {entry.get('action')!r}"
        if entry.get("args") != call["args"]:
            return "its arguments are not the approved ones"
        return None


def is_ours(value: Any) -> bool:
    """An interrupt of a sensitive tool (``agents.approval.ApprovalRequest``)."""
    return isinstance(value, dict) and value.get("type") == "approval"


def approval_interrupts(pending: dict[str, Any]) -> dict[str, Any]:
    """The pending interrupts that wait on a human decision: sensitive tools', and a user's
    graph's ``HumanInterrupt`` s."""
    return {iid: value for iid, value in pending.items()
            if is_ours(value) or human_interrupts(value)}


def human_entries(interrupt_id: str, asked: list[HumanInterrupt],
                  responses: list[HumanResponse], by: str) -> list[dict[str, Any]]:
    """The log entries of a bare ``HumanInterrupt``'s answers, one per request."""
    entries = []
    for request, response in zip(asked, responses, strict=True):
        decision = response.decision()
        entries.append({
            "event": "decision", "interrupt_id": interrupt_id, "action": decision.action,
            "response": response.type, "by": by, "tool": request.action_request.action,
            "original_args": request.action_request.args,
            "args": decision.args or request.action_request.args,
            "reason": decision.reason})
    return entries


class Approvals:
    """The approver rule and the log, for the HTTP routes (``serve_app.api.access``)."""

    def __init__(self, service: Any, permission: str):
        self.service = service
        self.permission = permission
        self.log = ApprovalLog(service.redis)

    async def pending(self, thread: dict[str, Any]) -> dict[str, Any]:
        snapshot = await self.service.threads.snapshot(thread)
        return {i.id: i.value for i in snapshot.interrupts}

    def require_approver(self, user: Any, open_mode: bool, what: str) -> None:
        if not open_mode and self.permission not in user.permissions:
            raise ApiError(403, f"{what} needs the permission {self.permission!r}, which "
                                f"{user.identity!r} does not have")

    async def guard_state_change(self, user: Any, open_mode: bool, thread: dict[str, Any],
                                 what: str) -> None:
        """A command or state update while a sensitive call waits could skip its approval:
        only an approver may, and it is logged."""
        waiting = approval_interrupts(await self.pending(thread))
        if not waiting:
            return
        self.require_approver(user, open_mode, what)
        await self.log.append(thread["thread_id"], {
            "event": "state_change", "what": what, "by": user.identity,
            "authenticated": not open_mode, "interrupt_ids": sorted(waiting)})

    async def record_resume(self, user: Any, open_mode: bool, thread: dict[str, Any],
                            resume: Any) -> tuple[Any, list[str]]:
        """The resume to send to the graph (decisions of sensitive calls rewritten) and the
        ids of the log entries written. 403 without the approver permission, 422 for a
        malformed decision, 409 when nothing is pending."""
        thread_id = thread["thread_id"]
        pending = await self.pending(thread)
        if not pending:
            raise ApiError(409, f"thread {thread_id!r} has no pending interrupt")
        keyed = isinstance(resume, dict) and bool(resume) and set(resume) <= set(pending)
        answers = resume if keyed else dict.fromkeys(pending, resume)
        waiting = approval_interrupts(pending)
        if not set(answers) & set(waiting):
            return resume, []
        self.require_approver(user, open_mode, "deciding a pending approval")
        rewritten: dict[str, Any] = {}
        entries: list[str] = []
        for interrupt_id, value in answers.items():
            request = waiting.get(interrupt_id)
            if request is None:
                rewritten[interrupt_id] = value
                continue
            try:
                asked, responses = human_interrupts(request), human_responses(value)
                if asked and responses is not None:
                    check_responses(asked, responses)
                if not is_ours(request):
                    rewritten[interrupt_id] = await self._answer_bare(
                        user, open_mode, thread_id, interrupt_id, request, responses, entries)
                    continue
                decision = parse_decision(value)
            except InvalidDecisionError as exc:
                raise ApiError(422, str(exc)) from exc
            by = user.identity if not open_mode else (decision.by or "anonymous")
            args = decision.args if decision.action == "edit" else request.get("args")
            entry = {
                "event": "decision", "interrupt_id": interrupt_id, "action": decision.action,
                "by": by, "authenticated": not open_mode, "tool": request.get("tool"),
                "tool_call_id": request.get("tool_call_id"),
                "target_thread": request.get("thread_id") or thread_id,
                "requested_by": request.get("requested_by") or request.get("role"),
                "original_args": request.get("args"), "args": args,
                "reason": decision.reason,
            }
            entry_id = await self.log.append(thread_id, entry)
            entries.append(entry_id)
            rewritten[interrupt_id] = {
                **decision.model_dump(exclude_none=True, exclude={"key", "approval", "by"}),
                "by": by, "approval": {"log": thread_id, "id": entry_id}}
        if not keyed and len(rewritten) == 1:
            return next(iter(rewritten.values())), entries
        return rewritten, entries

    async def _answer_bare(self, user: Any, open_mode: bool, thread_id: str,
                           interrupt_id: str, request: Any,
                           responses: list[HumanResponse] | None, entries: list[str]) -> Any:
        """Log the answers to a user's ``HumanInterrupt`` (ids added to ``entries``) and
        return them as the graph asked: a list for a list, else the one response."""
        if responses is None:
            raise InvalidDecisionError("this interrupt is a HumanInterrupt: answer it with "
                                       "HumanResponse(s) {'type': 'accept' | 'edit' | "
                                       "'response' | 'ignore', 'args': ...}")
        by = user.identity if not open_mode else (responses[0].by or "anonymous")
        for entry in human_entries(interrupt_id, human_interrupts(request), responses, by):
            entries.append(await self.log.append(
                thread_id, {**entry, "authenticated": not open_mode}))
        wire = [response.wire() for response in responses]
        return wire if isinstance(request, list) else wire[0]

    async def not_applied(self, thread_id: str, entries: list[str], detail: str) -> None:
        """The decisions of ``entries`` were logged but their run was refused."""
        for entry_id in entries:
            await self.log.append(thread_id, {"event": "not_applied", "decision": entry_id,
                                              "detail": detail})
