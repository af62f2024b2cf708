"""tracemalloc on demand: the top allocators, one baseline, and a diff to find leaks.

The leak hunt: start tracing, take a baseline, let the app serve traffic,
then diff. What grew since the baseline, by line, names the line that
holds on to memory.

A snapshot copies every live trace, so on a big heap it takes seconds and
as much memory again: one baseline is held at most (a new one replaces it),
and every operation runs under one lock, taken without waiting: a call that
comes while a snapshot is being taken raises ``Busy`` at once, so requests
never pile up in the threads the app's own sync endpoints run in, and never
hold two fresh snapshots at once. Callers on an event loop run these
methods in a worker thread.
"""

from __future__ import annotations

import fnmatch
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

GroupBy = Literal["lineno", "filename", "traceback"]
GROUP_BY: tuple[GroupBy, ...] = ("lineno", "filename", "traceback")

_MB = float(1 << 20)
# tracemalloc's own work (the statistics of a snapshot are computed in
# tracemalloc.py) and this module's would otherwise top every diff.
_FILTERS = (
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, __file__),
    tracemalloc.Filter(False, "<unknown>"),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
)
# fnmatch compiles each pattern on first use and keeps it: compiled here,
# before anyone traces, or the first diff would list re's compiler as growth.
for _filter in _FILTERS:
    fnmatch.fnmatch("", _filter.filename_pattern)


class TracingError(Exception):
    """Nothing to read yet; ``advice`` says what to ask for first."""

    todo = ""

    def advice(self, prefix: str) -> str:
        return f"{self}: {self.todo.format(prefix=prefix)}"


class NotTracing(TracingError):
    """tracemalloc is off: there is nothing to read until it is started."""

    todo = "start it first with POST {prefix}/memory/tracemalloc/start?frames=1"

    def __init__(self) -> None:
        super().__init__("tracemalloc is not tracing")


class NoBaseline(TracingError):
    """A diff was asked for before any baseline was taken."""

    todo = "take one first with POST {prefix}/memory/snapshot"

    def __init__(self) -> None:
        super().__init__("no baseline to compare with")


class Busy(TracingError):
    """Another call is taking a snapshot; this one did not wait for it."""

    todo = "try again when it is done"

    def __init__(self) -> None:
        super().__init__("another tracemalloc snapshot is being taken")


class Conflict(Exception):
    """Tracing was asked to stop, but the configuration needs it."""


def _mb(nbytes: int) -> float:
    return round(nbytes / _MB, 3)


def _frames(traceback: tracemalloc.Traceback, group_by: GroupBy) -> list[dict[str, Any]]:
    # Traceback iterates oldest first: the allocating line comes last.
    by_file = group_by == "filename"  # tracemalloc says line 0 then: there is none
    return [{"file": f.filename, "line": None if by_file else f.lineno} for f in traceback]


def _site(traceback: tracemalloc.Traceback, group_by: GroupBy) -> dict[str, Any]:
    return _frames(traceback, group_by)[-1]


