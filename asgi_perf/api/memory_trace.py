"""The leak finder over HTTP: tracemalloc on demand, top allocators, baseline and diff.

A snapshot of a big heap takes seconds: every call to the finder runs in a
worker thread, so the event loop keeps serving the app, and a call that
finds another one taking a snapshot answers 409 at once instead of waiting
in a thread the app's sync endpoints need.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from asgi_perf.api._http import AddRoute, BadRequest, json_response, parse_int, shown
from asgi_perf.memory.tracing import GROUP_BY, Conflict, GroupBy, LeakFinder, TracingError

T = TypeVar("T")

_MAX_TOP = 1000
_DEFAULT_TOP = 30


def _group_by(request: Request) -> GroupBy:
    raw = request.query_params.get("group_by", "lineno")
    if raw not in GROUP_BY:
        accepted = ", ".join(GROUP_BY)
        raise BadRequest(
            400,
            f"parameter 'group_by' must be one of {accepted}, got {shown(raw)}",
            parameter="group_by",
            accepted=list(GROUP_BY),
        )
    return raw


def add_tracemalloc_routes(add: AddRoute, finder: LeakFinder, prefix: str) -> None:
    async def off_loop(fn: Callable[..., T], *args: Any) -> T:
        try:
            return await run_in_threadpool(fn, *args)
        except TracingError as exc:
            raise BadRequest(409, exc.advice(prefix)) from None

    async def start(request: Request) -> Response:
        frames = parse_int(request, "frames", 1, finder.max_frames, default=1)
        # Off the loop too: the finder's lock may be held by a long snapshot.
        return json_response({"schema": 1, **await off_loop(finder.start, frames)})

    async def stop(request: Request) -> Response:
        try:
            # Stopping frees every trace: on a big heap that takes a while too.
            stopped = await off_loop(finder.stop)
        except Conflict as exc:
            raise BadRequest(409, str(exc), option="tracemalloc") from None
        return json_response({"schema": 1, **stopped})

    async def top(request: Request) -> Response:
        n = parse_int(request, "top", 1, _MAX_TOP, default=_DEFAULT_TOP)
        group_by = _group_by(request)
        return json_response(await off_loop(finder.top, n, group_by))

    async def snapshot(request: Request) -> Response:
        taken = await off_loop(finder.baseline)
        return json_response({"schema": 1, "baseline": taken})

    async def diff(request: Request) -> Response:
        n = parse_int(request, "top", 1, _MAX_TOP, default=_DEFAULT_TOP)
        group_by = _group_by(request)
        return json_response(await off_loop(finder.diff, n, group_by))

    add(r"/memory/tracemalloc/start", {"POST": start}, ("frames",))
    add(r"/memory/tracemalloc/stop", {"POST": stop})
    add(r"/memory/top", {"GET": top}, ("top", "group_by"))
    add(r"/memory/snapshot", {"POST": snapshot})
    add(r"/memory/diff", {"GET": diff}, ("top", "group_by"))
