"""cProfile: the standard library's; one per interpreter, so single-flight.

cProfile sees the thread that enabled it, all of it: a request's profile
includes whatever other requests ran on the event loop meanwhile. It is
here for its exact call counts and because it needs nothing installed.
"""

from __future__ import annotations

import cProfile
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
