"""What the process knows about its memory: readings, the route schedule, the timeline.

``ProcessMemory`` is built once by the core. The background thread calls
``tick`` (an RSS reading for the requests' starts; a timeline point when
one is due); the middleware asks ``routes`` what a request grew; the
``/_perf`` app and the snapshot read ``summary`` and ``report``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from asgi_perf.memory.routes import RouteMemory
from asgi_perf.memory.rss import RSSHistory, process_memory, read_rss
from asgi_perf.memory.timeline import Timeline
from asgi_perf.memory.trend import Trend

_perf_counter_ns = time.perf_counter_ns


class ProcessMemory:
    """RSS readings, per-route measurement schedule and the process timeline."""

    def __init__(
        self,
        *,
        interval_s: float,
        max_points: int,
        first: int,
        every: int,
        max_keys: int,
        requests: Callable[[], int],
        on_error: Callable[[str, BaseException], None],
    ) -> None:
        self.history = RSSHistory()
        self.routes = RouteMemory(self.history, first=first, every=every, max_keys=max_keys)
        self.timeline: Timeline | None = None
        if interval_s > 0:
            self.timeline = Timeline(interval_s, max_points, requests, on_error)
        self._on_error = on_error
        self._trend: tuple[tuple[int, float], Trend] | None = None
        self.cpu_s = 0.0
        self._started = time.monotonic()
        # A server that sends no lifespan events starts the thread only at
        # the end of its first request: this reading is the one before it.
        self.history.note(_perf_counter_ns(), read_rss())

    def start(self) -> None:
        """A first reading, so the very first requests have one from before them."""
        self.tick(time.perf_counter())

    def tick(self, now: float) -> None:
        """On the background thread, every tick (10 to 50 a second)."""
        cpu = time.thread_time()
        try:
            self.history.note(_perf_counter_ns(), read_rss())
        except OSError as exc:
            self._on_error("memory", exc)
        if self.timeline is not None:
            self.timeline.tick(now)
        # What the readings and points cost the thread (its wake-ups are
        # the loop monitor's, or the sampler's, and counted there).
        self.cpu_s += time.thread_time() - cpu

    def trend(self) -> Trend | None:
        """The timeline's trend, computed once per new point."""
        timeline = self.timeline
        if timeline is None:
            return None
        points = timeline.points()
        key = (len(points), points[-1].timestamp if points else 0.0)
        cached = self._trend
        if cached is not None and cached[0] == key:
            return cached[1]
        found = timeline.trend()
        self._trend = (key, found)
        return found

    def summary(self) -> dict[str, Any]:
        """The process part of a snapshot: now, the peak and the trend."""
        out = process_memory()
        timeline = self.timeline
        found = self.trend()
        if timeline is not None and found is not None:
            out["peak_rss_mb"] = round(max(timeline.peak_rss_mb, out.get("rss_mb", 0.0)), 3)
            out["slope_mb_per_h"] = found.to_json()["slope_mb_per_h"]
            out["trend"] = found.trend
            out["trend_points"] = found.points
        else:
            out["peak_rss_mb"] = out.get("rss_mb", 0.0)
            out["slope_mb_per_h"] = None
            out["trend"] = None
            out["trend_points"] = 0
        return out

    def report(self) -> dict[str, Any]:
        """``GET {prefix}/memory``: now, the trend, the timeline's shape."""
        timeline = self.timeline
        found = self.trend()
        now = timeline.sample().to_json() if timeline is not None else process_memory()
        out: dict[str, Any] = {
            "schema": 1,
            "pid": os.getpid(),
            "now": now,
            "timeline": None if timeline is None else timeline.stats(),
            # CPU of the RSS readings and timeline points, per second alive.
            "cpu_s": round(self.cpu_s, 4),
            "cpu_share": round(self.cpu_s / max(time.monotonic() - self._started, 1e-9), 6),
        }
        if found is not None and timeline is not None:
            out.update(found.to_json())
            out["peak_rss_mb"] = round(max(timeline.peak_rss_mb, now.get("rss_mb", 0.0)), 3)
        else:
            out.update({"slope_mb_per_h": None, "trend": "flat", "points": 0})
            out["reason"] = "the timeline is off (memory_interval_s=0)"
            out["peak_rss_mb"] = now.get("rss_mb")
        return out

    def clear(self) -> None:
        """``POST /reset``: routes are measured from their first requests again;
        the timeline starts a new soak."""
        self.routes.clear()
        if self.timeline is not None:
            self.timeline.clear()
        self._trend = None
