"""``GET {prefix}/db``: each route's statements, the N+1s and the slow statements."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from asgi_perf.api._http import AddRoute, BadRequest, json_response, parse_int, shown
from asgi_perf.core import PerfCore
from asgi_perf.db.report import merge_states, report
from asgi_perf.db.store import DBStats

# Route keys are "METHOD template": longer is no key of ours.
_MAX_ROUTE = 1000


def add_db_routes(add: AddRoute, core: PerfCore) -> None:
    def stats() -> DBStats:
        if core.db is None:
            raise BadRequest(
                409,
                "database capture is off: start the app with db=True (or ASGI_PERF_DB=1)",
                option="db",
            )
        return core.db

    async def db(request: Request) -> Response:
        found = stats()
        limit = parse_int(request, "limit", 1, 1000, default=20)
        route = request.query_params.get("route")
        if route is not None and not 0 < len(route) <= _MAX_ROUTE:
            raise BadRequest(
                400,
                f"parameter 'route' must be a route key such as 'GET /items/{{id}}', "
                f"got {shown(route)}",
                parameter="route",
            )
        await core.fresh()
        body = report(
            merge_states(found.states()),
            threshold=found.threshold,
            slow_query_ms=found.slow_query_ms,
            route=route,
            limit=limit,
        )
        return json_response({"schema": 1, **body})

    add(r"/db", {"GET": db}, ("route", "limit"))
