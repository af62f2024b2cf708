"""Responses and errors of the ``/_perf`` app, with one set of security headers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from asgi_perf.units import whole_number

Handler = Callable[[Request], Awaitable[Response]]


class AddRoute(Protocol):
    """``PerfAPI.add``: how an endpoint module registers its handlers."""

    def __call__(
        self, pattern: str, methods: dict[str, Handler], params: tuple[str, ...] = ()
    ) -> None: ...


# Never cached, never sniffed; no CORS headers on purpose.
SECURITY_HEADERS: Mapping[str, str] = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


class BadRequest(Exception):
    """A client error with the status and message to send."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return JSONResponse(data, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> Response:
    return json_response({"error": message, "status": status, **extra}, status, headers)


def shown(raw: str | None) -> str:
    """A client's value quoted in an error, cut short: a huge one is not echoed whole."""
    return repr(raw if raw is None or len(raw) <= 40 else raw[:40] + "...")


def query_bool(request: Request, name: str) -> bool:
    raw = request.query_params.get(name)
    if raw is None:
        return False
    if raw.lower() in ("1", "true", "yes", ""):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise BadRequest(400, f"parameter {name!r} must be 0 or 1, got {shown(raw)}", parameter=name)


def parse_int(request: Request, name: str, low: int, high: int, default: int | None = None) -> int:
    """An integer parameter in ``low..high``, in ASCII digits (see ``units.whole_number``)."""
    raw = request.query_params.get(name)
    if raw is None and default is not None:
        return default
    value = None if raw is None else whole_number(raw)
    if value is None or not low <= value <= high:
        raise BadRequest(
            400,
            f"parameter {name!r} must be a whole number from {low} to {high}, got {shown(raw)}",
            parameter=name,
        )
    return value
