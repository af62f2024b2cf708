"""The app variants compared by every benchmark, built by name.

All variants are the same trivial FastAPI app; only the middleware differs,
and every middleware is installed the same way (``add_middleware``) so each
sits at the same place in Starlette's stack. The profiling benchmarks can
wrap the ``shop`` app (``shop.py``) instead, whose profiles have real stacks,
or the ``attribution`` app (``attribution.py``): two routes burning CPU 3 : 1.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI

from asgi_perf import PerfConfig, PerfMiddleware
from asgi_perf._types import ASGIApp, Receive, Scope, Send

VARIANTS = ("bare", "asgi_perf", "clock", "prometheus")
PATHS = ("/", "/items/42")
APPS = ("trivial", "shop", "attribution", "leaky")
# Bound once, as asgi_perf does, so the floor is not raised by an attribute lookup.
_perf_counter_ns = time.perf_counter_ns


class ClockMiddleware:
    """Reads the clock before and after the app and nothing else.

    The floor any timing middleware pays: one extra ASGI layer and two clock
    reads. What asgi_perf costs above this is its own bookkeeping.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.total_ns = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        t0 = _perf_counter_ns()
        try:
            await self.app(scope, receive, send)
        finally:
            # A timer has to keep its reading somewhere; one add is the least.
            self.total_ns += _perf_counter_ns() - t0


def bare_app() -> FastAPI:
    """``GET /`` and ``GET /items/{item_id}``, nothing else."""
    app = FastAPI()

    @app.get("/")
    async def root() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    return app


# What GET /leak keeps per request (BENCH_LEAK_BYTES): 1 MB per 100 requests.
_KEPT: list[bytes] = []


def leaky_app() -> FastAPI:
    """The trivial app plus ``GET /leak``, which keeps ``BENCH_LEAK_BYTES`` a request."""
    app = bare_app()
    size = int(os.environ.get("BENCH_LEAK_BYTES", str(10 * 1024)))

    @app.get("/leak")
    async def leak() -> dict[str, int]:
        _KEPT.append(b"\x01" * size)
        return {"kept": len(_KEPT)}

    return app


def _with_asgi_perf(app: FastAPI, options: Mapping[str, Any]) -> FastAPI:
    # Starlette builds its middleware on the first request (or lifespan
    # event), so a bad option would only show as 500s; fail here instead.
    PerfConfig.from_options(**options)
    app.add_middleware(PerfMiddleware, **options)
    return app


def _with_clock(app: FastAPI, options: Mapping[str, Any]) -> FastAPI:
    app.add_middleware(ClockMiddleware)
    return app


def _with_prometheus(app: FastAPI, options: Mapping[str, Any]) -> FastAPI:
    from prometheus_client import CollectorRegistry
    from prometheus_fastapi_instrumentator import Instrumentator

    # A registry per app: the global one refuses a second set of the same
    # metrics, and the benchmarks build this variant more than once.
    Instrumentator(registry=CollectorRegistry()).instrument(app)
    return app


_WRAPPERS: dict[str, Callable[[FastAPI, Mapping[str, Any]], FastAPI]] = {
    "bare": lambda app, options: app,
    "asgi_perf": _with_asgi_perf,
    "clock": _with_clock,
    "prometheus": _with_prometheus,
}


def _inner_app(name: str) -> FastAPI:
    if name == "trivial":
        return bare_app()
    if name == "shop":
        # Imported only when asked for: the trivial variants' process (and
        # with it the callgrind figures, which move with the heap) stays as it was.
        from benchmarks.shop import shop_app

        return shop_app()
    if name == "leaky":
        return leaky_app()
    if name == "attribution":
        from benchmarks.attribution import attribution_app

        return attribution_app()
    raise ValueError(f"unknown app {name!r} (known: {', '.join(APPS)})")


def make_app(
    variant: str, options: Mapping[str, Any] | None = None, app: str = "trivial"
) -> FastAPI:
    """Variant ``variant`` of ``app``; ``options`` go to ``PerfMiddleware`` (asgi_perf only)."""
    try:
        wrap = _WRAPPERS[variant]
    except KeyError:
        raise ValueError(f"unknown variant {variant!r} (known: {', '.join(VARIANTS)})") from None
    return wrap(_inner_app(app), options or {})


def options_from_env(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """``BENCH_OPTIONS``: JSON object of PerfMiddleware options, e.g. ``{"sample_rate": 0.01}``."""
    raw = environ.get("BENCH_OPTIONS", "").strip()
    if not raw:
        return {}
    options = json.loads(raw)
    if not isinstance(options, dict):
        raise ValueError(f"BENCH_OPTIONS must be a JSON object, got {raw!r}")
    return options


def find_middleware(app: FastAPI, kind: type[Any]) -> Any:
    """The instance of middleware class ``kind`` in ``app``'s built stack.

    Starlette builds its middleware on the first request, so call this after
    one: the instance is needed to read what it measured.
    """
    layer: Any = app.middleware_stack
    while layer is not None:
        if isinstance(layer, kind):
            return layer
        layer = getattr(layer, "app", None)
    raise LookupError(f"no {kind.__name__} in the middleware stack (no request served yet?)")
