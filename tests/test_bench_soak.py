"""The soak's figures (``bench/soak.py``): growth over the summed processes (or those alive
throughout), and the table docs/reliability.md shows. The soak itself runs in
``tests/test_redis_faults.py``."""

from __future__ import annotations

from bench.plots import soak_plot
from bench.soak import growth, table, totals


def period(n: int, rss: float, keys: int) -> dict:
    return {"period": n, "turns_ok": 10 * n, "errors": 0, "ttft_overhead_p95_ms": 100.0 + n,
            "processes": {"replica supervisor 1": {"rss_mib": rss, "fds": 10, "connections": 4},
                          "redis 2": {"rss_mib": 100.0, "fds": 20, "connections": 4}},
            "keys": keys, "effect_records": n, "used_memory_mib": 1.5 * n, "runs_queued": 0}


def test_growth_and_the_table_sum_every_process():
    result = {"rows": [period(1, 100.0, 1000), period(2, 150.0, 1000), period(3, 300.0, 1100)]}
    grew = growth(result["rows"], since=2)
    assert (grew["rss_mib"], grew["fds"], round(grew["keys"], 3)) == (0.6, 0.0, 0.1)
    result["rows"][2]["processes"]["replica supervisor 3"] = {  # scaled up: not drift
        "rss_mib": 300.0, "fds": 30, "connections": 10}
    assert growth(result["rows"], since=2)["fds"] == 1.0
    assert growth(result["rows"], since=2, same_processes=True)["fds"] == 0.0
    lines = table(result, every=2).splitlines()
    assert lines[0].startswith("| minute | turns ok |") and len(lines) == 4  # 2, and the last
    assert lines[2] == "| 2 | 20 | 102 | 250 | 30 | 8 | 1,000 | 2 | 3.0 | 0 |"
    assert lines[3] == "| 3 | 30 | 103 | 700 | 60 | 18 | 1,100 | 3 | 4.5 | 0 |"


def test_the_soak_plot_draws_every_minute(tmp_path):
    result = {"users": 3, "think_s": 30.0,
              "rows": [period(1, 100.0, 1000), period(2, 150.0, 1000)]}
    assert soak_plot(result, [totals(row) for row in result["rows"]], tmp_path / "soak.svg")
    svg = (tmp_path / "soak.svg").read_text()
    assert "Soak: 3 users, 30 s think time" in svg and "runs queued" in svg
    assert not soak_plot({"rows": []}, [], tmp_path / "none.svg")
