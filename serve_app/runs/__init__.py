"""The durable life of a run: thread and run records, the queue a pool pulls from, leases
and fencing, execution, event streams, admission and per-replica concurrency, retention applied
as a run ends, failed runs kept as regression cases.

May import: ``serve_app.keys``, ``serve_app.telemetry``."""
