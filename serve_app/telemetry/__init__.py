"""How the service is observed: Prometheus metrics and OpenTelemetry tracing.

May import: ``serve_app.keys``."""
