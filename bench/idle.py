"""CPU of the idle cluster, every process of ours and Ray's counted: ``make run`` as it starts
(its defaults, embedded Redis and stub model), no users.

    .venv/bin/python -m bench.idle [--settle-s 30] [--window-s 60] [--json out.json]

Starts ``python -m serve_app`` on free ports in a data dir of its own, waits for ``/ok``,
lets the start settle (autoscaling, first sweeps), then samples the CPU of its whole
process tree over the window and prints it per process (% of one core). SIGTERM at the end
stops everything it started.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from agents.local.process import free_port
from agents.settings import PROJECT_ROOT
from bench import profile
from bench.procs import ProcessSampler
from serve_app.ops.launcher import HAPROXY_MODE_PORTS


def start_cluster(data_dir: Path, extra_env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "AGENT_CLUSTER_DATA_DIR": str(data_dir),
           **{name: str(free_port()) for name in HAPROXY_MODE_PORTS}, **extra_env}
    proc = subprocess.Popen([sys.executable, "-m", "serve_app", "--port", str(port),
                             "--metrics-port", str(free_port())],
                            cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen, url: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the cluster exited with {proc.returncode} before it was up")
        try:
            if httpx.get(f"{url}/ok", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"no answer from {url}/ok within {timeout_s:.0f} s")


def measure(settle_s: float, window_s: float, extra_env: dict[str, str],
            profiled: str | None = None) -> dict:
    """The idle window's CPU per process; with ``profiled`` (a process label, e.g.
    ``replica supervisor``), also py-spy samples of those processes over the window."""
    sampler = ProcessSampler(period_s=5.0)
    with tempfile.TemporaryDirectory(prefix="idle-") as data_dir:
        proc, url = start_cluster(Path(data_dir), extra_env)
        try:
            wait_ready(proc, url)
            time.sleep(settle_s)
            sampler.start()
            start = sampler.mark()
            pids = {pid: name for pid, name in sampler.labels.items() if name == profiled}
            samples = profile.record(pids, window_s, Path(data_dir) / "profile") if pids \
                else (time.sleep(window_s) or {})
            result = sampler.window(start, sampler.mark())
            result["profile"] = samples
        finally:
            sampler.stop()
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
    result["window_s"] = window_s
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settle-s", type=float, default=30)
    parser.add_argument("--window-s", type=float, default=60)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="an extra variable for the cluster (repeatable)")
    parser.add_argument("--profile", metavar="LABEL",
                        help="py-spy the processes of this label over the window")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)
    result = measure(args.settle_s, args.window_s, extra, args.profile)
    print(f"idle cluster over {args.window_s:.0f} s: {result['ours_cpu_pct']:.1f} % of a core "
          f"(serving {result['serving_cpu_pct']:.1f} %; the rest of the machine "
          f"{result['foreign_cpu_pct']:.0f} %)")
    for row in result["processes"]:
        print(f"  {row['cpu_pct']:6.2f} %  {row['process']}  (pid {row['pid']}, "
              f"{row['peak_rss_mib']:.0f} MiB)")
    for name, summary in result["profile"].items():
        print(f"{name}: " + ", ".join(f"{row['what']} {row['pct']} %"
                                       for row in summary.get("self", [])[:8]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
