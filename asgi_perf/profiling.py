"""Per-request profiles: which requests, with which engine, and what is kept.

The middleware asks ``start`` only for a request that wants a profile
(``X-Perf-Profile: 1``) or was sampled (``sample_rate``); everything else
never reaches this module. The request is timed and served once, by the
middleware, between ``start`` and ``finish``. A failure here is logged,
counted and dropped: the request is always served.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from asgi_perf._types import Message, Scope, Send
from asgi_perf.engines import Engine, Recording, load_engine
from asgi_perf.engines.cprofile_impl import release_hook
from asgi_perf.storage import ProfileStore

PROFILE_HEADER = (b"x-perf-profile", b"1")
PROFILE_ID_HEADER = b"x-perf-profile-id"
TAG_HEADER = b"x-perf-tag"
# Where a profiled request's id is left in its scope, for the sampler's labels.
PROFILE_ID_KEY = "asgi_perf.profile_id"
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
        budget: float = 1.0,
    ) -> None:
        self.engine = engine
        self.store = store
        self.max_concurrent = max_concurrent
        self.hook_time = HookTime(budget)
        self._over_budget = over_budget
        self._on_error = on_error
        self.active = 0
        self.profiled = 0
        self.skipped = 0
        self.failed = 0
        self.skipped_budget = 0
        # An engine that leaks what it profiles (yappi on Python 3.11+) is
        # never used for sampled requests: a load test would feed it without
        # end. Requests that ask (X-Perf-Profile) still get a profile.
        self.sampling_refused: str | None = getattr(engine, "leak", None)
        self.refused = 0
        # Set by the core: no request profiles while a window runs.
        self.paused: Callable[[], bool] = lambda: False

    def start(self, on_demand: bool) -> Ticket | None:
        """Start profiling a request, or None when it must go unprofiled."""
        if not on_demand and self.sampling_refused is not None:
            self.refused += 1
            return None
        if self.active >= self.max_concurrent or self.paused():
            self.skipped += 1
            return None
        if not on_demand and not self.hook_time.allows():
            # A sampled request's hook taxes every request interleaved with
            # it: past the time budget, sampled requests wait their turn.
            self.skipped_budget += 1
            return None
        started = time.perf_counter()
        try:
            recording = self.engine.start_request()
        except Exception as exc:
            self.failed += 1
            self._on_error("profile_start", exc)
            self._unhook_if_idle()
            return None
        if recording is None:  # single-flight engine busy
            self.skipped += 1
            return None
        if self.active == 0:
            self.hook_time.on()
        self.active += 1
        self.hook_time.charge(time.perf_counter() - started)
        return Ticket(recording, secrets.token_hex(8), on_demand, time.time())

    def finish(
        self, ticket: Ticket, route: str, status: int, duration_ms: float, tag: str | None
    ) -> None:
        """Stop the recording and store its profile (kept when it matters)."""
        started = time.perf_counter()
        try:
            self._finish(ticket, route, status, duration_ms, tag)
        finally:
            # Stopping, reading and storing a profile costs the loop as much
            # as the hook did: the budget counts both.
            self.hook_time.charge(time.perf_counter() - started)

    def _finish(
        self, ticket: Ticket, route: str, status: int, duration_ms: float, tag: str | None
    ) -> None:
        self.active -= 1
        if self.active == 0:
            self.hook_time.off()
        try:
            capture = ticket.recording.stop()
        except Exception as exc:
            self.failed += 1
            self._on_error("profile_stop", exc)
            try:
                ticket.recording.abort()
            except Exception:
                self._unhook_if_idle()
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

    def _unhook_if_idle(self) -> None:
        """An engine that failed may have left its hook on this (the loop's)
        thread; with no other request profiled now, none may stay."""
        if self.active == 0:
            sys.setprofile(None)
            release_hook()  # cProfile on Python 3.12+: sys.monitoring, not setprofile

    def stats(self) -> dict[str, object]:
        return {
            "engine": self.engine.name,
            "profiled": self.profiled,
            "skipped": self.skipped,
            "failed": self.failed,
            "active": self.active,
            "max_concurrent_profiles": self.max_concurrent,
            "skipped_budget": self.skipped_budget,
            "refused": self.refused,
            "sampling_refused": self.sampling_refused,
            "profile_budget": self.hook_time.budget,
            "hook_share": round(self.hook_time.share(), 5),
        }


class HookTime:
    """The time per-request profiling has cost, against a budget.

    A token bucket in seconds: it fills at ``budget`` seconds per second of
    wall clock, up to ``_BURST_S`` worth, and empties by the time a hook is
    on (concurrent profiles count once) and the time spent starting,
    stopping and storing profiles. A new sampled profile may start while
    the bucket is not empty.
    """

    _BURST_S = 10.0

    def __init__(self, budget: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget = budget
        self._clock = clock
        self._started = self._filled_at = clock()
        self._tokens = budget * self._BURST_S
        self._on_since: float | None = None
        self.total_s = 0.0

    def allows(self) -> bool:
        if self.budget >= 1.0:
            return True
        now = self._clock()
        self._tokens = min(
            self.budget * self._BURST_S, self._tokens + (now - self._filled_at) * self.budget
        )
        self._filled_at = now
        spent = now - self._on_since if self._on_since is not None else 0.0
        return self._tokens - spent > 0

    def on(self) -> None:
        self._on_since = self._clock()

    def off(self) -> None:
        if self._on_since is not None:
            self.charge(self._clock() - self._on_since)
            self._on_since = None

    def charge(self, seconds: float) -> None:
        """Spend ``seconds`` of the budget (a hook's time, or a profile's handling)."""
        self._tokens -= seconds
        self.total_s += seconds

    def share(self) -> float:
        """The share of wall-clock time a hook has been on so far."""
        elapsed = self._clock() - self._started
        return self.total_s / elapsed if elapsed > 0 else 0.0


def engine_for(name: str, interval_ms: float, yappi_clock: str, hz: int = 100) -> Engine:
    if name == "pyinstrument":
        return load_engine(name, interval_s=interval_ms / 1000)
    if name == "yappi":
        return load_engine(name, clock=yappi_clock)
    if name == "pyspy":
        return load_engine(name, rate_hz=hz)
    return load_engine(name)


def request_tag(scope: Scope) -> str | None:
    """``X-Perf-Tag``, reduced to a short, safe label."""
    for name, value in scope["headers"]:
        if name == TAG_HEADER:
            tag = _TAG_RE.sub("_", value.decode("latin-1").strip())[:_MAX_TAG]
            return tag or None
    return None
