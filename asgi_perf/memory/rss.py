"""Process memory: a cheap RSS read, the recent readings, a fuller view for snapshots."""

from __future__ import annotations

import os
import threading
import time
import tracemalloc
from collections import deque
from typing import Any

import psutil

_MB = float(1 << 20)


class RSSReader:
    """Resident set size in bytes.

    On Linux one ``pread`` of ``/proc/self/statm`` on a descriptor kept open
    (about 1.5 µs, most of it in the kernel); elsewhere psutil. The
    descriptor is reopened in a forked child, whose ``/proc/self`` differs.
    """

    def __init__(self) -> None:
        self._fd = -1
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._process = psutil.Process()
        self._lock = threading.Lock()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._forget)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def _forget(self) -> None:
        self._fd = -1
        self._process = psutil.Process()

    def __call__(self) -> int:
        fd = self._fd
        if fd < 0:
            fd = self._open()
            if fd < 0:
                return int(self._process.memory_info().rss)
        return int(os.pread(fd, 64, 0).split(None, 2)[1]) * self._page

    def _open(self) -> int:
        with self._lock:
            if self._fd < 0:
                try:
                    self._fd = os.open("/proc/self/statm", os.O_RDONLY)
                except OSError:
                    return -1
            return self._fd


class RSSHistory:
    """Recent RSS readings, so a request's growth needs no reading at its start.

    The route of a request is known only after the app ran, so whether to
    measure it is decided at its end. Its starting RSS is then the last
    reading taken before it began: the background thread reads every tick
    (``note``), and each measured request's end reading counts too
    (``latest``). A reading older than the request by one tick makes the
    number noisier under concurrency, which per-request RSS already is.
    """

    def __init__(self, size: int = 512) -> None:
        # (perf_counter_ns, rss bytes); appended by the background thread.
        self._ticks: deque[tuple[int, int]] = deque(maxlen=size)
        self._latest: tuple[int, int] = (0, 0)

    def note(self, at_ns: int, rss: int) -> None:
        """A reading from the background thread (in time order)."""
        self._ticks.append((at_ns, rss))

    def read(self) -> int:
        """RSS now; remembered as the latest reading."""
        at_ns = time.perf_counter_ns()
        rss = read_rss()
        self._latest = (at_ns, rss)
        return rss

    def before(self, at_ns: int) -> int | None:
        """The newest reading taken at or before ``at_ns``; None if none is kept."""
        found: tuple[int, int] | None = None
        ticks = self._ticks
        # Negative indices from the newest end: the other thread only appends
        # there, so a concurrent append shifts nothing still to be read.
        i = -1
        try:
            while True:
                tick = ticks[i]
                if tick[0] <= at_ns:
                    found = tick
                    break
                i -= 1
        except IndexError:
            pass
        latest = self._latest
        if latest[0] and latest[0] <= at_ns and (found is None or latest[0] > found[0]):
            found = latest
        return None if found is None else found[1]

    def clear(self) -> None:
        self._ticks.clear()
        self._latest = (0, 0)


def traced_start() -> int:
    """Start a tracemalloc measurement; returns the traced bytes at the start.

    ``reset_peak`` is process-wide, so concurrent requests blur each other's
    peaks: the numbers are labelled as such.
    """
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    return current


def traced_growth(start: int) -> int:
    """Peak traced bytes above ``start`` since ``traced_start``."""
    _, peak = tracemalloc.get_traced_memory()
    return max(peak - start, 0)


def process_memory(process: psutil.Process | None = None) -> dict[str, Any]:
    """RSS and VMS in MB, threads, open fds: the process part of a snapshot."""
    p = process or psutil.Process()
    out: dict[str, Any] = {"pid": p.pid}
    try:
        with p.oneshot():
            info = p.memory_info()
            out["rss_mb"] = round(info.rss / _MB, 3)
            out["vms_mb"] = round(info.vms / _MB, 3)
            out["threads"] = p.num_threads()
            if hasattr(p, "num_fds"):
                out["fds"] = p.num_fds()
    except psutil.Error:
        out.setdefault("rss_mb", 0.0)
    return out


# One descriptor for the whole process: every middleware instance shares it,
# and the fork hook it registers is registered once.
read_rss = RSSReader()
