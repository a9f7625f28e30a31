"""An OpenAI-compatible model server that stands in for a real LLM offline.

Real HTTP and SSE streaming, tool calls, usage counts, configurable latency and injected
faults; replies follow a deterministic policy (``policy.py``) derived from the request, so
the whole system can be tested end to end without a model. Run it with
``python -m agents.local.stub_model --port 8001``.
"""

from agents.local.stub_model.app import StubConfig, create_app

__all__ = ["StubConfig", "create_app"]
