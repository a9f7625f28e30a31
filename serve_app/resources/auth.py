"""Who is calling, and may they: LangGraph Platform's ``Auth`` object, loaded and applied.

An ``auth.py`` written for LangGraph Platform (``langgraph_sdk.Auth``) works unchanged: the
setting ``auth.path`` names it as ``langgraph.json`` does (``./auth.py:auth``). Its
``@auth.authenticate`` runs on every request that is not public (``serve_app.api.routes_auth``),
with any of the parameters it names (``request``, ``body``, ``path``, ``method``,
``path_params``, ``query_params``, ``headers``, ``authorization``); what it returns (a string,
a dict or an object with ``identity`` and ``permissions``) becomes the request's user. Its
``@auth.on...`` handlers are looked up most specific first: ``(resource, action)``,
``(resource, "*")``, ``("*", action)``, then the global one; none: allowed. A handler's
``None``/``True`` allows, ``False`` forbids (403), a dict is a metadata filter applied to the
resource (``serve_app.api.access``), and ``Auth.exceptions.HTTPException`` answers its status.

Without an auth file, the built-in handler checks API keys from the settings (only their
SHA-256 is kept), sent as ``X-API-Key`` (the SDK's ``api_key``) or ``Authorization: Bearer``,
and keeps each user to the threads it created (metadata ``owner``). With neither, the API
is open, which is allowed only on a loopback address (``check_bind``).

    python -m serve_app.resources.auth hash <key>     # the sha256 to put in auth.api_keys
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import ipaddress
import json
import logging
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from fastapi import Request
from langgraph_sdk import Auth
from langgraph_sdk.auth.exceptions import HTTPException as AuthHTTPException
from langgraph_sdk.auth.types import AuthContext

from agents.settings import PROJECT_ROOT, ApiKey, AuthSettings
from serve_app.resources.api_errors import ApiError

log = logging.getLogger(__name__)

OWNER = "owner"  # the metadata key the built-in handler stamps and filters on


class User:
    """The authenticated user, as LangGraph hands it to handlers (``ctx.user``): the
    attributes of ``BaseUser`` and read access to the handler's dict by key."""

    __slots__ = ("display_name", "extra", "identity", "is_authenticated", "permissions")

    def __init__(self, identity: str, permissions: Sequence[str] = (),
                 display_name: str | None = None, is_authenticated: bool = True,
                 extra: Mapping[str, Any] | None = None):
        self.identity = identity
        self.permissions = list(permissions)
        self.display_name = display_name or identity
        self.is_authenticated = is_authenticated
        self.extra = dict(extra or {})

    def _fields(self) -> dict[str, Any]:
        return {**self.extra, "identity": self.identity, "permissions": self.permissions,
                "display_name": self.display_name,
                "is_authenticated": self.is_authenticated}

    def __getitem__(self, key: str) -> Any:
        return self._fields()[key]

    def __contains__(self, key: object) -> bool:
        return key in self._fields()

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields())

    def get(self, key: str, default: Any = None) -> Any:
        return self._fields().get(key, default)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.extra[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        return f"User({self.identity!r}, permissions={self.permissions!r})"


ANONYMOUS = User("anonymous", is_authenticated=False)


def to_user(value: Any) -> User:
    """What an ``@auth.authenticate`` returned, as a ``User`` (a str, a dict, an object)."""
    if isinstance(value, User):
        return value
    if isinstance(value, str) and value:
        return User(value)
    if isinstance(value, Mapping):
        fields = dict(value)
        identity = fields.pop("identity", None)
        if not isinstance(identity, str) or not identity:
            raise ApiError(500, "auth: the authenticate handler returned no 'identity'")
        return User(identity, _permissions(fields.pop("permissions", ())),
                    fields.pop("display_name", None),
                    bool(fields.pop("is_authenticated", True)), fields)
    identity = getattr(value, "identity", None)
    if isinstance(identity, str) and identity:
        return User(identity, _permissions(getattr(value, "permissions", ())),
                    getattr(value, "display_name", None),
                    bool(getattr(value, "is_authenticated", True)))
    raise ApiError(500, f"auth: the authenticate handler returned {type(value).__name__}, "
                        "not a user (a string, or a dict/object with 'identity')")


def _permissions(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [str(p) for p in value or ()]


def load_auth(path: str, root: Path = PROJECT_ROOT) -> Auth:
    """The ``Auth`` object ``path`` names, in ``langgraph.json``'s form: ``./auth.py:auth``
    (a file, relative to ``root`` unless absolute) or ``package.module:auth``."""
    target, sep, attr = path.rpartition(":")
    if not sep or not target or not attr:
        raise ValueError(f"auth.path {path!r} must be '<file.py or module>:<variable>', "
                         "e.g. './auth.py:auth'")
    if target.endswith(".py") or "/" in target:
        file = Path(target)
        file = file if file.is_absolute() else (root / file)
        if not file.is_file():
            raise ValueError(f"auth.path {path!r}: no file {file}")
        name = f"agent_cluster_auth_{hashlib.sha256(str(file).encode()).hexdigest()[:12]}"
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look modules up here
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    auth = getattr(module, attr, None)
    if not isinstance(auth, Auth):
        raise ValueError(f"auth.path {path!r} names {type(auth).__name__}, not a "
                         "langgraph_sdk.Auth")
    return auth


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def builtin_api_key_auth(keys: Sequence[ApiKey]) -> Auth:
    """API keys (``X-API-Key``, or ``Authorization: Bearer``) checked against their hashes;
    each user sees only the threads it created."""
    by_hash = {k.sha256: k for k in keys}
    auth = Auth()

    @auth.authenticate
    async def authenticate(headers: dict[bytes, bytes]) -> dict[str, Any]:
        key = headers.get(b"x-api-key", b"").decode("latin-1").strip()
        if not key:
            scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            key = token.strip() if scheme.lower() == "bearer" else ""
        if not key:
            raise AuthHTTPException(401, "missing API key: send X-API-Key or "
                                         "Authorization: Bearer", {"WWW-Authenticate": "Bearer"})
        entry = by_hash.get(hash_key(key))
        if entry is None:
            raise AuthHTTPException(401, "invalid API key", {"WWW-Authenticate": "Bearer"})
        return {"identity": entry.identity, "permissions": entry.permissions}

    @auth.on.threads
    async def owner_only(ctx: AuthContext, value: Any) -> dict[str, str]:
        if isinstance(value, dict) and ctx.action in ("create", "create_run", "update"):
            metadata = value.get("metadata")
            value["metadata"] = {**(metadata if isinstance(metadata, dict) else {}),
                                 OWNER: ctx.user.identity}
        return {OWNER: ctx.user.identity}

    return auth


def matches(metadata: Mapping[str, Any] | None, where: Mapping[str, Any] | None) -> bool:
    """Whether a resource's metadata passes a handler's filter: ``{"key": value}`` or
    ``{"key": {"$eq": value}}`` (equal), ``{"key": {"$contains": value}}`` (a list holding
    the value, or every value of a list); every key must pass. Unknown operators fail."""
    metadata = metadata or {}
    for key, condition in (where or {}).items():
        value = metadata.get(key)
        if isinstance(condition, Mapping) and condition and \
                all(isinstance(op, str) and op.startswith("$") for op in condition):
            for op, arg in condition.items():
                if op == "$eq":
                    ok = value == arg
                elif op == "$contains":
                    wanted = arg if isinstance(arg, list) else [arg]
                    ok = isinstance(value, list) and all(w in value for w in wanted)
                else:
                    log.error("auth filter operator %r is not supported: nothing matches", op)
                    ok = False
                if not ok:
                    return False
        elif value != condition:
            return False
    return True


class Authorizer:
    """Authentication and authorization of one replica, from ``AuthSettings``."""

    def __init__(self, auth: Auth | None, settings: AuthSettings, source: str):
        self.auth = auth
        self.settings = settings
        self.source = source  # "file <path>", "api keys", "open"

    @classmethod
    def from_settings(cls, settings: AuthSettings) -> Authorizer:
        if settings.path:
            return cls(load_auth(settings.path), settings, f"auth file {settings.path}")
        if settings.api_keys:
            return cls(builtin_api_key_auth(settings.api_keys), settings,
                       f"built-in API keys ({len(settings.api_keys)})")
        return cls(None, settings, "open (no authentication)")

    @property
    def open(self) -> bool:
        return self.auth is None

    def can_approve(self, user: User) -> bool:
        return self.open or self.settings.approver_permission in user.permissions

    async def authenticate(self, request: Request, path_params: dict[str, Any]) -> User:
        """The request's user, or ``ApiError`` 401 (or the handler's status)."""
        if self.auth is None:
            return ANONYMOUS
        handler = self.auth._authenticate_handler
        if handler is None:  # an auth file of authorization rules only
            return ANONYMOUS
        wanted = inspect.signature(handler).parameters
        given: dict[str, Any] = {}
        for name in wanted:
            if name == "request":
                given[name] = request
            elif name == "body":
                given[name] = _json_or_none(await request.body())
            elif name == "path":
                given[name] = request.url.path
            elif name == "method":
                given[name] = request.method
            elif name == "path_params":
                given[name] = {k: str(v) for k, v in path_params.items()}
            elif name == "query_params":
                given[name] = dict(request.query_params)
            elif name == "headers":
                given[name] = {k.lower(): v for k, v in request.scope["headers"]}
            elif name == "authorization":
                given[name] = request.headers.get("authorization")
        try:
            result = await handler(**given)
        except AuthHTTPException as exc:
            raise ApiError(exc.status_code, str(exc.detail), dict(exc.headers or {})) from None
        except ApiError:
            raise
        except Exception as exc:
            log.warning("auth: authenticate handler failed: %r", exc)
            raise ApiError(401, "authentication failed") from None
        if result is None:
            raise ApiError(401, "authentication failed", {"WWW-Authenticate": "Bearer"})
        return to_user(result)

    def has_own_handler(self, resource: str, action: str) -> bool:
        """Whether the auth file has a handler for this resource itself (not a
        resource-wide ``("*", action)`` or global one)."""
        return self.auth is not None and any(
            self.auth._handlers.get(key) for key in ((resource, action), (resource, "*")))

    def handler(self, resource: str, action: str) -> Any:
        """The most specific handler of (resource, action), or None (allowed)."""
        if self.auth is None:
            return None
        for key in ((resource, action), (resource, "*"), ("*", action)):
            handlers = self.auth._handlers.get(key)
            if handlers:
                return handlers[-1]
        return self.auth._global_handlers[-1] if self.auth._global_handlers else None

    async def authorize(self, user: User, resource: str, action: str,
                        value: dict[str, Any]) -> dict[str, Any] | None:
        """Run the handler of (resource, action) on ``value`` (it may change it): the
        filter it returned, None (allowed), or ``ApiError`` 403 / its own status."""
        handler = self.handler(resource, action)
        if handler is None:
            return None
        ctx = AuthContext(permissions=list(user.permissions), user=user, resource=resource,
                          action=action)
        try:
            result = await handler(ctx=ctx, value=value)
        except AuthHTTPException as exc:
            raise ApiError(exc.status_code, str(exc.detail), dict(exc.headers or {})) from None
        except ApiError:
            raise
        except Exception as exc:
            log.error("auth: %s:%s handler failed", resource, action, exc_info=exc)
            raise ApiError(403, f"forbidden: {resource}:{action}") from None
        if result is None or result is True:
            return None
        if result is False:
            raise ApiError(403, f"forbidden: {resource}:{action}")
        if isinstance(result, Mapping):
            return dict(result)
        log.error("auth: %s:%s handler returned %r: denied", resource, action, result)
        raise ApiError(403, f"forbidden: {resource}:{action}")


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, settings: AuthSettings) -> str:
    """Refuse (``ValueError``) to serve on ``host`` without auth unless it is loopback;
    returns one line saying how the API is protected."""
    if settings.path:
        return f"auth: LangGraph auth file {settings.path}"
    if settings.api_keys:
        return f"auth: built-in API keys ({len(settings.api_keys)} users)"
    if settings.open_on_loopback and is_loopback(host):
        return (f"auth: NONE - the API is open to anyone who can reach {host} (loopback "
                "only); set auth.path or auth.api_keys before binding another address")
    raise ValueError(
        f"refusing to serve on {host!r} without authentication: set auth.path "
        "(AGENT_CLUSTER_AUTH__PATH=./auth.py:auth, a LangGraph auth file) or auth.api_keys "
        "(AGENT_CLUSTER_AUTH__API_KEYS='[{\"identity\": ..., \"sha256\": ...}]') in "
        "configs/agents.yaml or the environment, or bind 127.0.0.1")


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "hash":
        print("usage: python -m serve_app.resources.auth hash <key>", file=sys.stderr)
        raise SystemExit(2)
    print(hash_key(args[1]))


if __name__ == "__main__":
    main()
