"""An app for a uvicorn process of its own (``--app-dir tests``), wrapped by asgi_perf.

``GET /alpha`` and ``GET /beta`` burn CPU in functions named after them
(``cpu_work``): a profile of the process shows by name whose work it holds,
which profiles of servers sharing one process could not (the sampler reads
every thread). The continuous sampler is on, for ``--last``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from cpu_work import CHUNKS, alpha_work, beta_work
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from asgi_perf import PerfMiddleware


def _burning(work: Callable[[], int]) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        total = 0
        for _ in range(CHUNKS):
            total += work()
            await asyncio.sleep(0)
        return PlainTextResponse(str(total))

    return endpoint


app = PerfMiddleware(
    Starlette(routes=[Route("/alpha", _burning(alpha_work)), Route("/beta", _burning(beta_work))]),
    continuous=True,
)
