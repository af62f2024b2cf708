"""cProfile: the standard library's; one per interpreter, so single-flight.

cProfile sees the thread that enabled it, all of it: a request's profile
includes whatever other requests ran on the event loop meanwhile. From
Python 3.12 cProfile hooks through ``sys.monitoring``, which is
process-wide: other threads' calls land in the profile too. It is here for
its exact call counts and because it needs nothing installed.
"""

from __future__ import annotations

import cProfile
import sys
import threading
import time
from typing import Any

from asgi_perf.capture import Capture, PstatsDict, pstats_to_stacks
from asgi_perf.engines._stacks import trim_all
from asgi_perf.engines.base import Capabilities


class CProfileEngine:
    name = "cprofile"
    capabilities = Capabilities(async_aware=False, threads=False, clock="wall", exact_stacks=False)

    def __init__(self) -> None:
        self._busy = threading.Lock()

    def start_request(self) -> _CProfileRecording | None:
        return self._start(trim=True)

    def start_window(self, interval_s: float) -> _CProfileRecording | None:
        return self._start(trim=False)

    def _start(self, *, trim: bool) -> _CProfileRecording | None:
        if not self._busy.acquire(blocking=False):
            return None
        try:
            return _CProfileRecording(self._busy, trim=trim)
        except Exception:
            self._busy.release()
            raise


class _CProfileRecording:
    def __init__(self, busy: threading.Lock, *, trim: bool) -> None:
        self._busy = busy
        self._trim = trim
        self._profile = cProfile.Profile()
        self._started = time.perf_counter()
        self._profile.enable()
        self._done = False

    def stop(self) -> Capture:
        try:
            self._profile.disable()
            self._profile.create_stats()
            raw: Any = self._profile.stats
            stats: PstatsDict = dict(raw)
        finally:
            self._release()
        stacks = pstats_to_stacks(stats)
        if self._trim:
            stacks = trim_all(stacks)
        return Capture(
            engine="cprofile",
            stacks=stacks,
            duration_s=time.perf_counter() - self._started,
            pstats=stats,
            exact_stacks=False,
        )

    def abort(self) -> None:
        if not self._done:
            self._profile.disable()
            self._release()

    def _release(self) -> None:
        if not self._done:
            self._done = True
            self._busy.release()


def release_hook() -> None:
    """Free the ``sys.monitoring`` tool id a cProfile left enabled still holds.

    From Python 3.12 cProfile hooks through ``sys.monitoring`` (its PROFILER
    tool id), not ``sys.setprofile``: ``sys.setprofile(None)`` does not
    remove it, and while the id is held every later cProfile fails to start
    ("Another profiling tool is already active"). For when a recording could
    be neither stopped nor aborted; a no-op before 3.12, or when the id is
    free or held by a tool other than cProfile.
    """
    monitoring: Any = getattr(sys, "monitoring", None)
    if monitoring is None:
        return
    tool = monitoring.PROFILER_ID
    if monitoring.get_tool(tool) != "cProfile":
        return
    monitoring.set_events(tool, 0)
    for name in dir(monitoring.events):
        event = getattr(monitoring.events, name)
        if name.isupper() and isinstance(event, int) and event and event & (event - 1) == 0:
            monitoring.register_callback(tool, event, None)
    monitoring.free_tool_id(tool)
