"""The ``/_perf`` app: a small ASGI app behind one gate.

Every path under the prefix reaches ``PerfAPI`` and passes the gate first;
no handler checks authorisation itself. Answers are JSON (errors included),
are never cached, and carry no CORS headers.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response

from asgi_perf._types import Receive, Scope, Send
from asgi_perf.api._http import BadRequest, Handler, error_response
from asgi_perf.api.dashboard import BeforeGate, add_dashboard_routes, open_shell
from asgi_perf.api.db import add_db_routes
from asgi_perf.api.gate import Gate
from asgi_perf.api.memory import add_memory_routes
from asgi_perf.api.memory_trace import add_tracemalloc_routes
from asgi_perf.api.metrics import add_metrics_routes
from asgi_perf.api.profiles import add_profile_routes
from asgi_perf.api.stats import add_stats_routes
from asgi_perf.core import PerfCore
from asgi_perf.routes import route_path


class PerfAPI:
    """Dispatches paths under the prefix to handlers by regex and method."""

    def __init__(
        self,
        prefix: str,
        gate: Gate,
        on_error: Callable[[str, BaseException], None],
        before_gate: BeforeGate | None = None,
    ) -> None:
        self.prefix = prefix
        self.gate = gate
        self._on_error = on_error
        # The dashboard's data-free shell, when a token keeps a browser's first
        # GET out (api/dashboard.py says why); everything else meets the gate.
        self._before_gate = before_gate
        self._routes: list[tuple[re.Pattern[str], dict[str, Handler], frozenset[str]]] = []

    def add(self, pattern: str, methods: dict[str, Handler], params: tuple[str, ...] = ()) -> None:
        """Serve ``prefix + pattern``; query parameters not in ``params`` are refused."""
        self._routes.append((re.compile(pattern + r"\Z"), methods, frozenset(params)))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = await self._respond(scope, receive)
        except BadRequest as exc:
            response = error_response(exc.status, exc.message, **exc.extra)
        except Exception as exc:  # a bug of ours must not become an error page with a trace
            self._on_error("endpoint", exc)
            # 503, not 500: asgi_perf could not do it (a profile no format can
            # be made of, a failing engine), the app itself is fine; counted.
            response = error_response(
                503,
                f"asgi_perf failed to answer this ({type(exc).__name__}); "
                "see the server log. The app is not affected",
            )
        await response(scope, receive, send)

    async def _respond(self, scope: Scope, receive: Receive) -> Response:
        sub = route_path(scope)[len(self.prefix) :] or "/"
        if self._before_gate is not None:
            shell = self._before_gate(scope, sub)
            if shell is not None:
                return shell
        denied = await self.gate.check(scope)
        if denied is not None:
            return denied
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


def make_perf_app(core: PerfCore, gate: Gate) -> PerfAPI:
    """The ``/_perf`` app serving ``core``, behind ``gate``."""
    api = PerfAPI(core.config.prefix, gate, core.internal_error, open_shell(core.config))
    add_stats_routes(api.add, core)
    add_dashboard_routes(api.add)
    add_profile_routes(api.add, core)
    add_metrics_routes(api.add, core)
    add_memory_routes(api.add, core)
    add_db_routes(api.add, core)
    add_tracemalloc_routes(api.add, core.leaks, core.config.prefix)
    return api
