"""Time windows: profile the whole process for a while, one window at a time.

A window is started by ``GET {prefix}/profile?seconds=N`` (which waits and
answers with the file, like Go's pprof), by ``POST {prefix}/windows`` (which
returns at once; ``/windows/{id}/stop`` or the time limit ends it), or by
``lifespan_profile`` (start-up to shutdown). While a window runs, requests
are not profiled one by one: profilers never nest.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from asgi_perf.capture import Capture, ProfileMeta
from asgi_perf.engines import WINDOW_ONLY, Engine, Recording
from asgi_perf.engines.cprofile_impl import release_hook
from asgi_perf.errors import EngineUnavailable
from asgi_perf.storage import ProfileStore

_IDLE_WAIT_S = 5.0
# How often a window whose recording watches a budget (yappi's leak) asks it.
WATCH_S = 1.0
# Failed windows remembered, so a late stop is told what happened, not 404.
_FAILURES_KEPT = 32

WindowKind = Literal["window", "lifespan"]


class WindowBusy(Exception):
    """Another window is running; says which and when it ends."""

    def __init__(self, window: Window) -> None:
        super().__init__(f"window {window.id} is running")
        self.window = window


class EngineBusy(Exception):
    """The engine cannot start now (single-flight, or busy with requests)."""


class WindowFailed(Exception):
    """The engine failed to start or to end a window: nothing runs, the failure is counted."""

    def __init__(self, window_id: str | None, engine: str, message: str) -> None:
        super().__init__(message)
        self.window_id = window_id
        self.engine = engine


def unhook() -> None:
    """Remove a profiler hook that a failed engine may have left on this thread.

    A hook left behind would tax every call until restart. Only called when
    nothing else profiles: windows and request profiles never nest, and
    hooking engines start on the loop's thread, where this runs.
    """
    sys.setprofile(None)
    threading.setprofile(None)
    release_hook()  # cProfile on Python 3.12+: sys.monitoring, not setprofile


@dataclass
class Window:
    id: str
    kind: WindowKind
    engine: str
    started: float
    ends_at: float | None
    recording: Recording
    tag: str | None = None
    # The server window (of every worker) this one is this worker's part of.
    part_of: str | None = None
    stopped_early: str | None = None
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    watch: asyncio.TimerHandle | None = field(default=None, repr=False)
    # Set when the window ends, however it ends: whoever waits for it wakes.
    ended: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "engine": self.engine,
            "started": self.started,
            "ends_at": self.ends_at,
            "running": True,
            "tag": self.tag,
        }


class Windows:
    """The one running window of a process, and how it ends."""

    def __init__(
        self,
        engine: Callable[[str], Engine],
        store: ProfileStore,
        *,
        max_seconds: int,
        interval_ms: float,
        requests_active: Callable[[], int],
        on_error: Callable[[str, BaseException], None],
    ) -> None:
        self._engine = engine
        self._store = store
        self._interval_ms = interval_ms
        self._requests_active = requests_active
        self._on_error = on_error
        self.current: Window | None = None
        self.max_seconds = max_seconds
        self.completed = 0
        self.aborted = 0
        self.failed = 0
        self._failures: OrderedDict[str, WindowFailed] = OrderedDict()
        self._starting = 0
        # The last window's capture, for when the store could not keep it.
        self.last_capture: Capture | None = None

    def running(self) -> bool:
        """True while a window runs or waits to start."""
        return self.current is not None or self._starting > 0

    def hooked(self) -> bool:
        """True while a window with a profiler hook runs or waits to start.

        Hooks never nest, so request profiles wait; the sampler and py-spy
        set no hook and leave per-request profiling on.
        """
        # Only windows with a hook wait to start (start_when_idle).
        if self._starting > 0:
            return True
        return self.current is not None and self.current.engine not in WINDOW_ONLY

    async def start_when_idle(
        self, engine: str, seconds: float | None, *, tag: str | None = None, native: bool = False
    ) -> Window:
        """``start`` once no request is being profiled (profilers never nest).

        New request profiles are held off at once; the ones in flight get
        ``_IDLE_WAIT_S`` to finish, else ``EngineBusy``.
        """
        if self.current is not None:
            raise WindowBusy(self.current)
        if engine in WINDOW_ONLY:
            return self.start(engine, seconds, tag=tag, native=native)
        self._starting += 1
        try:
            deadline = time.monotonic() + _IDLE_WAIT_S
            while active := self._requests_active():
                if time.monotonic() > deadline:
                    raise EngineBusy(f"{active} request profile(s) still running; try again")
                await asyncio.sleep(0.01)
            return self.start(engine, seconds, tag=tag)
        finally:
            self._starting -= 1

    def start(
        self,
        engine: str,
        seconds: float | None,
        *,
        kind: WindowKind = "window",
        interval_ms: float | None = None,
        tag: str | None = None,
        native: bool = False,
        part_of: str | None = None,
    ) -> Window:
        """Start a window; ``seconds`` None means until stopped (lifespan)."""
        if self.current is not None:
            raise WindowBusy(self.current)
        # The sampler and py-spy keep their own rate (sampler_hz): 0 says so.
        interval_s = 0.0 if engine in WINDOW_ONLY else (interval_ms or self._interval_ms) / 1000
        try:
            found = self._engine(engine)
            # Only py-spy reads native (C) frames, and only when asked: it costs.
            recording = (
                found.start_window(interval_s, native=True)  # type: ignore[call-arg]
                if native
                else found.start_window(interval_s)
            )
        except EngineUnavailable:
            raise  # missing, refused, capped: said as it is, not a failure
        except Exception as exc:
            self._on_error("window_start", exc)
            self.failed += 1
            if engine not in WINDOW_ONLY:
                unhook()  # it may have hooked before it failed
            raise WindowFailed(
                None,
                engine,
                f"the {engine} engine failed to start ({type(exc).__name__}: {exc}); "
                "no window runs (see the server log)",
            ) from exc
        if recording is None:
            raise EngineBusy(f"engine {engine!r} is busy profiling requests; try again")
        now = time.time()
        window = Window(
            id=secrets.token_hex(8),
            kind=kind,
            engine=engine,
            started=now,
            ends_at=None if seconds is None else now + seconds,
            recording=recording,
            tag=tag,
            part_of=part_of,
        )
        self.current = window
        if seconds is not None:
            # The time limit holds even if nobody comes back to stop it.
            window.timer = asyncio.get_running_loop().call_later(seconds, self._expire, window.id)
        if hasattr(recording, "over_budget"):
            window.watch = asyncio.get_running_loop().call_later(WATCH_S, self._watch, window.id)
        return window

    def _watch(self, window_id: str) -> None:
        """Stop a window early when its recording says its budget is spent."""
        window = self.current
        if window is None or window.id != window_id:
            return
        try:
            why: str | None = window.recording.over_budget()  # type: ignore[attr-defined]
        except Exception as exc:
            self._on_error("window_watch", exc)
            why = None
        if why is None:
            window.watch = asyncio.get_running_loop().call_later(WATCH_S, self._watch, window_id)
            return
        window.stopped_early = why
        self._expire(window_id)

    def _expire(self, window_id: str) -> None:
        if self.current is not None and self.current.id == window_id:
            # A timer callback has nobody to raise to: a failure is counted
            # and remembered for whoever asks for the window next.
            with contextlib.suppress(WindowFailed):
                self.stop(window_id)

    def failure(self, window_id: str) -> WindowFailed | None:
        """How the window ``window_id`` failed, if it did (recently)."""
        return self._failures.get(window_id)

    def stop(self, window_id: str) -> ProfileMeta | None:
        """End the window and store its profile; returns its metadata."""
        capture = self.take(window_id)
        if capture is None:
            return None
        stored = self._store.add(capture, keep=True)
        if stored is None:
            # Too big for max_profile_bytes: still answered, not kept.
            return {**capture.meta, "stored": False}
        return {**self._store.meta(stored), "stored": True}

    def take(self, window_id: str) -> Capture | None:
        """End the window and hand its capture over, keeping nothing.

        ``WindowFailed`` when the engine fails: the window is aborted and
        the failure counted before it is raised.
        """
        window = self.current
        if window is None or window.id != window_id:
            return None
        self._end(window)
        try:
            capture = window.recording.stop()
        except Exception as exc:
            raise self._failed(window, exc) from exc
        ended = time.time()
        capture.meta.update(
            {
                "id": window.id,
                "kind": window.kind,
                "engine": window.engine,
                "route": "<process>",
                "method": window.kind.upper(),
                "status": None,
                "duration_ms": round((ended - window.started) * 1000, 3),
                "start": window.started,
                "pid": os.getpid(),
                "tag": window.tag,
            }
        )
        if window.stopped_early is not None:
            capture.meta["stopped_early"] = window.stopped_early
        self.completed += 1
        self.last_capture = capture
        return capture

    def _end(self, window: Window) -> None:
        self.current = None
        for timer in (window.timer, window.watch):
            if timer is not None:
                timer.cancel()
        window.ended.set()

    def _failed(self, window: Window, exc: Exception) -> WindowFailed:
        """Clean up after an engine that failed to stop; the error to raise."""
        self._on_error("window_stop", exc)
        self.failed += 1
        with contextlib.suppress(Exception):
            window.recording.abort()
        if window.engine not in WINDOW_ONLY:
            unhook()
        failed = WindowFailed(
            window.id,
            window.engine,
            f"the {window.engine} engine failed while stopping window {window.id} "
            f"({type(exc).__name__}: {exc}); the window was aborted and its profile "
            "is lost (see the server log)",
        )
        self._failures[window.id] = failed
        while len(self._failures) > _FAILURES_KEPT:
            self._failures.popitem(last=False)
        return failed

    def abort(self, window_id: str) -> None:
        """End the window and keep nothing (its client went away)."""
        window = self.current
        if window is None or window.id != window_id:
            return
        self._end(window)
        self.aborted += 1
        with contextlib.suppress(Exception):
            window.recording.abort()

    def stats(self) -> dict[str, Any]:
        return {
            "running": None if self.current is None else self.current.info(),
            "completed": self.completed,
            "aborted": self.aborted,
            "failed": self.failed,
            "max_window_seconds": self.max_seconds,
        }
