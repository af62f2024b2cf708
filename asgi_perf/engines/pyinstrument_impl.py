"""pyinstrument: statistical; ``async_mode="strict"`` keeps requests apart."""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Iterable
from itertools import groupby
from operator import itemgetter
from typing import Any

from pyinstrument import Profiler
from pyinstrument.session import Session

from asgi_perf.capture import Capture, FrameId, Stack
from asgi_perf.engines._stacks import app_start
from asgi_perf.engines.base import Capabilities

_FRAME_CACHE_MAX = 65_536
# pyinstrument's frame record: frame identifiers root first, and seconds.
FrameRecord = tuple[list[str], float]


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
        if self._trim:
            session.frame_records = request_records(session.frame_records)
        stacks = session_stacks(session)
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


def request_records(records: Iterable[FrameRecord]) -> list[FrameRecord]:
    """A request's frame records cut to the app's part, runs of one stack merged.

    pyinstrument records a sample every interval for the whole life of a
    request, awaits included, each naming every frame of the thread (the
    server and the event loop above the app too): a one-second wait while
    other requests ran was a thousand copies of one 40-frame stack, 5 KB
    each. Cut the way the stacks are cut, and with a run of equal records
    made one (the same call tree, the same timeline), a request's session
    grows with the work the request did, not with how long it waited.
    """
    cache: dict[str, FrameId] = {}
    out: list[FrameRecord] = []
    # groupby compares the lists in C: this runs in the event loop while
    # other requests are still sampled, and a wait is thousands of records.
    for identifiers, run in groupby(records, key=itemgetter(0)):
        seconds = math.fsum(map(itemgetter(1), run))
        app = identifiers[app_start(tuple(_frame(i, cache) for i in identifiers)) :]
        if not app:
            continue
        if out and out[-1][0] == app:
            out[-1] = (app, out[-1][1] + seconds)
        else:
            out.append((app, seconds))
        if len(cache) > _FRAME_CACHE_MAX:
            cache.clear()
    return out


def session_stacks(session: Session) -> dict[Stack, float]:
    """Seconds per full stack from a pyinstrument session's frame records."""
    cache: dict[str, FrameId] = {}
    stacks: dict[Stack, float] = {}
    for identifiers, seconds in session.frame_records:
        stack = tuple(_frame(i, cache) for i in identifiers)
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
