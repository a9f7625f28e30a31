"""The web console: chat and approval inbox pages served by the ingress itself.

Plain HTML/CSS/JS from ``serve_app/api/console/`` (no build step, no CDN, works offline). The
pages talk to the cluster through its public API only (LangGraph Platform routes and
``/api/approve``), so they see and may do exactly what any other client may; the one route
added here is read-only: the tools' argument schemas, to validate edited arguments in the
browser before they are sent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from agents.settings import Settings
from agents.tools import build_toolbox
from serve_app.resources.service import AgentService

STATIC = Path(__file__).with_name("console")
PAGES = {"": "index.html", "chat": "chat.html", "inbox": "inbox.html"}
NO_CACHE = {"Cache-Control": "no-cache"}


def tool_schemas(service: AgentService, settings: Settings) -> dict[str, Any]:
    """Each tool's description and JSON schema of its arguments, by tool name."""
    tools = build_toolbox(service.redis, settings)
    return {name: {"description": tool.description,
                   "schema": tool.args_schema.model_json_schema()}
            for name, tool in tools.items()}


def mount_console(api: FastAPI, service: AgentService, settings: Settings) -> None:
    """``/ui/`` (links), ``/ui/chat``, ``/ui/inbox``, their assets and ``/ui/api/tools``."""
    schemas = tool_schemas(service, settings)

    @api.get("/ui", include_in_schema=False)
    async def ui_root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    for page, filename in PAGES.items():
        api.add_api_route(f"/ui/{page}", page_route(render(filename, f"/ui/{page}")),
                          methods=["GET"], include_in_schema=False)

    @api.get("/ui/api/tools")
    async def tools() -> dict[str, Any]:
        return schemas

    api.mount("/ui/static", Assets(directory=STATIC), name="console-static")


def render(filename: str, url: str) -> str:
    """A page with the shared header (``header.html``) in place of its marker, its own
    link marked as the current page."""
    header = (STATIC / "header.html").read_text().replace(
        f'<a href="{url}">', f'<a href="{url}" aria-current="page">')
    return (STATIC / filename).read_text().replace("  <!-- header.html -->\n", header)


def page_route(html: str):
    async def page() -> HTMLResponse:
        return HTMLResponse(html, headers=NO_CACHE)
    return page


class Assets(StaticFiles):
    """Static files that browsers revalidate (ETag), so a redeploy is seen at once."""

    def file_response(self, *args: Any, **kwargs: Any):
        response = super().file_response(*args, **kwargs)
        response.headers.update(NO_CACHE)
        return response
