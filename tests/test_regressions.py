"""Failed runs become regression cases: every exported case in tests/regressions/ replays
through the real graphs (the model replaced by its recorded responses) and must not fail
any more, unless its file names a ``known_cause``. And the loop itself: a forced failure is
kept, exported, and replays red under the cause and green once it is fixed."""

from __future__ import annotations

import json

import pytest

from agents.settings import Settings
from agents.system import AgentSystem
from serve_app.resources.schemas import RunCreate
from serve_app.resources.service import AgentService
from serve_app.runs import regressions
from serve_app.runs.regressions import RunFeedback, record_feedback

RESEARCH = "Research how Redis persistence works and write a Python function that parses " \
           "a redis.conf line"
CASES = list(regressions.case_files())


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
async def test_exported_case_replays_without_failing(path, settings: Settings):
    case = json.loads(path.read_text())
    outcome = await regressions.replay(case, settings)
    if outcome["status"] == "skipped":
        pytest.skip(outcome["error"])
    if case.get("known_cause"):
        if outcome["status"] != "success":
            pytest.xfail(f"known cause: {case['known_cause']}")
        pytest.fail(f"{path.name} passes now: remove its known_cause")
    assert outcome["status"] == "success", (path.name, outcome)


async def run_once(service: AgentService, text: str) -> dict:
    thread, _ = await service.records.create_thread(None, {})
    run = await service.runs.create(thread["thread_id"], RunCreate.model_validate({
        "assistant_id": "supervisor",
        "input": {"messages": [{"role": "user", "content": text}]}}))
    return await service.streams.wait_for_end(run["thread_id"], run["run_id"])


async def test_a_failed_run_is_kept_exported_and_replays_green_once_fixed(settings, tmp_path,
                                                                          redis_client):
    broken = settings.model_copy(update={"supervisor_max_steps": 1})  # the forced cause
    async with await AgentSystem.create(broken) as system:
        service = AgentService.in_process(system, replica_id="regressions")
        service.executor.start()
        try:
            failed = await run_once(service, RESEARCH)
            flagged = await run_once(service, "What is Redis persistence?")
            verdict = await record_feedback(service, flagged,
                                            RunFeedback(score=0.0, comment="too vague"))
        finally:
            await service.aclose()

    assert failed["status"] == "error" and failed["error"]["error"] == "StepLimitExceeded"
    assert verdict["kept_as_case"]
    kept = {c["case_id"]: c for c in await regressions.cases(redis_client)}
    case = kept[failed["run_id"]]
    assert case["reason"] == "error" and case["trace_id"] == failed["trace_id"]
    assert case["responses"] and {r["role"] for r in case["responses"]} >= {"supervisor"}
    assert kept[flagged["run_id"]]["feedback"]["comment"] == "too vague"

    written = regressions.write([case, kept[flagged["run_id"]]], tmp_path)
    assert len(written) == 2 and (tmp_path / "dataset.jsonl").read_text().count("\n") == 2
    exported = json.loads(written[0].read_text())
    still = await regressions.replay(exported, broken)
    assert still["status"] == "error" and "StepLimitExceeded" in still["error"]
    fixed = await regressions.replay(exported, settings)  # the default step limit
    assert fixed == {"status": "success"}


async def test_a_flagged_resume_is_kept_with_the_run_that_stopped_and_replays(settings,
                                                                             redis_client):
    """An approval's resume, flagged: its case carries the run that stopped for the
    approval, and the replay reaches that interrupt before it resumes."""
    async with await AgentSystem.create(settings) as system:
        service = AgentService.in_process(system, replica_id="regressions")
        service.executor.start()
        try:
            stopped = await run_once(service, "Refund $5 to order 3")
            resumed = await service.runs.create(stopped["thread_id"], RunCreate.model_validate({
                "assistant_id": "supervisor",
                "command": {"resume": {"action": "approve", "by": "alice"}}}))
            resumed = await service.streams.wait_for_end(resumed["thread_id"],
                                                         resumed["run_id"])
            verdict = await record_feedback(service, resumed, RunFeedback(score=0.1))
        finally:
            await service.aclose()

    assert resumed["status"] == "success" and verdict["kept_as_case"]
    case = {c["case_id"]: c for c in await regressions.cases(redis_client)}[resumed["run_id"]]
    assert case["interrupted_by"]["run_id"] == stopped["run_id"]
    assert case["interrupted_by"]["responses"]
    assert await regressions.replay(json.loads(json.dumps(case)), settings) == \
        {"status": "success"}
