"""The sampler's thread: reads every thread's stack; no hook in the app's threads.

One daemon thread wakes ``hz`` times a second and reads the stacks of every
thread with ``sys._current_frames()``, the way py-spy does from outside,
but from inside: it can read the request a frame belongs to. On the event
loop's thread that is the middleware's frame of the running request (its
``scope``); on a worker thread (a sync ``def`` endpoint) it is the context
the worker runs in, where the middleware left the scope (``REQUEST_SCOPE``).

The thread measures its own CPU time and stretches its interval to stay
under ``max_cpu`` of one core. The same thread serves other periodic
watchers (the loop monitor) through ``add_hook``.
"""

from __future__ import annotations

import contextvars
import sys
import threading
import time
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Protocol

from asgi_perf._types import Scope
from asgi_perf.capture import FrameId, Stack
from asgi_perf.engines._codes import (
    LOOP_WAIT,
    REQUEST,
    RUNNER,
    SCOPED,
    WAIT,
    Code,
    CodeTable,
    frames_of,
    function_name,
)
from asgi_perf.labels import (
    IDLE,
    LOOP_THREAD,
    NO_REQUEST,
    OTHER_THREAD,
    WORKER_THREAD,
    route_frame,
)

# Set by the middleware while a sampler runs: how a worker thread's sample
# finds its request (the worker runs in a copy of the request's context).
REQUEST_SCOPE: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
    "asgi_perf_request_scope", default=None
)

Labeler = Callable[[Scope], tuple[FrameId, ...]]
Hook = Callable[[float], None]

# The GIL switch interval while sampling (see Sampler._shorten_switches).
SWITCH_INTERVAL_S = 0.001
_MAX_DEPTH = 256


class Sink(Protocol):
    def add(self, stack: Stack, seconds: float) -> None: ...


