"""The Ray Serve deployments: the supervisor (HTTP ingress and run executor) and the
specialists, the Ray handle behind the worker seam, and their autoscaling policy.

May import: ``keys``, ``telemetry``, ``runs``, ``resources``, ``api``."""
