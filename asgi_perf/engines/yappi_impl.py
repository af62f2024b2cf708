"""yappi: deterministic, every thread; requests told apart by a contextvar tag.

yappi is one profiler per process. Requests share one running session:
each request sets a fresh tag in its context (copied into the threadpool
and into tasks it spawns), and its profile is the stats filtered by that
tag. The session stops and its stats are cleared when no request needs it,
and at least every ``SESSION_MAX_S``: yappi keeps per-tag and per-context
tables for as long as a session runs, so a session kept open by overlapping
requests would grow without bound.

yappi up to 1.7.6 on Python 3.11+ leaks every coroutine it sees return or
suspend: ``IS_SUSPENDED`` takes a strong reference from
``PyFrame_GetGenerator`` and never drops it (sumerc/yappi#217, fixed upstream
by #218, in no release yet). The reference is a C refcount that nothing
reachable from Python holds, so neither ``clear_stats`` nor anything else
can release it: the coroutines stay alive until the process exits. A self-
test finds whether the installed yappi leaks (``leak``), and while it does,
yappi is capped rather than left to leak: sampled requests are refused (the
core never samples with it), and the estimated leak of every capture is
counted against ``leak_budget_mb``; once spent, yappi refuses to start until
restart, and a running window is stopped early (``over_budget``).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import sys
import threading
import time
from types import CodeType
from typing import Any

import yappi  # type: ignore[import-untyped]

from asgi_perf.capture import Capture, PstatsDict, pstats_to_stacks
from asgi_perf.engines._stacks import trim_all
from asgi_perf.engines.base import Capabilities
from asgi_perf.errors import EngineUnavailable

_tag: contextvars.ContextVar[int] = contextvars.ContextVar("asgi_perf_yappi_tag", default=0)
_tags = itertools.count(1)

SESSION_MAX_S = 2.0
LEAK_BUDGET_MB = 64.0
# What one leaked coroutine costs (Python 3.11, measured with tracemalloc:
# the object with its frame's slots, and the allocator's share).
CORO_BYTES = 420
_ASYNC = 0x80 | 0x100 | 0x200  # CO_COROUTINE | CO_ITERABLE_COROUTINE | CO_ASYNC_GENERATOR


def _current_tag() -> int:
    return _tag.get()


@functools.cache
def leak_of_installed_yappi() -> str | None:
    """Why the installed yappi leaks coroutines, or None when it does not."""
    if yappi.is_running():
        # Someone else's session: cannot test without disturbing it.
        return _LEAK if sys.version_info >= (3, 11) else None

    async def probe() -> None:
        return None

    coro = probe()
    before = sys.getrefcount(coro)
    yappi.clear_stats()
    yappi.start(builtins=False, profile_threads=False)
    try:
        with contextlib.suppress(StopIteration):
            coro.send(None)
    finally:
        yappi.stop()
        yappi.clear_stats()
    return _LEAK if sys.getrefcount(coro) > before else None


_LEAK = (
    "yappi leaks every coroutine it profiles on this Python (sumerc/yappi#217, fixed "
    "upstream but not in the installed release)"
)


class YappiEngine:
    name = "yappi"

    def __init__(self, clock: str = "wall", leak_budget_mb: float = LEAK_BUDGET_MB) -> None:
        if clock not in ("wall", "cpu"):
            raise ValueError(f"yappi clock must be 'wall' or 'cpu', got {clock!r}")
        self.clock = clock
        self.capabilities = Capabilities(
            async_aware=True, threads=True, clock=clock, exact_stacks=False
        )
        self._lock = threading.Lock()
        self._requests = 0
        self._window = False
        self._session_started = 0.0
        self.leak = leak_of_installed_yappi()
        self.leak_budget = int(leak_budget_mb * 2**20)
        self.leaked = 0  # estimated bytes, while ``leak``

    def refusal(self) -> str | None:
        """Why yappi will not start again in this process, if it will not."""
        if self.leak is None or self.leaked < self.leak_budget:
            return None
        return (
            f"{self.leak}: it has leaked about {self.leaked / 2**20:.0f} MB in this process, "
            f"its budget of {self.leak_budget / 2**20:.0f} MB, and stays off until restart; "
            "use the sampler or pyinstrument"
        )

    def start_request(self) -> _YappiRequest | None:
        with self._lock:
            if self._window or self.refusal() is not None:
                return None
            now = time.monotonic()
            if self._requests == 0:
                _start(self.clock)
                self._session_started = now
            elif now - self._session_started > SESSION_MAX_S:
                # Let the session drain so it is cleared (and its leak counted).
                return None
            self._requests += 1
        return _YappiRequest(self)

    def start_window(self, interval_s: float) -> _YappiWindow | None:
        with self._lock:
            refused = self.refusal()
            if refused is not None:
                raise EngineUnavailable(refused)
            if self._window or self._requests:
                return None
            self._window = True
            _start(self.clock)
        return _YappiWindow(self)

    def remaining(self) -> int:
        """Bytes of leak budget left (all of it when yappi does not leak)."""
        return sys.maxsize if self.leak is None else self.leak_budget - self.leaked

    def _release_request(self) -> None:
        with self._lock:
            self._requests -= 1
            if self._requests == 0 and not self._window:
                if self.leak is not None:
                    self.leaked += leaked_bytes(yappi.get_func_stats())
                _stop()

    def _release_window(self, stats: Any) -> None:
        with self._lock:
            self._window = False
            if self.leak is not None:
                self.leaked += leaked_bytes(stats if stats is not None else yappi.get_func_stats())
            _stop()


def _start(clock: str) -> None:
    yappi.clear_stats()
    yappi.set_clock_type(clock)
    yappi.set_tag_callback(_current_tag)
    yappi.start(builtins=False, profile_threads=True)


def _stop() -> None:
    """Stop and hold nothing: stats, and yappi's name-to-function table."""
    yappi.stop()
    yappi.clear_stats()
    # Filled by every read of the stats and never emptied by yappi: it may
    # hold a C method bound to an object of the app until the next read.
    descriptors = getattr(yappi, "_fn_descriptor_dict", None)
    if isinstance(descriptors, dict):
        descriptors.clear()


