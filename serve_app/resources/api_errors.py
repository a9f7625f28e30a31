"""The one error the service layer raises for a client: an HTTP status and a ``detail``."""

from __future__ import annotations


class ApiError(Exception):
    """An error with an HTTP status and a ``detail`` for the client."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


def first_line(exc: Exception) -> str:
    """The reason without the troubleshooting link LangChain appends."""
    return str(exc).strip().split("\n")[0]
