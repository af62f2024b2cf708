"""Time windows over HTTP: ``GET /profile?seconds=N`` and ``/windows``."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from asgi_perf.api._downloads import Downloads, download_name, renderer, view_of
from asgi_perf.api._http import (
    AddRoute,
    BadRequest,
    error_response,
    json_response,
    parse_int,
    query_bool,
    shown,
)
from asgi_perf.capture import Capture, ProfileMeta
from asgi_perf.core import PerfCore
from asgi_perf.engines import ENGINES
from asgi_perf.errors import EngineUnavailable
from asgi_perf.renderers import Renderer
from asgi_perf.server_windows import ServerWindowBusy
from asgi_perf.storage import ID_RE
from asgi_perf.units import decimal_number
from asgi_perf.window import EngineBusy, Window, WindowBusy, WindowFailed

# An engine that fails is neither the client's fault (4xx) nor a crash of
# ours (500): the profiling service could not do it, the app is fine.
ENGINE_FAILED = 503


def engine_failed(failed: WindowFailed) -> Response:
    return error_response(
        ENGINE_FAILED, str(failed), window=failed.window_id, engine=failed.engine, aborted=True
    )


def add_window_routes(add: AddRoute, core: PerfCore, files: Downloads) -> None:
    cfg = core.config
    prefix = cfg.prefix
    windows, store = core.windows, core.store
    server = core.server_windows

    def window_args(request: Request) -> tuple[str, str | None]:
        engine = request.query_params.get("engine", cfg.window_engine)
        if engine not in ENGINES:
            raise BadRequest(
                400,
                f"unknown engine {engine!r} (engines: {', '.join(sorted(ENGINES))})",
                parameter="engine",
            )
        if query_bool(request, "native") and engine != "pyspy":
            raise BadRequest(400, "parameter 'native' needs engine=pyspy", parameter="native")
        tag = request.query_params.get("tag")
        return engine, tag[:64] if tag else None

    def seconds_arg(request: Request, default: float | None) -> float:
        raw = request.query_params.get("seconds")
        if raw is None:
            if default is None:
                raise BadRequest(400, "parameter 'seconds' is required", parameter="seconds")
            return default
        number = decimal_number(raw)
        seconds = float("nan") if number is None else number
        if not 1 <= seconds <= cfg.max_window_seconds:
            raise BadRequest(
                400,
                f"parameter 'seconds' must be a number from 1 to {cfg.max_window_seconds}, "
                f"got {shown(raw)}",
                parameter="seconds",
            )
        return seconds

    async def start_window(request: Request, seconds: float) -> Window:
        engine, tag = window_args(request)
        try:
            return await windows.start_when_idle(
                engine, seconds, tag=tag, native=query_bool(request, "native")
            )
        except WindowBusy as busy:
            w = busy.window
            raise BadRequest(
                409,
                f"a profile window ({w.id}, {w.engine}) is running until {w.ends_at}",
                running=w.info(),
            ) from None
        except EngineBusy as exc:
            raise BadRequest(409, str(exc)) from None
        except EngineUnavailable as exc:
            # py-spy missing, or the system refuses to trace: say how to fix it.
            raise BadRequest(409, str(exc), engine=engine) from None
        except WindowFailed as failed:
            raise BadRequest(ENGINE_FAILED, str(failed), engine=engine) from None

    async def profile(request: Request) -> Response:
        if "last" in request.query_params:
            return await recent(request)
        seconds = seconds_arg(request, None)
        r = renderer(request.query_params.get("format", "prof"))
        query_bool(request, "idle")  # checked before the wait, not after
        if server is not None:
            return await server_profile(request, seconds, r)
        pid_arg(request)
        window = await start_window(request, seconds)
        client_left = await wait_or_hang_up(
            request, seconds, lambda: windows.abort(window.id), ended=window.ended
        )
        if client_left:
            # The client is gone; uvicorn drops whatever is sent now.
            return Response(status_code=499)
        try:
            meta: ProfileMeta | None = windows.stop(window.id)
        except WindowFailed as failed:
            return engine_failed(failed)
        if meta is None:
            # The time limit (or a stop request) ended it first.
            try:
                meta = {**store.meta(window.id), "stored": True}
            except KeyError:
                meta = None
            failure = windows.failure(window.id)
            if meta is None and failure is not None:
                return engine_failed(failure)
        capture = windows.last_capture
        if meta is not None and meta["stored"]:
            return await files.send_stored(meta["id"], r, request)
        if capture is not None and capture.meta.get("id") == window.id:
            # Larger than the store may hold: served once, not kept.
            viewed = view_of(capture, request, f"window {window.id}")
            return await files.send(viewed, r, download_name(capture.meta), None)
        raise BadRequest(409, "the window ended without a profile (see the server log)")

    async def recent(request: Request) -> Response:
        """``?last=N``: the last N seconds of the continuous ring, at once."""
        if "seconds" in request.query_params:
            raise BadRequest(400, "give either 'seconds' (a new window) or 'last', not both")
        if "engine" in request.query_params or "native" in request.query_params:
            raise BadRequest(400, "'last' is cut from the continuous sampler: no engine to choose")
        ring = core.ring
        if ring is None or not ring.running:
            raise BadRequest(
                409,
                "continuous profiling is off: start the app with continuous=True "
                "(or ASGI_PERF_CONTINUOUS=1) to keep the recent past",
                option="continuous",
            )
        limit = int(ring.seconds)
        last = parse_int(request, "last", 1, limit)
        r = renderer(request.query_params.get("format", "prof"))
        capture = ring.last(last)
        capture.meta.update(
            {
                "id": secrets.token_hex(8),
                "kind": "window",
                "engine": "sampler",
                "route": "<process>",
                "method": "WINDOW",
                "status": None,
                "duration_ms": round(capture.duration_s * 1000, 3),
                "pid": os.getpid(),
                "tag": request.query_params.get("tag"),
            }
        )
        viewed = view_of(capture, request, f"the last {last} s")
        return await files.send(viewed, r, f"last-{last}s", None)

    async def server_profile(request: Request, seconds: float, r: Renderer) -> Response:
        """``GET /profile`` on a server of several workers: all of them, one file."""
        assert server is not None
        started = start_server_window(request, seconds)
        window_id = str(started["id"])
        if await wait_or_hang_up(request, seconds, lambda: server.abort(window_id)):
            return Response(status_code=499)
        meta, capture = await collect(started)
        if meta["stored"]:
            return await files.send_stored(meta["id"], r, request)
        viewed = view_of(capture, request, f"window {window_id}")
        return await files.send(viewed, r, download_name(capture.meta), None)

    def start_server_window(request: Request, seconds: float) -> dict[str, Any]:
        assert server is not None
        engine, tag = window_args(request)
        pid = pid_arg(request)
        try:
            return server.start(
                engine, seconds, tag=tag, native=query_bool(request, "native"),
                pids=None if pid is None else [pid],
            )  # fmt: skip
        except ServerWindowBusy as busy:
            active = busy.active
            raise BadRequest(
                409,
                f"a profile window ({active.get('id')}, {active.get('engine')}) is running "
                f"on this server until {active.get('ends_at')}",
                running=active,
            ) from None

    async def collect(started: dict[str, Any]) -> tuple[ProfileMeta, Capture]:
        assert server is not None
        try:
            return await server.collect(started)
        except RuntimeError as exc:
            raise BadRequest(409, f"{exc} (see the workers' logs)") from None

    def pid_arg(request: Request) -> int | None:
        """``pid=``: one worker of the server; which ones there are is in /stats."""
        if "pid" not in request.query_params:
            return None
        pid = parse_int(request, "pid", 1, 1 << 31)
        live = core.workers.live_pids() if core.workers is not None else [os.getpid()]
        if pid not in live:
            raise BadRequest(
                404, f"no live worker with pid {pid} (workers: {sorted(live)})", parameter="pid"
            )
        return pid

    async def windows_list(request: Request) -> Response:
        body = {"schema": 1, **windows.stats()}
        if server is not None:
            body["server"] = server.active()
        return json_response(body)

    async def windows_start(request: Request) -> Response:
        seconds = seconds_arg(request, float(cfg.max_window_seconds))
        if server is not None:
            started = start_server_window(request, seconds)
            loop = asyncio.get_running_loop()
            # Its end holds even if nobody comes back to stop it.
            loop.call_later(seconds, lambda: asyncio.ensure_future(collect_at_end(started)))
            window_id = str(started["id"])
            return json_response(
                {
                    "schema": 1,
                    "id": window_id,
                    "kind": "window",
                    "engine": started["engine"],
                    "started": started["started"],
                    "ends_at": started["ends_at"],
                    "running": True,
                    "tag": started["tag"],
                    "workers": started["pids"] or core.workers.live_pids() if core.workers else [],
                    "stop": f"POST {prefix}/windows/{window_id}/stop",
                    "profile": f"{prefix}/profiles/{window_id}",
                },
                201,
            )
        pid_arg(request)
        window = await start_window(request, seconds)
        body = {
            "schema": 1,
            **window.info(),
            "stop": f"POST {prefix}/windows/{window.id}/stop",
            "profile": f"{prefix}/profiles/{window.id}",
        }
        return json_response(body, 201)

    async def collect_at_end(started: dict[str, Any]) -> None:
        assert server is not None
        active = server.active()
        if active is None or active.get("id") != started["id"]:
            return  # stopped (and collected) earlier
        try:
            await server.collect(started)
        except Exception as exc:
            core.internal_error("server_window", exc)

    async def windows_stop(request: Request) -> Response:
        window_id = request.path_params["wid"]
        if not ID_RE.match(window_id):
            raise BadRequest(400, f"{window_id!r} is not a window id")
        if server is not None:
            active = server.active()
            if active is not None and active.get("id") == window_id:
                server.request_stop(window_id)
                stopped, _ = await collect({**active, "ends_at": time.time()})
                if not stopped.get("stored", True):
                    return json_response(
                        {**stopped, "error": "larger than max_profile_bytes: not kept"}, 200
                    )
                return json_response(files.described(stopped))
        try:
            meta = windows.stop(window_id)
        except WindowFailed as failed:
            return engine_failed(failed)
        if meta is None:
            failure = windows.failure(window_id)
            if failure is not None:
                # Its time limit came first, and the engine failed then.
                return engine_failed(failure)
            # Already ended (its time limit, or an earlier stop): answer with
            # what it stored, so a stop racing the limit is not an error.
            try:
                meta = store.meta(window_id)
            except KeyError:
                meta = None
            if meta is None or meta.get("kind") not in ("window", "lifespan"):
                raise BadRequest(404, f"no window {window_id}") from None
        if not meta.get("stored", True):
            return json_response({**meta, "error": "larger than max_profile_bytes: not kept"}, 200)
        return json_response(files.described(meta))

    add(
        r"/profile",
        {"GET": profile},
        ("seconds", "engine", "format", "tag", "last", "route", "idle", "native", "pid"),
    )
    add(
        r"/windows",
        {"GET": windows_list, "POST": windows_start},
        ("seconds", "engine", "tag", "native", "pid"),
    )
    add(r"/windows/(?P<wid>[^/]+)/stop", {"POST": windows_stop})


async def wait_or_hang_up(
    request: Request,
    seconds: float,
    abort: Callable[[], None],
    *,
    ended: asyncio.Event | None = None,
) -> bool:
    """Wait ``seconds``, or until ``ended`` (the window ended early); True when
    the client hung up first (``abort`` has run then).

    A cancelled request aborts too, at once: nobody waits for the file (the
    server, or a layer above, gave up on it), and nothing half-made is kept.
    """
    done = asyncio.ensure_future(
        asyncio.sleep(seconds) if ended is None else asyncio.wait_for(ended.wait(), seconds)
    )
    gone = asyncio.ensure_future(_disconnected(request))
    waited = False
    try:
        await asyncio.wait({done, gone}, return_when=asyncio.FIRST_COMPLETED)
        waited = True
    finally:
        # Decided before the helpers are cancelled below: a cancelled task
        # is "done" too, so asking afterwards mistook a cancellation for
        # the end of the wait and left the window running.
        client_left = gone.done() and not gone.cancelled()
        if client_left or not waited:
            abort()
        for task in (done, gone):
            task.cancel()
        # Reaped, not suppressed: a second cancellation of ours still propagates.
        await asyncio.gather(done, gone, return_exceptions=True)
    return client_left


async def _disconnected(request: Request) -> bool:
    """True when the client goes away; waits for it otherwise."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return True
