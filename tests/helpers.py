"""Helpers shared by test modules: reading profiles, finding the middleware, a closed port."""

from __future__ import annotations

import pstats
import secrets
import socket
from pathlib import Path
from typing import Any

from asgi_perf import PerfMiddleware


def load_stats(data: bytes, tmp_path: Path) -> pstats.Stats:
    """A downloaded ``.prof``, loaded with pstats from a file as a user would."""
    path = tmp_path / f"{secrets.token_hex(8)}.prof"
    path.write_bytes(data)
    return pstats.Stats(str(path))


def function_names(stats: pstats.Stats) -> set[str]:
    return {name for (_file, _line, name) in stats.stats}  # type: ignore[attr-defined]


def perf_middleware_of(app: Any) -> PerfMiddleware:
    """The PerfMiddleware instance inside a Starlette app's built middleware stack."""
    layer = app.middleware_stack
    while layer is not None:
        if isinstance(layer, PerfMiddleware):
            return layer
        layer = getattr(layer, "app", None)
    raise AssertionError("no PerfMiddleware in the stack")


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
