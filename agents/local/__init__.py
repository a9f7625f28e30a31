"""Local stand-ins for production infrastructure: an embedded Redis and a stub model server.

Production points ``REDIS_URL`` and ``OPENAI_BASE_URL`` at real services and starts none of these.
"""
