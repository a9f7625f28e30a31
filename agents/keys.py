"""Every Redis key the graph side writes, in one place; the serving layer's are in
``serve_app.keys``.

Every key of a thread carries one hash tag: the thread id up to its first ``/``, so a
specialist's sub-thread lands in its parent's slot (``agents.slots``).
"""

from __future__ import annotations

import hashlib

PREFIX = "ac:"


def tagged(thread_id: str) -> str:
    """``thread_id`` with its hash tag in braces: ``{t}`` for ``t``, ``{t}/role/task`` for
    a sub-thread of ``t``. Unique per id, and identical to ``{t}`` for ids without ``/``."""
    root, slash, rest = thread_id.partition("/")
    return f"{{{root}}}{slash}{rest}"


def _root(thread_id: str) -> str:
    """``ac:{<thread>}``: where the keys of a thread and of its sub-threads start."""
    return f"{PREFIX}{tagged(thread_id.partition('/')[0])}"


# Budgets (``agents.budgets``) and the model's circuit breaker (``agents.breaker``).
def spend_key(thread_id: str, run_id: str | None = None) -> str:
    """What a thread (all its runs), or one of its runs, spent on the model: a hash
    (``tokens``, ``cost_usd``, ``steps``) under the thread's prefix, so it goes with it."""
    return f"{_root(thread_id)}:spend" + (f":{run_id}" if run_id else "")


def user_spend_key(identity: str, window: int) -> str:
    """What a user spent in the ``window``-th budgets.user.window_s since the epoch, in
    the user's slot (``serve_app.keys``: the same digest of the identity)."""
    digest = hashlib.sha256(identity.encode()).hexdigest()[:24]
    return f"{PREFIX}{{user:{digest}}}:spend:{window}"


def breaker_key(endpoint: str) -> str:
    """A model endpoint's circuit breaker (a hash: failures, open_until, cause)."""
    return f"{PREFIX}{{breaker}}:{endpoint}"
