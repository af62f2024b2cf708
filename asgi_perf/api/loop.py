"""Event-loop health over HTTP: ``GET /loop`` and the block stacks as a profile."""

from __future__ import annotations

import os

from starlette.requests import Request
from starlette.responses import Response

from asgi_perf.api._downloads import Downloads, renderer
from asgi_perf.api._http import AddRoute, BadRequest, json_response
from asgi_perf.core import PerfCore
from asgi_perf.loop import LoopMonitor


def add_loop_routes(add: AddRoute, core: PerfCore, files: Downloads) -> None:
    def monitor() -> LoopMonitor:
        if core.loop is None:
            raise BadRequest(
                409,
                "the loop monitor is off: start the app with loop_monitor=True "
                "(or ASGI_PERF_LOOP_MONITOR=1)",
                option="loop_monitor",
            )
        return core.loop

    async def loop(request: Request) -> Response:
        return json_response(monitor().report())

    async def blocks(request: Request) -> Response:
        r = renderer(request.path_params["fmt"])
        found = monitor()
        if not found.blocks:
            raise BadRequest(
                404, f"no blocks yet: the loop has not been stuck for {found.threshold_ms:g} ms"
            )
        capture = found.blocks_capture()
        capture.meta.update({"id": "loop-blocks", "pid": os.getpid()})
        return await files.send(capture, r, "loop-blocks", None)

    add(r"/loop", {"GET": loop})
    add(r"/loop/blocks\.(?P<fmt>.+)", {"GET": blocks})
