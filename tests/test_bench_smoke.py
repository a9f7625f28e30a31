"""The benchmark harness must not rot: its smoke mode runs against the real cluster.

``python -m bench.run --smoke`` in a subprocess (Ray can be initialised only once per
process, and this session's own cluster lives in tests/test_serving.py): a few simulated
users, short think time, one step, the audit, the micro-benchmarks, then the Redis capture
(made on the same start, which the smoke runs on a one-master cluster), its replay on 1 and
2 shards, the sizing and the plots. The figures are not judged here (the box is shared),
only that the harness produced a complete, plausible report and that nothing was lost,
duplicated or failed.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agents.settings import PROJECT_ROOT


@pytest.mark.timeout(480)
def test_bench_smoke_mode(tmp_path):
    out = tmp_path / "smoke.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--json", str(out)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=460,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    target = report["targets"]["cluster-2"]
    assert "error" not in target, target["error"]

    audit = target["audit"]
    assert audit["turns"] > 0 and audit["ok"] + audit["refused"] == audit["turns"], audit
    assert audit["lost"] == audit["duplicated"] == audit["unanswered"] == 0, audit
    assert audit["wrong_answer"] == audit["read_errors"] == 0, audit
    assert audit["refused_but_stored"] == audit["busy_threads"] == 0, audit
    assert audit["unaudited_threads"] == 0, audit
    assert audit["refused"] == target["refused_total"]
    assert target["errors_total"] == {} and target["thread_create_errors"] == {}

    spike = target["overload"]  # 4x the step's users: refusals allowed, failures not
    assert spike["users"] == 4 * target["steps"][0]["users"] and spike["turns"] > 0
    assert spike["errors"] == {} and spike["turns_ok"] > 0

    step = target["steps"][0]
    assert step["errors"] == {} and step["turns_ok"] > 0 and step["runs_per_s"] > 0
    assert {"research", "approval"} <= set(step["by_kind"])
    model = step["by_kind"]["research"]["model_to_first_token_ms"]
    assert 600 <= model <= 2000  # supervisor + search + read + answer: 4 x ttft 200 ms
    assert step["ttft_ms"]["p50"] >= 200 and step["ttft_overhead_ms"]["p50"] > -50
    processes = {p["process"] for p in step["procs"]["processes"]}
    assert {"replica supervisor", "serve proxy", "redis"} <= processes, processes

    micro = report["micro"]
    assert micro["graph_step"]["redis_checkpointer"]["wall_ms"]["p50"] > 0
    assert micro["sse_event"]["write_per_api_event_ms"] > 0
    assert target["redis"]["threads"] == audit["threads"]
    assert target["calibration"]["approval"]["model_calls"] >= 1

    replay = report["redis_replay"]  # the app's own mix, replayed without an error
    assert "error" not in replay, replay["error"]
    assert replay["trace"]["runs"] > 0 and replay["trace"]["unknown_scripts"] == 0
    assert [r["shards"] for r in replay["results"]] == [1, 2]
    for result in replay["results"]:
        assert result["errors"] == {} and result["runs_per_s"] > 0
        assert result["ceiling_runs_per_s"] > 0
    sizing = report["sizing"]["sizing"]
    assert sizing["runs_per_s"] > 0 and sizing["nodes"] >= 1 and sizing["shards"] >= 1
    assert report["plots"] == ["ttft_overhead.svg", "redis_shards.svg"]
    assert "| ~" in proc.stdout and "left]" in proc.stdout  # progress on every line
