"""The ``/_perf`` API: a small ASGI app behind one gate.

Every path under the prefix reaches ``PerfAPI`` and passes ``gate`` first; no
handler checks authorisation itself. Answers are JSON (errors included), are
never cached, and carry no CORS headers.
"""

from __future__ import annotations

import hmac
import inspect
import ipaddress
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from asgi_perf._types import Receive, Scope, Send

if TYPE_CHECKING:
    from asgi_perf.middleware import PerfMiddleware

Handler = Callable[[Request], Awaitable[Response]]
_SECURITY_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
_FORWARDED = (b"forwarded", b"x-forwarded-for", b"x-real-ip")


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
    return JSONResponse(data, status_code=status, headers={**_SECURITY_HEADERS, **(headers or {})})


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> Response:
    return json_response({"error": message, "status": status, **extra}, status, headers)


def is_loopback(scope: Scope) -> bool:
    """A direct loopback client; a forwarding header means a proxy is in between."""
    client = scope.get("client")
    if not client:
        return False
    for name, _ in scope.get("headers", ()):
        if name.lower() in _FORWARDED:
            return False
    try:
        addr = ipaddress.ip_address(str(client[0]).split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def bearer_token(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


def route_path(scope: Scope) -> str:
    """The path without the server's root path (``uvicorn --root-path``)."""
    path: str = scope["path"]
    root_path = scope.get("root_path")
    if root_path and path.startswith(root_path):
        return path[len(root_path) :]
    return path


class Gate:
    """Spec section 7: who may read ``/_perf`` (and ask for profiles by header)."""

    def __init__(
        self,
        token: str | None,
        authorize: Callable[[Scope], Any] | None,
        on_error: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self._token = token.encode() if token else None
        self._authorize = authorize
        self._on_error = on_error

    async def check(self, scope: Scope) -> Response | None:
        """None when allowed, else the response to send."""
        if self._authorize is not None:
            try:
                allowed = self._authorize(scope)
                if inspect.isawaitable(allowed):
                    allowed = await allowed
            except Exception as exc:
                # A broken hook must fail closed, and not as a 500 page.
                if self._on_error is not None:
                    self._on_error("authorize", exc)
                return error_response(403, "forbidden: the authorize hook raised an error")
            return None if allowed else error_response(403, "forbidden by the authorize hook")
        if self._token is not None:
            given = bearer_token(scope)
            # latin-1 gives back the header's own bytes, so a UTF-8 token matches.
            if given is not None and hmac.compare_digest(given.encode("latin-1"), self._token):
                return None
            return error_response(
                401,
                "a valid 'Authorization: Bearer <token>' header is required",
                headers={"WWW-Authenticate": 'Bearer realm="asgi_perf"'},
            )
        if is_loopback(scope):
            return None
        return error_response(
            403, "asgi_perf answers loopback clients only; configure a token for remote access"
        )


class PerfAPI:
    """Dispatches paths under the prefix to handlers by regex and method."""

    def __init__(
        self, prefix: str, gate: Gate, on_error: Callable[[str, BaseException], None]
    ) -> None:
        self.prefix = prefix
        self.gate = gate
        self._on_error = on_error
        self._routes: list[tuple[re.Pattern[str], dict[str, Handler], frozenset[str]]] = []

    def add(self, pattern: str, methods: dict[str, Handler], params: tuple[str, ...] = ()) -> None:
        """Serve ``prefix + pattern``; query parameters not in ``params`` are refused."""
        self._routes.append((re.compile(pattern + r"\Z"), methods, frozenset(params)))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = await self._respond(scope, receive)
        except BadRequest as exc:
            response = error_response(exc.status, exc.message, **exc.extra)
        except Exception as exc:  # a bug of ours must not become a 500 page with a trace
            self._on_error("endpoint", exc)
            response = error_response(500, "internal error in asgi_perf; see the server log")
        await response(scope, receive, send)

    async def _respond(self, scope: Scope, receive: Receive) -> Response:
        denied = await self.gate.check(scope)
        if denied is not None:
            return denied
        sub = route_path(scope)[len(self.prefix) :] or "/"
        for pattern, methods, params in self._routes:
            match = pattern.match(sub)
            if match is None:
                continue
            method = scope["method"]
            handler = methods.get(method) or (methods.get("GET") if method == "HEAD" else None)
            if handler is None:
                allow = ", ".join(sorted(methods))
                return error_response(
                    405, f"method {method} not allowed here; use {allow}", headers={"Allow": allow}
                )
            request = Request(scope, receive)
            for name in request.query_params:
                if name not in params:
                    known = ", ".join(sorted(params)) or "none"
                    raise BadRequest(
                        400, f"unknown parameter {name!r} (accepted: {known})", parameter=name
                    )
            request.scope["path_params"] = match.groupdict()
            return await handler(request)
        return error_response(404, f"no such asgi_perf endpoint: {scope['path']}")


def query_bool(request: Request, name: str) -> bool:
    raw = request.query_params.get(name)
    if raw is None:
        return False
    if raw.lower() in ("1", "true", "yes", ""):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise BadRequest(400, f"parameter {name!r} must be 0 or 1, got {raw!r}", parameter=name)


def make_perf_app(mw: PerfMiddleware) -> PerfAPI:
    """The ``/_perf`` app of one middleware instance."""
    cfg = mw.config
    api = PerfAPI(cfg.prefix, mw.gate, mw.internal_error)

    async def index(request: Request) -> Response:
        p = cfg.prefix
        endpoints = {
            "stats": f"GET {p}/stats",
            "budgets": f"GET {p}/budgets",
            "reset": f"POST {p}/reset",
            "profile": f"GET {p}/profile?seconds=30&engine=pyinstrument&format=prof",
            "windows": f"POST {p}/windows?seconds=300 ; POST {p}/windows/{{id}}/stop",
            "profiles": f"GET {p}/profiles?route=&kind=&tag=&limit=",
            "profile_file": f"GET {p}/profiles/{{id|latest|slowest}}.{{prof,svg,html,"
            "speedscope.json,collapsed}",
            "merged": f"GET {p}/profiles/merged.prof?route=GET /path or ?ids=a,b",
            "snakeviz": f"GET {p}/profiles/{{id}}/snakeviz",
        }
        if "text/html" in request.headers.get("accept", ""):
            rows = "".join(f"<li><code>{v}</code></li>" for v in endpoints.values())
            return HTMLResponse(
                f"<!doctype html><title>asgi_perf</title><h1>asgi_perf</h1><ul>{rows}</ul>",
                headers=_SECURITY_HEADERS,
            )
        return json_response({"schema": 1, "endpoints": endpoints})

    async def stats(request: Request) -> Response:
        return json_response(mw.snapshot(histograms=query_bool(request, "histograms")))

    async def budgets(request: Request) -> Response:
        return json_response(mw.budgets.check(mw.snapshot()))

    async def reset(request: Request) -> Response:
        return json_response(mw.reset())

    api.add(r"/", {"GET": index})
    api.add(r"/stats", {"GET": stats}, ("histograms",))
    api.add(r"/budgets", {"GET": budgets})
    api.add(r"/reset", {"POST": reset})
    from asgi_perf.profile_api import add_profile_routes

    add_profile_routes(api, mw)
    return api
