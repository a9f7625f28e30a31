"""How the API answers what went wrong: always a JSON ``detail``. Our refusals (``ApiError``)
with their status, invalid bodies 422, Redis away or full 503 (nothing lost: retry), and
anything else 500 (logged)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import OutOfMemoryError, RedisError, ResponseError

from serve_app.resources.api_errors import ApiError

log = logging.getLogger(__name__)


def is_out_of_memory(exc: Exception) -> bool:
    """Redis refused a write: it is at its maxmemory with policy noeviction."""
    return isinstance(exc, OutOfMemoryError) or (
        isinstance(exc, ResponseError) and "used memory > 'maxmemory'" in str(exc))


def add_error_handlers(api: FastAPI) -> None:
    @api.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status,
                            headers=exc.headers)

    @api.exception_handler(RedisError)
    async def redis_error(_: Request, exc: RedisError) -> JSONResponse:
        """Redis slow or restarting: nothing was lost, the request can be sent again."""
        log.warning("request failed on Redis: %s", exc)
        if is_out_of_memory(exc):
            return JSONResponse({"detail": "state store full: Redis reached its maxmemory "
                                           "(noeviction), so writes are refused; nothing "
                                           "stored was lost. Retry once threads are deleted "
                                           "or expire, or maxmemory is raised"},
                                status_code=503, headers={"Retry-After": "5"})
        return JSONResponse({"detail": f"state store unavailable ({type(exc).__name__}); "
                                       "retry shortly"},
                            status_code=503, headers={"Retry-After": "1"})

    @api.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error", exc_info=exc)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"},
                            status_code=500)

    @api.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": exc.errors()}, status_code=422)
