"""BENCHMARKS.md's "Your own project" section (``bench/report.py``): a run of the project's
targets alone (``--targets project-cluster,project-langgraph-dev``) rewrites that section
and nothing else of a file other engineers' runs write too; a full run keeps it; the
project's workload never mixes into the supervisor's tables."""

from __future__ import annotations

from bench.report import common_level, kept_sections, write_project_section

LATENCY = {"p50": 120.0, "p95": 250.0, "p99": 300.0}


def step(users: int, passed: bool, runs_per_s: float) -> dict:
    return {"users": users, "passed": passed, "stopped_early": False,
            "runs_per_s": runs_per_s, "ttft_ms": LATENCY, "ttft_overhead_ms": LATENCY,
            "ttlt_ms": LATENCY, "errors": {}, "serving_cpu_s_per_run": 0.08,
            "procs": {"machine_cpu_pct": 160.0, "foreign_cpu_pct": 70.0,
                      "serving_cpu_pct": 90.0}}


def target(levels: list[int], idle_ms: float = 40.0) -> dict:
    steps = [step(u, i < len(levels) - 1, u / 5) for i, u in enumerate(levels)]
    best = steps[-2]
    return {"startup_s": 50.0, "criterion": {"idle_overhead_ms": idle_ms}, "steps": steps,
            "idle": {"serving_cpu_pct": 15.0}, "audit": {"ok": 40, "lost": 0, "duplicated": 0},
            "capacity": {"users": best["users"], "runs_per_s": best["runs_per_s"],
                         "ttft_overhead_p95_ms": 250.0, "first_failure": levels[-1],
                         "serving_cpu_s_per_run": 0.08,
                         "marginal_serving_cpu_s_per_run": 0.05}}


def report(cluster_users: int) -> dict:
    return {"command": ".venv/bin/python -m bench.run --targets project-cluster,"
                       "project-langgraph-dev", "started_at": 0, "duration_s": 600.0,
            "plan": {"load": {"think_s": 5.0, "turns_per_thread": 5},
                     "peer_jobs_per_worker": 64,
                     "steps": {"window_s": 10.0, "warmup_s": 5.0, "budget_ms": 300.0}},
            "machine": {"cores": 2, "load_average": [2.5, 2.1, 1.9],
                        "load_average_end": [3.0, 2.4, 2.0]},
            "stub": {"ttft_ms": 200},
            "targets": {"cluster-2": target([50, 100]),
                        "project-cluster": target([10, cluster_users, 2 * cluster_users]),
                        "project-langgraph-dev": target([10, 20], idle_ms=900.0)}}


BEFORE = ("# Benchmarks\n\n## Headline against the targets\n\n| a | b |\n\n"
          "<!-- thread-bytes:start (bench/thread_bytes.py) -->\n## Redis bytes\nfigures\n"
          "<!-- thread-bytes:end -->\n")


def test_the_project_run_rewrites_its_section_and_nothing_else(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(BEFORE)
    write_project_section(report(40), path)
    first = path.read_text()
    assert first.startswith(BEFORE.rstrip("\n"))  # the others' text as it was
    assert first.count("## Your own project: cluster vs langgraph dev") == 1
    assert "| `project-cluster` | 50.0 | 40 | **40** (fails at 80) | 8.0 |" in first
    assert "`project-langgraph-dev`" in first and "--targets project-cluster," in first

    path.write_text(first.replace("<!-- thread-bytes:end -->",
                                  "<!-- thread-bytes:end -->\nlater text\n"))
    write_project_section(report(80), path)  # a later run: replaced in place
    second = path.read_text()
    assert second.count("## Your own project") == 1
    assert "**80** (fails at 160)" in second and "**40** (fails at 80)" not in second
    assert second.index("later text") < second.index("## Your own project")
    assert "## Your own project" in kept_sections(path)  # a full run keeps it


def test_the_project_workload_stays_out_of_the_supervisor_tables():
    assert common_level(report(40)) == 100  # cluster-2's steps alone, not the project's
