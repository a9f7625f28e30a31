"""The HTTP API: routes by resource (LangGraph Platform's and ``/api/chat``), who may do
what (``access``, ``routes_auth``, ``middleware``), and the web console.

May import: everything below it: ``keys``, ``telemetry``, ``runs``, ``resources``."""
