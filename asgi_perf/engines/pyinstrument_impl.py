"""pyinstrument: statistical; ``async_mode="strict"`` keeps requests apart."""

from __future__ import annotations

import inspect
import time
from typing import Any

from pyinstrument import Profiler
from pyinstrument.session import Session

from asgi_perf.capture import Capture, FrameId, Stack
from asgi_perf.engines._stacks import trim_to_app
from asgi_perf.engines.base import Capabilities

_FRAME_CACHE_MAX = 65_536


class PyinstrumentEngine:
    name = "pyinstrument"
    capabilities = Capabilities(async_aware=True, threads=False, clock="wall", exact_stacks=True)

    def __init__(self, interval_s: float = 0.001) -> None:
        self.interval_s = interval_s

    def start_request(self) -> _PyinstrumentRecording:
        # strict: samples only while this request's own context runs, so a
        # concurrent request's work never lands in this profile.
        return _PyinstrumentRecording(self.interval_s, "strict", trim=True)

    def start_window(self, interval_s: float) -> _PyinstrumentRecording:
        # disabled: the whole event loop thread, whatever task runs.
        return _PyinstrumentRecording(interval_s, "disabled", trim=False)


class _PyinstrumentRecording:
    def __init__(self, interval_s: float, async_mode: Any, *, trim: bool) -> None:
        self._profiler = Profiler(interval=interval_s, async_mode=async_mode)
        self._trim = trim
        self._started = time.perf_counter()
        self._profiler.start(caller_frame=inspect.currentframe(), target_description="asgi_perf")

    def stop(self) -> Capture:
        session = self._profiler.stop()
        duration = time.perf_counter() - self._started
        stacks = session_stacks(session, trim=self._trim)
        # The viewer's own data, kept for requests only: a long window's
        # session holds every sample and is rebuilt from the stacks instead.
        return Capture(
            engine="pyinstrument",
            stacks=stacks,
            duration_s=duration,
            session=session.to_json() if self._trim else None,
            meta={"interval_s": session.min_interval, "samples": session.sample_count},
        )

    def abort(self) -> None:
        if self._profiler.is_running:
            self._profiler.stop()


def session_stacks(session: Session, *, trim: bool) -> dict[Stack, float]:
    """Seconds per full stack from a pyinstrument session's frame records."""
    cache: dict[str, FrameId] = {}
    stacks: dict[Stack, float] = {}
    for identifiers, seconds in session.frame_records:
        stack = tuple(_frame(i, cache) for i in identifiers)
        if trim:
            stack = trim_to_app(stack)
        if stack:
            stacks[stack] = stacks.get(stack, 0.0) + seconds
        if len(cache) > _FRAME_CACHE_MAX:
            cache.clear()
    return stacks


def _frame(identifier: str, cache: dict[str, FrameId]) -> FrameId:
    """``func\\x00file\\x00line`` plus ``\\x01c<class>`` / ``\\x01l<line>`` markers."""
    hit = cache.get(identifier)
    if hit is not None:
        return hit
    base, *markers = identifier.split("\x01")
    parts = base.split("\x00")
    function = parts[0]
    file = parts[1] if len(parts) > 1 else ""
    line = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 0
    if file == "<thread>":
        line = 0  # the thread id; not a place in code
    for marker in markers:
        if marker.startswith("c") and len(marker) > 1:
            function = f"{marker[1:]}.{function}"
    frame = cache[identifier] = FrameId(function, file, line)
    return frame
