"""What the API acts on, independent of HTTP: one service per resource (assistants,
threads, runs, store, crons, webhooks, approvals) over a shared context, with the
typed bodies they take, the errors they raise, and the auth rules and limits they apply.

May import: ``serve_app.keys``, ``serve_app.telemetry``, ``serve_app.runs``."""