def leaked_bytes(func_stats: Any) -> int:
    """The estimated leak of a session: every coroutine that returned under yappi."""
    # Each entry's code object, which yappi files by name as it reads the stats.
    codes = getattr(yappi, "_fn_descriptor_dict", {})
    calls = 0
    for stat in func_stats:
        code = codes.get(stat.full_name)
        if isinstance(code, CodeType) and code.co_flags & _ASYNC:
            calls += stat.ncall
    return calls * CORO_BYTES


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
        self._blocks = sys.getallocatedblocks()

    def over_budget(self) -> str | None:
        """Why this window must stop now, if it must (checked about every second).

        The growth of Python's allocated blocks stands in for the leak: cheap
        to read, and the leaked coroutines are such blocks. The exact count
        from yappi's stats is taken when the window stops.
        """
        engine = self._engine
        if engine.leak is None:
            return None
        grown = (sys.getallocatedblocks() - self._blocks) * CORO_BYTES
        if grown < engine.remaining():
            return None
        return f"stopped early: {engine.leak}, and its leak budget is spent"

    def stop(self) -> Capture:
        func_stats = None
        try:
            func_stats = yappi.get_func_stats()
            stats = _pstats(func_stats)
            threads = len(yappi.get_thread_stats())
        finally:
            self._finish(func_stats)
        return Capture(
            engine="yappi",
            stacks=pstats_to_stacks(stats),
            duration_s=time.perf_counter() - self._started,
            pstats=stats,
            exact_stacks=False,
            meta={"clock": self._engine.clock, "threads": threads},
        )

    def abort(self) -> None:
        self._finish(None)

    def _finish(self, func_stats: Any) -> None:
        if not self._done:
            self._done = True
            self._engine._release_window(func_stats)


def _pstats(func_stats: Any) -> PstatsDict:
    if func_stats.empty():
        return {}
    stats: PstatsDict = yappi.convert2pstats(func_stats).stats
    return stats
