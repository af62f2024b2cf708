"""The profile store over HTTP: lists, downloads in every format, merges, snakeviz."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from asgi_perf.api._downloads import Downloads, renderer, view_of
from asgi_perf.api._http import AddRoute, BadRequest, json_response, parse_int, query_bool
from asgi_perf.api.loop import add_loop_routes
from asgi_perf.api.snakeviz import snakeviz_page, snakeviz_static
from asgi_perf.api.windows import add_window_routes
from asgi_perf.capture import PROFILE_KINDS, combine
from asgi_perf.core import PerfCore
from asgi_perf.labels import is_attributed, route_table
from asgi_perf.renderers import Renderer
from asgi_perf.storage import ID_RE, route_slug

_MAX_IDS = 100


def add_profile_routes(add: AddRoute, core: PerfCore) -> None:
    store = core.store
    files = Downloads(store, core.config.prefix)
    add_window_routes(add, core, files)
    add_loop_routes(add, core, files)

    async def profiles(request: Request) -> Response:
        q = request.query_params
        limit = parse_int(request, "limit", 1, 10_000, default=100)
        kind = q.get("kind")
        if kind is not None and kind not in PROFILE_KINDS:
            raise BadRequest(
                400, "parameter 'kind' must be request, window or lifespan", parameter="kind"
            )
        found = store.list(route=q.get("route"), kind=kind, tag=q.get("tag"), limit=limit)
        requests = core.requests
        return json_response(
            {
                "schema": 1,
                "profiles": [files.described(m) for m in found],
                "store": store.stats(),
                "requests": requests.stats() if requests else None,
            }
        )

    async def profile_meta(request: Request) -> Response:
        profile_id = files.resolve(request, request.path_params["pid"])
        return json_response(files.described(store.meta(profile_id)))

    async def profile_file(request: Request) -> Response:
        r = renderer(request.path_params["fmt"])
        ref = request.path_params["pid"]
        if ref == "merged":
            return await merged(request, r)
        return await files.send_stored(files.resolve(request, ref), r, request)

    async def merged(request: Request, r: Renderer) -> Response:
        q = request.query_params
        route, raw_ids = q.get("route"), q.get("ids")
        if (route is None) == (raw_ids is None):
            raise BadRequest(400, "merged profiles need exactly one of 'route' or 'ids'")
        if raw_ids is not None:
            ids = [i for i in raw_ids.split(",") if i]
            if not ids or len(ids) > _MAX_IDS or not all(ID_RE.match(i) for i in ids):
                raise BadRequest(
                    400,
                    f"parameter 'ids' must be 1..{_MAX_IDS} comma-separated profile ids",
                    parameter="ids",
                )
        else:
            ids = store.ids_for_route(route or "")
        captures = []
        for profile_id in ids:
            try:
                captures.append(store.get(profile_id))
            except KeyError:
                raise BadRequest(404, f"no profile {profile_id}") from None
        if not captures:
            raise BadRequest(404, f"no profiles for route {route!r}")
        capture = combine(captures, {"route": route, "ids": ids})
        name = f"merged-{route_slug(route or 'ids', fallback='profiles')}"
        return await files.send(capture, r, name, None)

    async def routes(request: Request) -> Response:
        profile_id = files.resolve(request, request.path_params["pid"])
        capture = store.get(profile_id)
        return json_response(
            {
                "schema": 1,
                "id": profile_id,
                "engine": capture.engine,
                "attributed": is_attributed(capture),
                "routes": route_table(capture, idle=query_bool(request, "idle")),
            }
        )

    async def snakeviz(request: Request) -> Response:
        profile_id = files.resolve(request, request.path_params["pid"])
        capture = view_of(store.get(profile_id), request, f"profile {profile_id}")
        if not capture.call_stats():
            raise BadRequest(404, f"profile {profile_id} is empty: nothing to show")
        return await run_in_threadpool(
            snakeviz_page, capture, profile_id, f"{core.config.prefix}/snakeviz-static"
        )

    async def static(request: Request) -> Response:
        return snakeviz_static(request.path_params["path"])

    pid = r"(?P<pid>[^/.]+)"
    add(r"/profiles", {"GET": profiles}, ("route", "kind", "tag", "limit"))
    add(rf"/profiles/{pid}/snakeviz", {"GET": snakeviz}, ("route", "idle"))
    add(rf"/profiles/{pid}/routes", {"GET": routes}, ("route", "idle"))
    add(rf"/profiles/{pid}\.(?P<fmt>.+)", {"GET": profile_file}, ("route", "ids", "idle"))
    add(rf"/profiles/{pid}", {"GET": profile_meta}, ("route",))
    add(r"/snakeviz-static/(?P<path>.+)", {"GET": static})
