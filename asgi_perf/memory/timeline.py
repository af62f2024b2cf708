"""The process timeline: the soak view, one point every ``interval_s``.

The background thread calls ``tick``; a point is RSS, VMS, USS (where the
kernel sums it cheaply: ``smaps_rollup``), open fds, threads, open inet
connections, GC collections per generation and requests so far. Points
are kept in a bounded deque; the oldest leave first.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import io
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

import psutil

from asgi_perf.memory.trend import Trend, trend

_MB = float(1 << 20)
# The seed's soak columns first, in its order; then the rest.
CSV_COLUMNS = (
    "elapsed_min", "rss_mb", "vms_mb", "connections", "uss_mb", "fds", "threads",
    "gc0", "gc1", "gc2", "requests", "timestamp",
)  # fmt: skip


class Point(NamedTuple):
    """One reading of the process (a tuple: 720 of them stay small)."""

    timestamp: float  # time.time()
    elapsed_s: float  # since the timeline started (or was cleared)
    rss_mb: float
    vms_mb: float
    uss_mb: float | None
    fds: int | None
    threads: int
    connections: int | None
    gc: tuple[int, ...]  # collections per generation
    requests: int

    def to_json(self) -> dict[str, Any]:
        return {
            "timestamp": round(self.timestamp, 3),
            "elapsed_min": round(self.elapsed_s / 60, 4),
            "rss_mb": self.rss_mb,
            "vms_mb": self.vms_mb,
            "uss_mb": self.uss_mb,
            "fds": self.fds,
            "threads": self.threads,
            "connections": self.connections,
            "gc_collections": list(self.gc),
            "requests": self.requests,
        }

    def csv_row(self) -> list[Any]:
        gens = [*self.gc, 0, 0, 0][:3]
        return [
            round(self.elapsed_s / 60, 4), self.rss_mb, self.vms_mb,
            "" if self.connections is None else self.connections,
            "" if self.uss_mb is None else self.uss_mb,
            "" if self.fds is None else self.fds,
            self.threads, *gens, self.requests, round(self.timestamp, 3),
        ]  # fmt: skip


class Timeline:
    """Bounded points of the process, taken every ``interval_s`` by ``tick``."""

    def __init__(
        self,
        interval_s: float,
        max_points: int,
        requests: Callable[[], int],
        on_error: Callable[[str, BaseException], None],
    ) -> None:
        self.interval_s = interval_s
        self.max_points = max_points
        self._requests = requests
        self._on_error = on_error
        self._points: deque[Point] = deque(maxlen=max_points)
        self._lock = threading.Lock()
        self._process = psutil.Process()
        self._started = time.monotonic()
        self._next = 0.0
        # False once a point fell off the front: the warm-up is gone with it.
        self.from_start = True
        self.peak_rss_mb = 0.0
        self.cpu_s = 0.0  # the thread's CPU spent on points

    def tick(self, now: float) -> None:
        """On the background thread: take a point when one is due."""
        if now < self._next:
            return
        self._next = now + self.interval_s
        cpu = time.thread_time()
        try:
            self.add(self.sample())
        except Exception as exc:  # psutil on an odd platform: no point, no crash
            self._on_error("memory_timeline", exc)
        self.cpu_s += time.thread_time() - cpu

    def add(self, point: Point) -> None:
        with self._lock:
            points = self._points
            if len(points) == points.maxlen:
                self.from_start = False
            points.append(point)
            self.peak_rss_mb = max(self.peak_rss_mb, point.rss_mb)

    def sample(self) -> Point:
        """A point of the process now (not kept)."""
        p = self._process
        with p.oneshot():
            info = p.memory_info()
            uss: float | None = None
            # No smaps here, or not allowed to read it: no USS.
            with contextlib.suppress(psutil.Error, AttributeError, OSError):
                uss = round(p.memory_full_info().uss / _MB, 3)
            fds = p.num_fds() if hasattr(p, "num_fds") else None
            threads = p.num_threads()
        try:
            connections: int | None = len(p.net_connections(kind="inet"))
        except (psutil.Error, OSError):
            connections = None
        return Point(
            timestamp=time.time(),
            elapsed_s=time.monotonic() - self._started,
            rss_mb=round(info.rss / _MB, 3),
            vms_mb=round(info.vms / _MB, 3),
            uss_mb=uss,
            fds=fds,
            threads=threads,
            connections=connections,
            gc=tuple(int(s["collections"]) for s in gc.get_stats()),
            requests=self._requests(),
        )

    def points(self) -> list[Point]:
        with self._lock:
            return list(self._points)

    def trend(self) -> Trend:
        points = self.points()
        return trend(
            [p.elapsed_s for p in points], [p.rss_mb for p in points], from_start=self.from_start
        )

    def clear(self) -> None:
        """Start over (``POST /reset``): the next points are a new soak."""
        with self._lock:
            self._points.clear()
            self._started = time.monotonic()
            self._next = 0.0
            self.from_start = True
            self.peak_rss_mb = 0.0

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        writer.writerows(p.csv_row() for p in self.points())
        return out.getvalue()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            n = len(self._points)
        return {
            "interval_s": self.interval_s,
            "points": n,
            "max_points": self.max_points,
            "cpu_s": round(self.cpu_s, 4),
        }