class LeakFinder:
    """Starts and stops tracemalloc, reads its top allocators, diffs against a baseline.

    ``configured`` says the app runs with ``tracemalloc=True``: asgi_perf
    traces from start-up for per-request memory, and ``stop`` refuses.
    """

    def __init__(self, *, configured: bool = False, max_frames: int = 100) -> None:
        self.configured = configured
        self.max_frames = max_frames
        self._lock = threading.Lock()
        self._started_here = False
        self._baseline: tracemalloc.Snapshot | None = None
        self._baseline_info: dict[str, Any] | None = None
        self._baseline_at = 0.0  # time.monotonic(), for the diff's seconds

    def status(self) -> dict[str, Any]:
        """Whether tracemalloc traces, with how many frames, who started it, the baseline."""
        with self._lock:
            return self._status()

    def start(self, frames: int) -> dict[str, Any]:
        """Start tracing with ``frames`` frames per traceback; unchanged if already on."""
        if not 1 <= frames <= self.max_frames:
            raise ValueError(f"frames must be from 1 to {self.max_frames}, got {frames}")
        with self._turn():
            started = not tracemalloc.is_tracing()
            if started:
                # A baseline from an earlier tracing session would make all
                # that was allocated since look like growth.
                self._drop_baseline()
                tracemalloc.start(frames)
                self._started_here = True
            return {**self._status(), "started": started}

    def stop(self) -> dict[str, Any]:
        """Stop tracing, whoever started it, unless the configuration needs it."""
        if self.configured:
            raise Conflict(
                "tracemalloc was started by the configuration (tracemalloc=True): "
                "per-request memory needs it, so it is not stopped over HTTP"
            )
        with self._turn():
            stopped = tracemalloc.is_tracing()
            if stopped:
                tracemalloc.stop()
            self._started_here = False
            self._drop_baseline()
            return {**self._status(), "stopped": stopped}

    def top(self, n: int, group_by: GroupBy) -> dict[str, Any]:
        """The ``n`` largest allocation sites now, largest first."""
        with self._turn():
            stats = self._snapshot().statistics(group_by)
            traced, peak = tracemalloc.get_traced_memory()
        return {
            "schema": 1,
            "group_by": group_by,
            "traced_mb": _mb(traced),
            "peak_mb": _mb(peak),
            "total_mb": _mb(sum(s.size for s in stats)),
            "count": len(stats),
            "stats": [
                {
                    **_site(s.traceback, group_by),
                    "size_bytes": s.size,
                    "size_mb": _mb(s.size),
                    "count": s.count,
                    "traceback": _frames(s.traceback, group_by),
                }
                for s in stats[:n]
            ],
        }

    def baseline(self) -> dict[str, Any]:
        """Take the baseline the next diffs compare with; it replaces the last one."""
        with self._turn():
            # Released first: the old and the new never have to fit at once.
            self._drop_baseline()
            snapshot = self._snapshot()
            traced, _ = tracemalloc.get_traced_memory()
            self._baseline = snapshot
            self._baseline_at = time.monotonic()
            self._baseline_info = {
                "at": round(time.time(), 3),
                "traced_mb": _mb(traced),
                "traces": len(snapshot.traces),
            }
            return dict(self._baseline_info)

    def diff(self, n: int, group_by: GroupBy) -> dict[str, Any]:
        """What grew since the baseline: the ``n`` largest growths, largest first."""
        with self._turn():
            self._require_tracing()
            if self._baseline is None or self._baseline_info is None:
                raise NoBaseline()
            snapshot = self._snapshot()
            stats = snapshot.compare_to(self._baseline, group_by)
            since = self._baseline_info["at"]
            seconds = time.monotonic() - self._baseline_at
        stats.sort(key=lambda s: s.size_diff, reverse=True)
        return {
            "schema": 1,
            "group_by": group_by,
            "since": since,
            "seconds": round(seconds, 3),
            "growth_mb": _mb(sum(s.size_diff for s in stats)),
            "stats": [
                {
                    **_site(s.traceback, group_by),
                    "size_diff_bytes": s.size_diff,
                    "size_diff_mb": _mb(s.size_diff),
                    "size_bytes": s.size,
                    "size_mb": _mb(s.size),
                    "count_diff": s.count_diff,
                    "count": s.count,
                    "traceback": _frames(s.traceback, group_by),
                }
                for s in stats[:n]
            ],
        }

    @contextmanager
    def _turn(self) -> Iterator[None]:
        if not self._lock.acquire(blocking=False):
            raise Busy()
        try:
            yield
        finally:
            self._lock.release()

    def _snapshot(self) -> tracemalloc.Snapshot:
        """A filtered snapshot; the lock is held."""
        self._require_tracing()
        try:
            snapshot = tracemalloc.take_snapshot()
        except RuntimeError:  # stopped by another thread since the check
            self._forget()
            raise NotTracing() from None
        return snapshot.filter_traces(_FILTERS)

    def _require_tracing(self) -> None:
        if not tracemalloc.is_tracing():
            self._forget()
            raise NotTracing()

    def _status(self) -> dict[str, Any]:
        tracing = tracemalloc.is_tracing()
        if not tracing:
            self._forget()
        traced, peak = tracemalloc.get_traced_memory()
        started_by: str | None = None
        if tracing:
            started_by = "config" if self.configured else "api" if self._started_here else "other"
        return {
            "tracing": tracing,
            "frames": tracemalloc.get_traceback_limit() if tracing else 0,
            "traced_mb": _mb(traced),
            "peak_mb": _mb(peak),
            "started_by": started_by,
            "baseline": None if self._baseline_info is None else dict(self._baseline_info),
        }

    def _forget(self) -> None:
        """Tracing is off (someone stopped it): what was started here and kept is gone."""
        self._started_here = False
        self._drop_baseline()

    def _drop_baseline(self) -> None:
        self._baseline = None
        self._baseline_info = None
