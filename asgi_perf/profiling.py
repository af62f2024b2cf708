"""Per-request profiles: which requests, with which engine, and what is kept.

The middleware asks ``start`` only for a request that wants a profile
(``X-Perf-Profile: 1``) or was sampled (``sample_rate``); everything else
never reaches this module. The request is timed and served once, by the
middleware, between ``start`` and ``finish``. A failure here is logged,
counted and dropped: the request is always served.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from asgi_perf._types import Message, Scope, Send
from asgi_perf.engines import Engine, Recording, load_engine
from asgi_perf.storage import ProfileStore

PROFILE_HEADER = (b"x-perf-profile", b"1")
PROFILE_ID_HEADER = b"x-perf-profile-id"
TAG_HEADER = b"x-perf-tag"
_TAG_RE = re.compile(r"[^A-Za-z0-9._:/@=+-]")
_MAX_TAG = 64

OnError = Callable[[str, BaseException], None]


@dataclass(slots=True)
class Ticket:
    """One request being profiled: its recording and what names it."""

    recording: Recording
    id: str
    on_demand: bool
    started: float

    def announcing(self, send: Send) -> Send:
        """``send`` that adds ``X-Perf-Profile-Id`` to the response's headers."""
        header = (PROFILE_ID_HEADER, self.id.encode())

        def announce(message: Message) -> Awaitable[None]:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), header]}
            return send(message)

        return announce


class RequestProfiler:
    """Starts, stops and stores the profiles of single requests."""

    def __init__(
        self,
        engine: Engine,
        store: ProfileStore,
        *,
        max_concurrent: int,
        over_budget: Callable[[str, float], bool],
        on_error: OnError,
    ) -> None:
        self.engine = engine
        self.store = store
        self.max_concurrent = max_concurrent
        self._over_budget = over_budget
        self._on_error = on_error
        self.active = 0
        self.profiled = 0
        self.skipped = 0
        self.failed = 0
        # Set by the core: no request profiles while a window runs.
        self.paused: Callable[[], bool] = lambda: False

    def start(self, on_demand: bool) -> Ticket | None:
        """Start profiling a request, or None when it must go unprofiled."""
        if self.active >= self.max_concurrent or self.paused():
            self.skipped += 1
            return None
        try:
            recording = self.engine.start_request()
        except Exception as exc:
            self.failed += 1
            self._on_error("profile_start", exc)
            return None
        if recording is None:  # single-flight engine busy
            self.skipped += 1
            return None
        self.active += 1
        return Ticket(recording, secrets.token_hex(8), on_demand, time.time())

    def finish(
        self, ticket: Ticket, route: str, status: int, duration_ms: float, tag: str | None
    ) -> None:
        """Stop the recording and store its profile (kept when it matters)."""
        self.active -= 1
        try:
            capture = ticket.recording.stop()
        except Exception as exc:
            self.failed += 1
            self._on_error("profile_stop", exc)
            with contextlib.suppress(Exception):
                ticket.recording.abort()
            return
        try:
            method, _, template = route.partition(" ")
            capture.meta.update(
                {
                    "id": ticket.id,
                    "kind": "request",
                    "engine": self.engine.name,
                    "route": route,
                    "method": method if template else "",
                    "status": status,
                    "duration_ms": round(duration_ms, 3),
                    "start": ticket.started,
                    "pid": os.getpid(),
                    "tag": tag,
                    "trigger": "header" if ticket.on_demand else "sample",
                }
            )
            keep = ticket.on_demand or status >= 500 or self._over_budget(route, duration_ms)
            self.store.add(capture, keep=keep)
            self.profiled += 1
        except Exception as exc:
            self.failed += 1
            self._on_error("profile_store", exc)

    def stats(self) -> dict[str, object]:
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