class Sampler:
    """The sampling thread of a process, shared by windows and the ring."""

    def __init__(
        self,
        hz: float,
        max_cpu: float,
        labels: Labeler,
        on_error: Callable[[str, BaseException], None],
        *,
        idle_interval_s: float = 0.02,
    ) -> None:
        self.hz = hz
        self.max_cpu = max_cpu
        self._labels = labels
        self._on_error = on_error
        self._idle_interval_s = idle_interval_s
        self._lock = threading.Lock()
        self._sinks: tuple[Sink, ...] = ()
        self._hooks: tuple[Hook, ...] = ()
        # The longest a hook may wait between calls; with no sink the thread
        # ticks at the shortest of them.
        self._hook_intervals: dict[Hook, float] = {}
        self._hook_interval_s = idle_interval_s
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._switch_was: float | None = None
        # True while some sink takes samples: the middleware then leaves the
        # request's scope in its context (a plain attribute: read per request).
        self.active = False
        self.loop_thread: int | None = None
        self._table = CodeTable(frozenset())
        self._label_cache: dict[tuple[str, ...], tuple[FrameId, ...]] = {}
        self._cpu: dict[int, float] = {}
        # What the thread reports about itself.
        self.interval_s = 1.0 / hz
        self.ticks = 0
        self.samples = 0
        self.cpu_s = 0.0
        self.started = 0.0

    # -- who is sampled, and for whom

    def subscribe(self, sink: Sink) -> None:
        with self._lock:
            if not self._sinks:
                self._shorten_switches()
            self._sinks = (*self._sinks, sink)
            self.active = True
        self._ensure_running()

    def unsubscribe(self, sink: Sink) -> None:
        with self._lock:
            had = bool(self._sinks)
            self._sinks = tuple(s for s in self._sinks if s is not sink)
            self.active = bool(self._sinks)
            if had and not self._sinks:
                self._restore_switches()

    def _shorten_switches(self) -> None:
        """A shorter GIL switch interval while sampling.

        The thread can only read stacks holding the GIL, and a busy thread
        gives it up when it blocks on I/O or after the switch interval (5 ms
        by default): half a 10 ms interval late, and landing on the next
        I/O call rather than the code that was running. At 1 ms a sample
        lands close to where it was due. A thread that runs alone (the
        event loop) switches no more often than before: only when the
        sampler asks.
        """
        self._switch_was = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch_was, SWITCH_INTERVAL_S))

    def _restore_switches(self) -> None:
        if self._switch_was is not None and sys.getswitchinterval() == min(
            self._switch_was, SWITCH_INTERVAL_S
        ):
            # Unless the app changed it meanwhile: then it is the app's.
            sys.setswitchinterval(self._switch_was)
        self._switch_was = None

    def add_hook(self, hook: Hook, interval_s: float | None = None) -> None:
        """Call ``hook(now)`` on every tick, at least every ``interval_s``
        (default: the idle interval); once, however often it is added."""
        with self._lock:
            if hook not in self._hooks:
                self._hooks = (*self._hooks, hook)
            self._hook_intervals[hook] = interval_s or self._idle_interval_s
            self._hook_interval_s = min(self._hook_intervals.values())
        self._ensure_running()

    def remove_hook(self, hook: Hook) -> None:
        with self._lock:
            self._hooks = tuple(h for h in self._hooks if h != hook)
            self._hook_intervals.pop(hook, None)
            self._hook_interval_s = min(
                self._hook_intervals.values(), default=self._idle_interval_s
            )

    def stop(self) -> None:
        """End the thread (at shutdown); sinks and hooks are dropped."""
        with self._lock:
            if self._sinks:
                self._restore_switches()
            self._sinks = ()
            self.active = False
            self._hooks = ()
            self._hook_intervals.clear()
            thread = self._thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2)

    def _ensure_running(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._wake.clear()
            self._thread = threading.Thread(target=self._run, name="asgi_perf-sampler", daemon=True)
            self.started = time.time()
            self._thread.start()

    def stats(self) -> dict[str, object]:
        running = self._thread is not None and self._thread.is_alive()
        elapsed = time.time() - self.started if running else 0.0
        return {
            "running": running,
            "hz": self.hz,
            "effective_hz": round(1.0 / self.interval_s, 1) if self.interval_s else None,
            "max_cpu": self.max_cpu,
            "cpu_share": round(self.cpu_s / elapsed, 5) if elapsed > 0 else 0.0,
            "ticks": self.ticks,
            "samples": self.samples,
        }

    # -- the thread

    def _run(self) -> None:
        own = threading.get_ident()
        base = 1.0 / self.hz
        cost = 0.0  # smoothed CPU seconds of one tick, waking up included
        last = time.perf_counter()
        cpu_last = time.thread_time()
        while True:
            sinks, hooks = self._sinks, self._hooks
            if not sinks and not hooks:
                with self._lock:
                    if not self._sinks and not self._hooks:
                        self._thread = None
                        return
                continue
            interval = max(base, cost / self.max_cpu) if sinks else self._hook_interval_s
            self.interval_s = interval if sinks else self.interval_s
            if self._wake.wait(interval):
                self._wake.clear()
                continue
            now = time.perf_counter()
            # A tick the thread could not run on time (the GIL was held)
            # weighs what it covered, within reason.
            seconds, last = min(now - last, 4 * interval), now
            try:
                if sinks:
                    self._sample(sinks, seconds, own)
                for hook in hooks:
                    hook(now)
            except Exception as exc:
                self._on_error("sampler", exc)
            # From one tick to the next: the work, and the wake-up before it
            # (on a small VM that is ~90 us, as much as the work itself).
            cpu_now = time.thread_time()
            spent, cpu_last = cpu_now - cpu_last, cpu_now
            self.cpu_s += spent
            self.ticks += 1
            if sinks:
                cost = spent if cost == 0.0 else 0.8 * cost + 0.2 * spent

    def _sample(self, sinks: tuple[Sink, ...], seconds: float, own: int) -> None:
        loop_thread = self.loop_thread
        for tid, top in sys._current_frames().items():
            if tid == own:
                continue
            stack = (
                self._loop_stack(top)
                if tid == loop_thread
                else self._thread_stack(tid, top, seconds)
            )
            if stack is None:
                continue
            self.samples += 1
            for sink in sinks:
                sink.add(stack, seconds)

    def _walk(self, top: FrameType, stop: int) -> tuple[list[Code], FrameType | None]:
        """The frames from ``top`` down to the first of kind ``stop`` (None: the root)."""
        known = self._table.known
        seen: list[Code] = []
        frame: FrameType | None = top
        for _ in range(_MAX_DEPTH):
            if frame is None:
                break
            code = frame.f_code
            info = known.get(id(code))
            if info is None:
                info = self._table.learn(code)
            if info[0] == stop:
                return seen, frame
            seen.append(info)
            frame = frame.f_back
        return seen, None

    def _loop_stack(self, top: FrameType) -> Stack:
        info = self._table.known.get(id(top.f_code)) or self._table.learn(top.f_code)
        if info[0] == LOOP_WAIT:
            return self._cached_labels((IDLE,), LOOP_THREAD)
        known = self._table.known
        seen: list[Code] = []
        frame: FrameType | None = top
        scoped: FrameType | None = None
        cut = 0
        for _ in range(_MAX_DEPTH):
            if frame is None:
                break
            code = frame.f_code
            found = known.get(id(code))
            info = self._table.learn(code) if found is None else found
            kind = info[0]
            if kind == REQUEST:
                scoped, cut = frame, len(seen)
                break
            if kind == SCOPED:
                scoped, cut = frame, len(seen)
            seen.append(info)
            frame = frame.f_back
        labels = self._scope_labels(scoped)
        if labels is None:
            return (*self._cached_labels((NO_REQUEST,), LOOP_THREAD), *frames_of(seen))
        return (*labels, LOOP_THREAD, *frames_of(seen[:cut]))

    def _scope_labels(self, frame: FrameType | None) -> tuple[FrameId, ...] | None:
        """The labels of the request whose ``scope`` ``frame`` holds, if it is one."""
        if frame is None:
            return None
        scope = frame.f_locals.get("scope")
        if not isinstance(scope, dict) or scope.get("type") != "http":
            return None
        return self._labels(scope)

    def _thread_stack(self, tid: int, top: FrameType, seconds: float) -> Stack | None:
        info = self._table.known.get(id(top.f_code)) or self._table.learn(top.f_code)
        if info[0] in (WAIT, LOOP_WAIT):
            return None
        seen, found = self._walk(top, RUNNER)
        if found is not None:
            scope = _worker_scope(found)
            if scope is not None:
                return (*self._labels(scope), WORKER_THREAD, *frames_of(seen))
            more, _ = self._walk(found, -1)
            seen += more
        # A thread outside any request counts only while it uses the CPU:
        # one blocked in C (time.sleep, a read) looks busy from its frames.
        if not self._used_cpu(tid, seconds):
            return None
        return (*self._cached_labels((NO_REQUEST,), OTHER_THREAD), *frames_of(seen))

    def _used_cpu(self, tid: int, seconds: float) -> bool:
        """Whether thread ``tid`` ran a tenth of the last ``seconds`` or more."""
        try:
            now = time.clock_gettime(time.pthread_getcpuclockid(tid))
        except (OSError, AttributeError, OverflowError):
            return True  # cannot tell: count it
        before = self._cpu.get(tid)
        if len(self._cpu) > 4096:
            self._cpu.clear()
        self._cpu[tid] = now
        # A thread that wakes now and then to look at a flag is not busy.
        return before is not None and now - before >= seconds / 10

    def _cached_labels(self, names: tuple[str, ...], thread: FrameId) -> Stack:
        key = (*names, thread.function)
        hit = self._label_cache.get(key)
        if hit is None:
            hit = self._label_cache[key] = (*(route_frame(n) for n in names), thread)
        return hit

    def loop_snapshot(self) -> tuple[Stack, str | None]:
        """The loop thread's stack now, at the lines it is on, and its route.

        Only the part above the request's frame when there is one (the
        server and the loop below it are the same for every request).
        """
        tid = self.loop_thread
        frame = None if tid is None else sys._current_frames().get(tid)
        out: list[FrameId] = []
        scoped: FrameType | None = None
        cut = 0
        while frame is not None and len(out) < _MAX_DEPTH:
            code = frame.f_code
            kind = self._table.kind(code)
            if kind in (REQUEST, SCOPED):
                scoped, cut = frame, len(out)
                if kind == REQUEST:
                    break
            out.append(FrameId(function_name(code), code.co_filename, frame.f_lineno or 0))
            frame = frame.f_back
        labels = self._scope_labels(scoped)
        if labels is None:
            out.reverse()
            return tuple(out), None
        return tuple(reversed(out[:cut])), labels[0].function if labels else None

    def set_request_codes(self, codes: frozenset[CodeType]) -> None:
        """The code of the frame that runs a request (the middleware's)."""
        self._table = CodeTable(codes)


def _worker_scope(frame: FrameType) -> Scope | None:
    """The request scope a worker thread runs for, from its runner's context."""
    f_locals = frame.f_locals
    # anyio's WorkerThread.run: ``context.run(func, *args)``.
    context = f_locals.get("context")
    if not isinstance(context, contextvars.Context):
        # concurrent.futures' _WorkItem.run via asyncio.to_thread:
        # ``partial(context.run, func, ...)``.
        work = f_locals.get("self")
        fn = getattr(work, "fn", None)
        bound = getattr(getattr(fn, "func", None), "__self__", None)
        context = bound if isinstance(bound, contextvars.Context) else None
    if context is None:
        return None
    return context.get(REQUEST_SCOPE)
