"""Lease renewals from a thread of their own, on a connection of their own.

Renewing from a task of the replica's event loop made leases hostage to that loop: under
overload a loop busy for a few seconds (serialising checkpoints, parsing model streams)
missed renewals, the sweeper took healthy runs away, and their next attempts burned
``max_attempts`` with no replica dead. A thread keeps beating while the loop is busy
(Python switches threads every few ms), and one pipeline renews every run of the replica.

A loop that is not busy but stuck should still lose its runs: the loop ticks ``alive``
and the thread stops renewing once the loop has been silent for ``stall_limit_s``, so a
wedged replica gives its runs up within that limit plus the lease. A dead one stops
beating at once and loses them within the lease.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import redis

from serve_app.runs.leases import RENEW, RENEW_RUNS, THREAD_LEASE_FACTOR, evalsha_in
from serve_app.runs.run_pool import RunPool, now_ms

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, client: redis.Redis | redis.RedisCluster, pool: RunPool, replica_id: str,
                 stall_limit_s: float):
        self.client = client
        self.pool = pool
        self.replica_id = replica_id
        self.period_s = pool.lease_ms / 3000
        self.stall_limit_s = stall_limit_s
        # run ref -> (holder, thread lease key, token); the holder is the execution that
        # holds it (two attempts of one run may meet on a replica: the old one's end must
        # not stop the renewals of the new one)
        self._held: dict[str, tuple[object, str, str | None]] = {}
        self._lock = threading.Lock()
        self._alive = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._renew = client.register_script(RENEW)
        self._renew_runs = client.register_script(RENEW_RUNS)

    # called from the event loop
    def alive(self) -> None:
        self._alive = time.monotonic()

    def hold(self, ref: str, holder: object, thread_key: str, token: str | None = None) -> None:
        """Renew the run's lease (and the thread lease ``thread_key`` once it has a
        ``token``) for ``holder`` until it drops it."""
        with self._lock:
            self._held[ref] = (holder, thread_key, token)

    def drop(self, ref: str, holder: object) -> None:
        with self._lock:
            if ref in self._held and self._held[ref][0] is holder:
                del self._held[ref]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lease-heartbeat",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and leave the pool's live replicas at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(redis.RedisError):  # else it expires on its own
            self.client.zrem(self.pool.replicas, self.replica_id)
        self.client.close()

    # the thread
    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            if time.monotonic() - self._alive > self.stall_limit_s:
                log.warning("event loop silent for %.0f s: not renewing its leases",
                            time.monotonic() - self._alive)
                continue
            try:
                self.beat()
            except redis.RedisError as exc:  # the next beat tries again
                log.warning("lease heartbeat failed: %s", exc)

    def beat(self) -> None:
        """Renew every held lease and the replica's own in one pipeline (one round trip;
        a cluster's, one per master). The renewals are ``EVALSHA`` in it, not script
        objects, which redis-py would check with a ``SCRIPT EXISTS`` round trip each beat
        (and a cluster pipeline refuses); a Redis that lost its scripts has each loaded and
        run again. Run leases are renewed by Redis's clock (``leases.RENEW_RUNS``)."""
        with self._lock:
            held = dict(self._held)
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(self.pool.replicas, {self.replica_id: now_ms() + self.pool.lease_ms})
        pipe.zremrangebyscore(self.pool.replicas, 0, now_ms() - 60_000)
        scripted = [(self._renew, [key], [token, self.pool.lease_ms * THREAD_LEASE_FACTOR])
                    for _, key, token in held.values() if token]
        if held:
            scripted.append((self._renew_runs, [self.pool.running],
                             [self.pool.lease_ms, *held]))
        for script, keys, args in scripted:
            evalsha_in(pipe, script.sha, keys, *args)
        replies = pipe.execute(raise_on_error=False)
        for (script, keys, args), reply in zip(scripted, replies[len(replies) - len(scripted):],
                                               strict=True):
            if isinstance(reply, redis.exceptions.NoScriptError):
                script(keys=keys, args=args)
        failed = [r for r in replies if isinstance(r, Exception)
                  and not isinstance(r, redis.exceptions.NoScriptError)]
        if failed:
            raise failed[0]
