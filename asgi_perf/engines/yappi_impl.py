"""yappi: deterministic, every thread; requests told apart by a contextvar tag.

yappi is one profiler per process. Requests share one running session:
each request sets a fresh tag in its context (copied into the threadpool
and into tasks it spawns), and its profile is the stats filtered by that
tag. The session stops and its stats are cleared when no request needs it.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import threading
import time
from typing import Any

import yappi  # type: ignore[import-untyped]

from asgi_perf.capture import Capture, PstatsDict, pstats_to_stacks
from asgi_perf.engines._stacks import trim_all
from asgi_perf.engines.base import Capabilities

_tag: contextvars.ContextVar[int] = contextvars.ContextVar("asgi_perf_yappi_tag", default=0)
_tags = itertools.count(1)


def _current_tag() -> int:
    return _tag.get()


class YappiEngine:
    name = "yappi"

    def __init__(self, clock: str = "wall") -> None:
        if clock not in ("wall", "cpu"):
            raise ValueError(f"yappi clock must be 'wall' or 'cpu', got {clock!r}")
        self.clock = clock
        self.capabilities = Capabilities(
            async_aware=True, threads=True, clock=clock, exact_stacks=False
        )
        self._lock = threading.Lock()
        self._requests = 0
        self._window = False

    def start_request(self) -> _YappiRequest | None:
        with self._lock:
            if self._window:
                return None
            if self._requests == 0:
                _start(self.clock)
            self._requests += 1
        return _YappiRequest(self)

    def start_window(self, interval_s: float) -> _YappiWindow | None:
        with self._lock:
            if self._window or self._requests:
                return None
            self._window = True
            _start(self.clock)
        return _YappiWindow(self)

    def _release_request(self) -> None:
        with self._lock:
            self._requests -= 1
            if self._requests == 0 and not self._window:
                yappi.stop()
                yappi.clear_stats()

    def _release_window(self) -> None:
        with self._lock:
            self._window = False
            yappi.stop()
            yappi.clear_stats()


def _start(clock: str) -> None:
    yappi.clear_stats()
    yappi.set_clock_type(clock)
    yappi.set_tag_callback(_current_tag)
    yappi.start(builtins=False, profile_threads=True)


class _YappiRequest:
    def __init__(self, engine: YappiEngine) -> None:
        self._engine = engine
        self._tag = next(_tags)
        self._token: contextvars.Token[int] | None = _tag.set(self._tag)
        self._started = time.perf_counter()
        self._done = False

    def stop(self) -> Capture:
        try:
            stats = _pstats(yappi.get_func_stats(filter={"tag": self._tag}))
        finally:
            self._finish()
        return Capture(
            engine="yappi",
            stacks=trim_all(pstats_to_stacks(stats)),
            duration_s=time.perf_counter() - self._started,
            pstats=stats,
            exact_stacks=False,
            meta={"clock": self._engine.clock},
        )

    def abort(self) -> None:
        self._finish()

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        if self._token is not None:
            # Stopped from another context: the tag dies with that context.
            with contextlib.suppress(ValueError):
                _tag.reset(self._token)
            self._token = None
        self._engine._release_request()


class _YappiWindow:
    def __init__(self, engine: YappiEngine) -> None:
        self._engine = engine
        self._started = time.perf_counter()
        self._done = False

    def stop(self) -> Capture:
        try:
            stats = _pstats(yappi.get_func_stats())
            threads = len(yappi.get_thread_stats())
        finally:
            self.abort()
        return Capture(
            engine="yappi",
            stacks=pstats_to_stacks(stats),
            duration_s=time.perf_counter() - self._started,
            pstats=stats,
            exact_stacks=False,
            meta={"clock": self._engine.clock, "threads": threads},
        )

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self._engine._release_window()


def _pstats(func_stats: Any) -> PstatsDict:
    if func_stats.empty():
        return {}
    stats: PstatsDict = yappi.convert2pstats(func_stats).stats
    return stats
