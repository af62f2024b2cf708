"""A minimal in-process ASGI client: no sockets, no httpx, nearly no work of its own.

The client's own cost is identical for every app variant, so it cancels out
of the differences the benchmarks report; keeping it small keeps the ratios
readable too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from asgi_perf._types import ASGIApp, Message

_REQUEST: Message = {"type": "http.request", "body": b"", "more_body": False}


def http_scope(path: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> dict[str, Any]:
    """The scope uvicorn would build for ``GET path`` from a loopback client.

    ``headers`` are added to the default ones (lower-case names, as ASGI has them).
    """
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench"), (b"user-agent", b"asgi-perf-bench"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def _receive() -> Message:
    # GET has no body; the endpoints never wait for a disconnect.
    return _REQUEST


async def drive(
    app: ASGIApp, path: str, n: int, headers: Sequence[tuple[bytes, bytes]] = ()
) -> int:
    """Send ``n`` sequential ``GET path`` requests to ``app``; return how many got a 200."""
    # Built once, outside the loop: extra headers cost the loop nothing.
    template = http_scope(path, headers)
    status = 0

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    ok = 0
    for _ in range(n):
        status = 0
        # Apps and middlewares write into the scope (route, app, state):
        # each request gets its own, as from a server.
        scope = template.copy()
        scope["state"] = {}
        await app(scope, _receive, send)
        if status == 200:
            ok += 1
    return ok
