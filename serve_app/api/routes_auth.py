"""Every route of the API and what auth it needs: one map, checked by a test to cover every
route (``tests/test_auth.py``); a route missing from it is refused (403) at run time.

``PUBLIC``: no authentication (health, and the console's static pages, which hold no data:
they ask for a key and then use the API like any client). ``AUTHENTICATED``: any
authenticated user, no handler. Otherwise the LangGraph ``(resource, action)`` whose
``@auth.on`` handler decides, as LangGraph Platform maps its own routes.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.routing import BaseRoute, Match, Mount, Route


@dataclass(frozen=True)
class Rule:
    resource: str | None = None
    action: str | None = None
    public: bool = False


PUBLIC = Rule(public=True)
AUTHENTICATED = Rule()
THREADS_CREATE = Rule("threads", "create")
THREADS_READ = Rule("threads", "read")
THREADS_UPDATE = Rule("threads", "update")
THREADS_DELETE = Rule("threads", "delete")
THREADS_SEARCH = Rule("threads", "search")
CREATE_RUN = Rule("threads", "create_run")
ASSISTANTS_READ = Rule("assistants", "read")
ASSISTANTS_SEARCH = Rule("assistants", "search")
ASSISTANTS_CREATE = Rule("assistants", "create")
ASSISTANTS_UPDATE = Rule("assistants", "update")
ASSISTANTS_DELETE = Rule("assistants", "delete")
CRONS_CREATE = Rule("crons", "create")
CRONS_UPDATE = Rule("crons", "update")
CRONS_DELETE = Rule("crons", "delete")
CRONS_SEARCH = Rule("crons", "search")

ALL_METHODS = "*"  # a mount (static files): every method

ROUTE_AUTH: dict[tuple[str, str], Rule] = {
    # health and identity
    ("GET", "/ok"): PUBLIC,
    ("GET", "/info"): PUBLIC,
    ("GET", "/metrics"): AUTHENTICATED,
    ("GET", "/whoami"): AUTHENTICATED,
    # assistants
    ("POST", "/assistants"): ASSISTANTS_CREATE,
    ("POST", "/assistants/search"): ASSISTANTS_SEARCH,
    ("POST", "/assistants/count"): ASSISTANTS_SEARCH,
    ("PATCH", "/assistants/{assistant_id}"): ASSISTANTS_UPDATE,
    ("DELETE", "/assistants/{assistant_id}"): ASSISTANTS_DELETE,
    ("POST", "/assistants/{assistant_id}/versions"): ASSISTANTS_READ,
    ("POST", "/assistants/{assistant_id}/latest"): ASSISTANTS_UPDATE,
    ("GET", "/assistants/{assistant_id}"): ASSISTANTS_READ,
    ("GET", "/assistants/{assistant_id}/graph"): ASSISTANTS_READ,
    ("GET", "/assistants/{assistant_id}/schemas"): ASSISTANTS_READ,
    # threads
    ("POST", "/threads"): THREADS_CREATE,
    ("POST", "/threads/prune"): THREADS_DELETE,
    ("POST", "/threads/search"): THREADS_SEARCH,
    ("POST", "/threads/count"): THREADS_SEARCH,
    ("POST", "/threads/{thread_id}/copy"): THREADS_CREATE,
    ("GET", "/threads/{thread_id}"): THREADS_READ,
    ("PATCH", "/threads/{thread_id}"): THREADS_UPDATE,
    ("DELETE", "/threads/{thread_id}"): THREADS_DELETE,
    ("GET", "/threads/{thread_id}/state"): THREADS_READ,
    ("GET", "/threads/{thread_id}/state/{checkpoint_id}"): THREADS_READ,
    ("POST", "/threads/{thread_id}/state/checkpoint"): THREADS_READ,
    ("POST", "/threads/{thread_id}/state"): THREADS_UPDATE,
    ("POST", "/threads/{thread_id}/history"): THREADS_READ,
    ("GET", "/threads/{thread_id}/approvals"): THREADS_READ,
    # runs
    ("POST", "/threads/{thread_id}/runs"): CREATE_RUN,
    ("POST", "/runs"): CREATE_RUN,
    ("POST", "/threads/{thread_id}/runs/stream"): CREATE_RUN,
    ("POST", "/runs/stream"): CREATE_RUN,
    ("POST", "/threads/{thread_id}/runs/wait"): CREATE_RUN,
    ("POST", "/runs/wait"): CREATE_RUN,
    ("POST", "/runs/batch"): CREATE_RUN,
    ("POST", "/runs/cancel"): THREADS_UPDATE,
    ("GET", "/threads/{thread_id}/runs"): THREADS_READ,
    ("GET", "/threads/{thread_id}/runs/{run_id}"): THREADS_READ,
    ("DELETE", "/threads/{thread_id}/runs/{run_id}"): THREADS_DELETE,
    ("GET", "/threads/{thread_id}/runs/{run_id}/join"): THREADS_READ,
    ("GET", "/threads/{thread_id}/runs/{run_id}/stream"): THREADS_READ,
    ("POST", "/threads/{thread_id}/runs/{run_id}/cancel"): THREADS_UPDATE,
    ("POST", "/threads/{thread_id}/runs/{run_id}/feedback"): THREADS_UPDATE,
    # the Store API: the handlers may rewrite the namespace (serve_app.resources.store)
    ("PUT", "/store/items"): Rule("store", "put"),
    ("GET", "/store/items"): Rule("store", "get"),
    ("DELETE", "/store/items"): Rule("store", "delete"),
    ("POST", "/store/items/search"): Rule("store", "search"),
    ("POST", "/store/namespaces"): Rule("store", "list_namespaces"),
    # crons (a thread's cron also needs create_run on the thread)
    ("POST", "/threads/{thread_id}/runs/crons"): CRONS_CREATE,
    ("POST", "/runs/crons"): CRONS_CREATE,
    ("POST", "/runs/crons/search"): CRONS_SEARCH,
    ("POST", "/runs/crons/count"): CRONS_SEARCH,
    ("PATCH", "/runs/crons/{cron_id}"): CRONS_UPDATE,
    ("DELETE", "/runs/crons/{cron_id}"): CRONS_DELETE,
    # the seed's chat endpoints: runs on a thread like any other
    ("POST", "/api/chat"): CREATE_RUN,
    ("POST", "/api/approve"): CREATE_RUN,
    # the web console: pages and assets are public, its one data route is not
    ("GET", "/ui"): PUBLIC,
    ("GET", "/ui/"): PUBLIC,
    ("GET", "/ui/chat"): PUBLIC,
    ("GET", "/ui/inbox"): PUBLIC,
    (ALL_METHODS, "/ui/static"): PUBLIC,
    ("GET", "/ui/api/tools"): AUTHENTICATED,
    # FastAPI's own: the schema (fuzzers and SDK generators read it) and its docs pages
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/redoc"): PUBLIC,
}


def route_keys(route: BaseRoute) -> list[tuple[str, str]]:
    """The map's keys a route needs: one per method, or the mount's."""
    if isinstance(route, Mount):
        return [(ALL_METHODS, route.path)]
    methods = sorted(getattr(route, "methods", None) or {ALL_METHODS})
    return [(m, route.path) for m in methods if m != "HEAD"]


def missing_rules(routes: list[BaseRoute]) -> list[tuple[str, str]]:
    return [key for route in routes for key in route_keys(route) if key not in ROUTE_AUTH]


def match(routes: list[BaseRoute], scope: dict) -> tuple[Rule | None, dict, bool]:
    """The rule of the route ``scope`` reaches, its path params, and whether a route
    matched (False: the router will answer 404 or 405, nothing to protect)."""
    for route in routes:
        found, child = route.matches(scope)
        if found == Match.FULL:
            if isinstance(route, Mount):
                return ROUTE_AUTH.get((ALL_METHODS, route.path)), {}, True
            method = scope["method"]
            if method == "HEAD" and isinstance(route, Route):
                method = "GET"
            return ROUTE_AUTH.get((method, route.path)), child.get("path_params", {}), True
    return None, {}, False
