"""The profile store over HTTP: lists, files in every format, merges, viewers.

Documents (``.svg``, ``.html``) open in place and ``?download=1`` saves
them; snakeviz and speedscope are pages of the app, under the prefix.
"""

from __future__ import annotations

from typing import cast

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from asgi_perf.api._downloads import Downloads, download_name, opens_in_place, renderer, view_of
from asgi_perf.api._http import AddRoute, BadRequest, json_response, parse_int, query_bool
from asgi_perf.api.loop import add_loop_routes
from asgi_perf.api.snakeviz import snakeviz_page, snakeviz_static
from asgi_perf.api.speedscope import speedscope_page, speedscope_static
from asgi_perf.api.windows import add_window_routes
from asgi_perf.capture import PROFILE_KINDS, Capture, ProfileMeta, combine
from asgi_perf.core import PerfCore
from asgi_perf.labels import is_attributed, route_table
from asgi_perf.renderers import Renderer
from asgi_perf.storage import is_profile_id, route_slug

_MAX_IDS = 100


def add_profile_routes(add: AddRoute, core: PerfCore) -> None:
    store = core.store
    prefix = core.config.prefix
    files = Downloads(store, prefix)
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
        if core.workers is not None:
            # Every worker's profiles: the others' as their last state lists them.
            own = {m["id"] for m in found}
            for m in foreign_profiles():
                if m["id"] not in own and all(
                    q.get(k) is None or m.get(k) == q.get(k) for k in ("route", "kind", "tag")
                ):
                    found.append(m)
            found.sort(key=lambda m: m.get("created", 0.0), reverse=True)
            del found[limit:]
        requests = core.requests
        return json_response(
            {
                "schema": 1,
                "profiles": [files.described(m) for m in found],
                "store": store.stats(),
                "requests": requests.stats() if requests else None,
            }
        )

    def foreign_profiles() -> list[ProfileMeta]:
        if core.workers is None:
            return []
        return [
            cast(ProfileMeta, m)
            for body in core.workers.others()
            for m in body.get("profiles") or ()
            if isinstance(m, dict) and isinstance(m.get("id"), str)
        ]

    async def foreign_meta(ref: str) -> ProfileMeta | None:
        """A profile another worker of the server keeps (None: no worker has it)."""
        if core.workers is None or not is_profile_id(ref) or store.has(ref):
            return None
        found = next((m for m in foreign_profiles() if m["id"] == ref), None)
        if found is None:
            # Kept a moment ago, maybe, and not listed yet: ask for fresh lists.
            await core.fresh()
            found = next((m for m in foreign_profiles() if m["id"] == ref), None)
        return found

    async def foreign_capture(meta: ProfileMeta) -> Capture:
        server = core.server_windows
        capture = None if server is None else await server.fetch(meta["id"])
        if capture is None:
            raise BadRequest(
                404,
                f"profile {meta['id']} is kept by worker {meta.get('pid')}, "
                "which did not hand it over (gone, or evicted it)",
            )
        return capture

    async def profile_meta(request: Request) -> Response:
        ref = request.path_params["pid"]
        found = await foreign_meta(ref)
        if found is not None:
            return json_response(files.described(found))
        profile_id = files.resolve(request, ref)
        return json_response(files.described(store.meta(profile_id)))

    async def viewed(request: Request) -> tuple[ProfileMeta, Capture, str | None]:
        """The profile a page shows: its metadata, the view asked for, and the
        id whose renders the store caches (None for a view or another worker's)."""
        ref = request.path_params["pid"]
        found = await foreign_meta(ref)
        if found is not None:
            return found, view_of(await foreign_capture(found), request, f"profile {ref}"), None
        profile_id = files.resolve(request, ref)
        whole = store.get(profile_id)
        shown = view_of(whole, request, f"profile {profile_id}")
        return store.meta(profile_id), shown, profile_id if shown is whole else None

    async def profile_file(request: Request) -> Response:
        r = renderer(request.path_params["fmt"])
        inline = opens_in_place(request, r)
        ref = request.path_params["pid"]
        if ref == "merged":
            return await merged(request, r, inline)
        found = await foreign_meta(ref)
        if found is not None:
            capture = view_of(await foreign_capture(found), request, f"profile {ref}")
            name = download_name(found)
            return await files.send(capture, r, name, None, profile_id=ref, inline=inline)
        return await files.send_stored(files.resolve(request, ref), r, request, inline=inline)

    async def merged(request: Request, r: Renderer, inline: bool) -> Response:
        q = request.query_params
        route, raw_ids = q.get("route"), q.get("ids")
        if (route is None) == (raw_ids is None):
            raise BadRequest(400, "merged profiles need exactly one of 'route' or 'ids'")
        if raw_ids is not None:
            ids = [i for i in raw_ids.split(",") if i]
            if not ids or len(ids) > _MAX_IDS or not all(map(is_profile_id, ids)):
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
        return await files.send(capture, r, name, None, inline=inline)

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
        meta, capture, _ = await viewed(request)
        if not capture.call_stats():
            raise BadRequest(404, f"profile {meta['id']} is empty: nothing to show")
        static_url = f"{prefix}/snakeviz-static"
        return await run_in_threadpool(
            snakeviz_page, capture, meta["id"], static_url, download_name(meta)
        )

    async def speedscope(request: Request) -> Response:
        meta, capture, cached = await viewed(request)
        if not capture.stacks:
            raise BadRequest(404, f"profile {meta['id']} is empty: nothing to show")
        # The page is this format's viewer: the one place a format is named.
        body = await files.render(capture, renderer("speedscope.json"), cached)
        title = f"{meta.get('route') or meta.get('kind') or 'profile'} {meta['id']} - speedscope"
        static_url = f"{prefix}/speedscope-static"
        return await run_in_threadpool(
            speedscope_page, body, title, static_url, download_name(meta)
        )

    async def static(request: Request) -> Response:
        return snakeviz_static(request.path_params["path"])

    async def speedscope_file(request: Request) -> Response:
        return speedscope_static(request.path_params["name"])

    pid = r"(?P<pid>[^/.]+)"
    add(r"/profiles", {"GET": profiles}, ("route", "kind", "tag", "limit"))
    add(rf"/profiles/{pid}/snakeviz", {"GET": snakeviz}, ("route", "idle"))
    add(rf"/profiles/{pid}/speedscope", {"GET": speedscope}, ("route", "idle"))
    add(rf"/profiles/{pid}/routes", {"GET": routes}, ("route", "idle"))
    add(
        rf"/profiles/{pid}\.(?P<fmt>.+)",
        {"GET": profile_file},
        ("route", "ids", "idle", "download"),
    )
    add(rf"/profiles/{pid}", {"GET": profile_meta}, ("route",))
    add(r"/snakeviz-static/(?P<path>.+)", {"GET": static})
    # Flat: every file of the viewer sits in one directory.
    add(r"/speedscope-static/(?P<name>[^/]+)", {"GET": speedscope_file})
