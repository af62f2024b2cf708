"""Per-request profiles: which requests, with which engine, and what is kept.

The middleware hands a request here only when it asked for a profile
(``X-Perf-Profile: 1``) or was sampled (``sample_rate``); everything else
never reaches this module. A failure here is logged, counted and dropped:
the request is always served.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from asgi_perf._types import Message, Receive, Scope, Send
from asgi_perf.engines import Engine, Recording, load_engine
from asgi_perf.storage import ProfileStore

if TYPE_CHECKING:
    from asgi_perf.middleware import PerfMiddleware

PROFILE_HEADER = (b"x-perf-profile", b"1")
PROFILE_ID_HEADER = b"x-perf-profile-id"
TAG_HEADER = b"x-perf-tag"
# Marks a request already being profiled, so the middleware's second pass
# over it (the timed one) does not start another profile.
SCOPE_KEY = "asgi_perf.profile_id"
_TAG_RE = re.compile(r"[^A-Za-z0-9._:/@=+-]")
_MAX_TAG = 64


class RequestProfiler:
    """Starts, stops and stores the profiles of single requests."""

    def __init__(self, mw: PerfMiddleware, store: ProfileStore) -> None:
        cfg = mw.config
        self._mw = mw
        self.store = store
        self.engine: Engine = engine_for(cfg.engine, cfg.profile_interval_ms, cfg.yappi_clock)
        self.max_concurrent = cfg.max_concurrent_profiles
        self.sample_rate = cfg.sample_rate
        self.active = 0
        self.profiled = 0
        self.skipped = 0
        self.failed = 0
        # Set by the window manager: no request profiles while a window runs.
        self.paused: Callable[[], bool] = lambda: False

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request through the middleware, profiled when allowed."""
        mw = self._mw
        on_demand = PROFILE_HEADER in scope["headers"]
        if on_demand and await mw.gate.check(scope) is not None:
            # Not allowed to ask: treated like any other request, which the
            # sampler may still pick.
            on_demand = False
            if not (self.sample_rate and random.random() < self.sample_rate):
                scope[SCOPE_KEY] = ""
                await mw(scope, receive, send)
                return
        recording = self._start()
        if recording is None:
            scope[SCOPE_KEY] = ""
            await mw(scope, receive, send)
            return
        profile_id = secrets.token_hex(8)
        scope[SCOPE_KEY] = profile_id
        status = 0
        started = time.time()
        t0 = time.perf_counter()

        def tagged_send(message: Message) -> Awaitable[None]:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if on_demand:
                    headers = [
                        *message.get("headers", ()),
                        (PROFILE_ID_HEADER, profile_id.encode()),
                    ]
                    message = {**message, "headers": headers}
            return send(message)

        try:
            await mw(scope, receive, tagged_send)
        except BaseException:
            self._finish(recording, scope, profile_id, status or 500, started, t0, on_demand)
            raise
        self._finish(recording, scope, profile_id, status, started, t0, on_demand)

    def _start(self) -> Recording | None:
        if self.active >= self.max_concurrent or self.paused():
            self.skipped += 1
            return None
        try:
            recording = self.engine.start_request()
        except Exception as exc:
            self.failed += 1
            self._mw.internal_error("profile_start", exc)
            return None
        if recording is None:  # single-flight engine busy
            self.skipped += 1
            return None
        self.active += 1
        return recording

    def _finish(
        self,
        recording: Recording,
        scope: Scope,
        profile_id: str,
        status: int,
        started: float,
        t0: float,
        on_demand: bool,
    ) -> None:
        self.active -= 1
        try:
            capture = recording.stop()
        except Exception as exc:
            self.failed += 1
            self._mw.internal_error("profile_stop", exc)
            with contextlib.suppress(Exception):
                recording.abort()
            return
        try:
            duration_ms = (time.perf_counter() - t0) * 1000
            route = self._mw._key(scope)
            method, _, template = route.partition(" ")
            capture.meta.update(
                {
                    "id": profile_id,
                    "kind": "request",
                    "engine": self.engine.name,
                    "route": route,
                    "method": method if template else "",
                    "status": status,
                    "duration_ms": round(duration_ms, 3),
                    "start": started,
                    "pid": os.getpid(),
                    "tag": request_tag(scope),
                    "trigger": "header" if on_demand else "sample",
                }
            )
            keep = on_demand or status >= 500 or self._mw.over_budget(route, duration_ms)
            self.store.add(capture, keep=keep)
            self.profiled += 1
        except Exception as exc:
            self.failed += 1
            self._mw.internal_error("profile_store", exc)

    def stats(self) -> dict[str, Any]:
        return {
            "engine": self.engine.name,
            "profiled": self.profiled,
            "skipped": self.skipped,
            "failed": self.failed,
            "active": self.active,
            "max_concurrent_profiles": self.max_concurrent,
        }


def engine_for(name: str, interval_ms: float, yappi_clock: str) -> Engine:
    if name == "pyinstrument":
        return load_engine(name, interval_s=interval_ms / 1000)
    if name == "yappi":
        return load_engine(name, clock=yappi_clock)
    return load_engine(name)


def request_tag(scope: Scope) -> str | None:
    """``X-Perf-Tag``, reduced to a short, safe label."""
    for name, value in scope["headers"]:
        if name == TAG_HEADER:
            tag = _TAG_RE.sub("_", value.decode("latin-1").strip())[:_MAX_TAG]
            return tag or None
    return None
