"""The profile endpoints under the prefix: windows, the store, downloads.

Registered on the same ``PerfAPI`` as the stats endpoints, so the same gate
stands in front of them. Formats come from ``asgi_perf.renderers``: headers
are derived from each renderer's attributes, never from the format's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from asgi_perf.capture import Capture, combine
from asgi_perf.endpoints import BadRequest, PerfAPI, json_response
from asgi_perf.engines import ENGINES
from asgi_perf.renderers import RENDERERS, NotRenderable, Renderer
from asgi_perf.snakeviz_view import snakeviz_page, snakeviz_static
from asgi_perf.storage import ID_RE
from asgi_perf.window import EngineBusy, WindowBusy

if TYPE_CHECKING:
    from asgi_perf.middleware import PerfMiddleware

_ALIASES = ("latest", "slowest")
_FORMATS = "|".join(re.escape(f) for f in sorted(RENDERERS, key=len, reverse=True))
_MAX_IDS = 100


def add_profile_routes(api: PerfAPI, mw: PerfMiddleware) -> None:
    cfg = mw.config
    prefix = cfg.prefix

    def links(profile_id: str) -> dict[str, str]:
        base = f"{prefix}/profiles/{profile_id}"
        out = {fmt: f"{base}{r.file_extension}" for fmt, r in RENDERERS.items()}
        out["snakeviz"] = f"{base}/snakeviz"
        return out

    def described(meta: dict[str, Any]) -> dict[str, Any]:
        return {"schema": 1, **meta, "links": links(meta["id"])}

    def resolve(request: Request, ref: str) -> str:
        """A profile id from an id, ``latest`` or ``slowest`` (``?route=``)."""
        route = request.query_params.get("route")
        if ref in _ALIASES:
            found = mw.store.latest(route) if ref == "latest" else mw.store.slowest(route)
            if found is None:
                where = f" for route {route!r}" if route else ""
                raise BadRequest(404, f"no profiles{where} yet")
            return found
        if not ID_RE.match(ref):
            raise BadRequest(400, f"{ref!r} is not a profile id (16 hex digits, latest or slowest)")
        try:
            mw.store.meta(ref)
        except KeyError:
            raise BadRequest(404, f"no profile {ref} (evicted, or never stored)") from None
        return ref

    def renderer(fmt: str) -> Renderer:
        found = RENDERERS.get(fmt)
        if found is None:
            known = ", ".join(sorted(RENDERERS))
            raise BadRequest(400, f"unknown format {fmt!r} (formats: {known})", parameter="format")
        return found

    async def download(
        capture: Capture, r: Renderer, name: str, profile_id: str | None
    ) -> Response:
        # A long window takes a while to render: not on the event loop.
        try:
            if profile_id:
                body = await run_in_threadpool(mw.store.rendered, profile_id, r.format, r.render)
            else:
                body = await run_in_threadpool(r.render, capture)
        except NotRenderable as exc:
            raise BadRequest(400, str(exc), parameter="format") from None
        headers = {
            "Content-Disposition": f'attachment; filename="{name}{r.file_extension}"',
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        }
        if profile_id:
            headers["X-Perf-Profile-Id"] = profile_id
        return Response(body, media_type=r.media_type, headers=headers)

    def file_stem(meta: dict[str, Any]) -> str:
        route = str(meta.get("route") or "profile")
        slug = re.sub(r"[^a-z0-9]+", "-", route.lower()).strip("-")[:60] or "profile"
        return f"{slug}-{meta['id']}"

    # ----------------------------------------------------------------- windows

    def window_args(request: Request) -> tuple[str, str | None]:
        engine = request.query_params.get("engine", cfg.engine)
        if engine not in ENGINES:
            raise BadRequest(
                400,
                f"unknown engine {engine!r} (engines: {', '.join(sorted(ENGINES))})",
                parameter="engine",
            )
        tag = request.query_params.get("tag")
        return engine, tag[:64] if tag else None

    def seconds_arg(request: Request, default: float | None) -> float:
        raw = request.query_params.get("seconds")
        if raw is None:
            if default is None:
                raise BadRequest(400, "parameter 'seconds' is required", parameter="seconds")
            return default
        try:
            seconds = float(raw)
        except ValueError:
            seconds = float("nan")
        if not 1 <= seconds <= cfg.max_window_seconds:
            raise BadRequest(
                400,
                f"parameter 'seconds' must be a number from 1 to {cfg.max_window_seconds}, "
                f"got {raw!r}",
                parameter="seconds",
            )
        return seconds

    async def start_window(request: Request, seconds: float) -> Any:
        engine, tag = window_args(request)
        try:
            return await mw.windows.start_when_idle(engine, seconds, tag=tag)
        except WindowBusy as busy:
            w = busy.window
            raise BadRequest(
                409,
                f"a profile window ({w.id}, {w.engine}) is running until {w.ends_at}",
                running=w.info(),
            ) from None
        except EngineBusy as exc:
            raise BadRequest(409, str(exc)) from None

    async def profile(request: Request) -> Response:
        seconds = seconds_arg(request, None)
        r = renderer(request.query_params.get("format", "prof"))
        window = await start_window(request, seconds)
        done = asyncio.ensure_future(asyncio.sleep(seconds))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({done, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            client_left = gone.done() and not gone.cancelled()
            for task in (done, gone):
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            if client_left or not done.done():
                # Nobody waits for the file (or we were cancelled): keep
                # nothing half-made.
                mw.windows.abort(window.id)
        if client_left:
            # The client is gone; uvicorn drops whatever is sent now.
            return Response(status_code=499)
        meta = mw.windows.stop(window.id)
        if meta is None:
            # The time limit (or a stop request) ended it first.
            try:
                meta = {**mw.store.meta(window.id), "stored": True}
            except KeyError:
                meta = None
        capture = mw.windows.last_capture
        if meta is not None and meta["stored"]:
            return await download(mw.store.get(meta["id"]), r, file_stem(meta), meta["id"])
        if capture is not None and capture.meta.get("id") == window.id:
            # Larger than the store may hold: served once, not kept.
            return await download(capture, r, file_stem(capture.meta), None)
        raise BadRequest(409, "the window ended without a profile (see the server log)")

    async def windows_list(request: Request) -> Response:
        return json_response({"schema": 1, **mw.windows.stats()})

    async def windows_start(request: Request) -> Response:
        seconds = seconds_arg(request, float(cfg.max_window_seconds))
        window = await start_window(request, seconds)
        body = {
            "schema": 1,
            **window.info(),
            "stop": f"POST {prefix}/windows/{window.id}/stop",
            "profile": f"{prefix}/profiles/{window.id}",
        }
        return json_response(body, 201)

    async def windows_stop(request: Request) -> Response:
        window_id = request.path_params["wid"]
        if not ID_RE.match(window_id):
            raise BadRequest(400, f"{window_id!r} is not a window id")
        meta = mw.windows.stop(window_id)
        if meta is None:
            # Already ended (its time limit, or an earlier stop): answer with
            # what it stored, so a stop racing the limit is not an error.
            try:
                meta = mw.store.meta(window_id)
            except KeyError:
                meta = None
            if meta is None or meta.get("kind") not in ("window", "lifespan"):
                raise BadRequest(404, f"no window {window_id}") from None
        if not meta.get("stored", True):
            return json_response({**meta, "error": "larger than max_profile_bytes: not kept"}, 200)
        return json_response(described(meta))

    # ---------------------------------------------------------------- profiles

    async def profiles(request: Request) -> Response:
        q = request.query_params
        limit_raw = q.get("limit", "100")
        if not limit_raw.isdigit() or not 1 <= int(limit_raw) <= 10_000:
            raise BadRequest(400, "parameter 'limit' must be 1..10000", parameter="limit")
        kind = q.get("kind")
        if kind is not None and kind not in ("request", "window", "lifespan"):
            raise BadRequest(
                400, "parameter 'kind' must be request, window or lifespan", parameter="kind"
            )
        found = mw.store.list(
            route=q.get("route"), kind=kind, tag=q.get("tag"), limit=int(limit_raw)
        )
        return json_response(
            {
                "schema": 1,
                "profiles": [described(m) for m in found],
                "store": mw.store.stats(),
                "requests": mw.requests.stats() if mw.requests else None,
            }
        )

    async def profile_meta(request: Request) -> Response:
        profile_id = resolve(request, request.path_params["pid"])
        return json_response(described(mw.store.meta(profile_id)))

    async def profile_file(request: Request) -> Response:
        r = renderer(request.path_params["fmt"])
        ref = request.path_params["pid"]
        if ref == "merged":
            return await merged(request, r)
        profile_id = resolve(request, ref)
        meta = mw.store.meta(profile_id)
        return await download(mw.store.get(profile_id), r, file_stem(meta), profile_id)

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
            ids = mw.store.ids_for_route(route or "")
        captures = []
        for profile_id in ids:
            try:
                captures.append(mw.store.get(profile_id))
            except KeyError:
                raise BadRequest(404, f"no profile {profile_id}") from None
        if not captures:
            raise BadRequest(404, f"no profiles for route {route!r}")
        capture = combine(captures, {"route": route, "ids": ids})
        slug = re.sub(r"[^a-z0-9]+", "-", (route or "ids").lower()).strip("-")[:60]
        return await download(capture, r, f"merged-{slug or 'profiles'}", None)

    async def snakeviz(request: Request) -> Response:
        profile_id = resolve(request, request.path_params["pid"])
        capture = mw.store.get(profile_id)
        if not capture.call_stats():
            raise BadRequest(404, f"profile {profile_id} is empty: nothing to show")
        return await run_in_threadpool(
            snakeviz_page, capture, profile_id, f"{prefix}/snakeviz-static"
        )

    async def static(request: Request) -> Response:
        return snakeviz_static(request.path_params["path"])

    pid = r"(?P<pid>[^/.]+)"
    api.add(r"/profile", {"GET": profile}, ("seconds", "engine", "format", "tag"))
    api.add(r"/windows", {"GET": windows_list, "POST": windows_start}, ("seconds", "engine", "tag"))
    api.add(r"/windows/(?P<wid>[^/]+)/stop", {"POST": windows_stop})
    api.add(r"/profiles", {"GET": profiles}, ("route", "kind", "tag", "limit"))
    api.add(rf"/profiles/{pid}/snakeviz", {"GET": snakeviz}, ("route",))
    api.add(rf"/profiles/{pid}\.(?P<fmt>.+)", {"GET": profile_file}, ("route", "ids"))
    api.add(rf"/profiles/{pid}", {"GET": profile_meta}, ("route",))
    api.add(r"/snakeviz-static/(?P<path>.+)", {"GET": static})


async def _disconnected(request: Request) -> bool:
    """True when the client goes away; waits for it otherwise."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return True
