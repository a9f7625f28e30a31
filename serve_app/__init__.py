"""Ray Serve glue around the graphs of ``agents``, in layers a module may only import downward.

- ``keys``: every Redis key (imports nothing of ours).
- ``telemetry``: metrics and tracing.
- ``runs``: the durable life of a run: records, queue, leases, execution, events, admission.
- ``resources``: what the API acts on: assistants, threads, runs, store, crons, webhooks,
  approvals, retention's reads; the services, their schemas and errors, auth's rules.
- ``api``: the HTTP API: routes by resource, who may do what, the console.
- ``deployments``: the Ray Serve deployments (supervisor ingress, specialists).
- ``ops``: starting, stopping and checking a cluster (launcher, Ray node, leaks).
- ``app`` / ``__main__``: the Serve application and the ``make run`` command.

``tests/test_layout.py`` fails on an import against that order.
"""
