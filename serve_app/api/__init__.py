"""The HTTP API: routes by resource (``routes_<resource>``: LangGraph Platform's and
``/api/chat``), who may do what (``access``, ``routes_auth``, ``middleware``), the web
console, and the composition root (``root``: one replica's parts, built from its settings).

May import: everything below it: ``keys``, ``telemetry``, ``runs``, ``resources``."""
