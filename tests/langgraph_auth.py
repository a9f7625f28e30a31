"""A LangGraph auth file as the LangGraph docs write one (bearer tokens, owner metadata),
used by tests/test_auth.py unchanged: ``auth.path: ./tests/langgraph_auth.py:auth``.

alice and bob are users; carol is an approver (``approvals:write``) who may read, search
and resume every thread to decide its approvals, but owns nothing else of anyone's.
"""

from langgraph_sdk import Auth

USERS = {
    "alice-token": {"identity": "alice", "permissions": ["threads:write"]},
    "bob-token": {"identity": "bob", "permissions": ["threads:write"]},
    "carol-token": {"identity": "carol", "permissions": ["threads:write", "approvals:write"]},
}

auth = Auth()


@auth.authenticate
async def get_current_user(authorization: str | None) -> Auth.types.MinimalUserDict:
    if not authorization:
        raise Auth.exceptions.HTTPException(status_code=401, detail="Missing token")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or token not in USERS:
        raise Auth.exceptions.HTTPException(status_code=401, detail="Invalid token")
    return USERS[token]


@auth.on
async def owner_only(ctx: Auth.types.AuthContext, value: dict):
    """Resources are stamped with their creator; each user sees only their own."""
    filters = {"owner": ctx.user.identity}
    if isinstance(value, dict) and ctx.action in ("create", "create_run"):
        metadata = value.setdefault("metadata", {})
        metadata.update(filters)
    return filters


@auth.on.threads.read
async def read_own_or_approve(ctx: Auth.types.AuthContext, value: Auth.types.on.threads.read.value):
    if "approvals:write" in ctx.user.permissions:
        return None  # approvers read every thread, to decide its approvals
    return {"owner": ctx.user.identity}


@auth.on.threads.search
async def search_own(ctx: Auth.types.AuthContext, value: Auth.types.on.threads.search.value):
    if "approvals:write" in ctx.user.permissions:
        return None
    return {"owner": {"$eq": ctx.user.identity}}


@auth.on.threads.create_run
async def run_own_or_approve(ctx: Auth.types.AuthContext,
                             value: Auth.types.on.threads.create_run.value):
    value.setdefault("metadata", {})["started_by"] = ctx.user.identity
    if "approvals:write" in ctx.user.permissions:
        return None
    return {"owner": ctx.user.identity}


@auth.on.assistants
async def assistants_for_all(ctx: Auth.types.AuthContext, value: dict):
    return True
