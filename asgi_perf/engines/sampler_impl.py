"""sampler: asgi_perf's own sampling thread; no hook in the app's threads.

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
from asgi_perf.capture import Capture, FrameId, Stack
from asgi_perf.engines.base import Capabilities
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
# A code object's kind and frame, and the code itself (which keeps its id its own).
_Code = tuple[int, FrameId, CodeType]
Hook = Callable[[float], None]

# The GIL switch interval while sampling (see Sampler._shorten_switches).
SWITCH_INTERVAL_S = 0.001
_CACHE_MAX = 65_536
_MAX_STACKS = 20_000  # distinct stacks one sink keeps; the rest are counted apart
_MAX_DEPTH = 256
# What a code object is to the sampler; decided once per code object.
# _SCOPED: a function taking an ASGI ``scope`` (any middleware, router,
# route): the request of a task the middleware's frame is not in (one that
# Starlette's BaseHTTPMiddleware runs the rest of the app in).
_PLAIN, _REQUEST, _RUNNER, _WAIT, _LOOP_WAIT, _SCOPED = range(6)
# Functions a thread sits in while it waits for work or I/O.
_WAITS = {
    ("threading.py", "wait"),
    ("threading.py", "_wait_for_tstate_lock"),
    ("queue.py", "get"),
    ("socket.py", "accept"),
    ("socketserver.py", "serve_forever"),
}
# Where an event loop's thread waits: the selector (asyncio) or, for a loop
# in C (uvloop), the Python frame that started it.
_LOOP_WAITS = {
    ("selectors.py", "select"),
    ("runners.py", "run"),
    ("base_events.py", "run_until_complete"),
    ("base_events.py", "run_forever"),
}


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
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._switch_was: float | None = None
        # True while some sink takes samples: the middleware then leaves the
        # request's scope in its context (a plain attribute: read per request).
        self.active = False
        self.loop_thread: int | None = None
        self.request_codes: frozenset[CodeType] = frozenset()
        self._codes: dict[int, _Code] = {}
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

    def add_hook(self, hook: Hook) -> None:
        with self._lock:
            self._hooks = (*self._hooks, hook)
        self._ensure_running()

    def remove_hook(self, hook: Hook) -> None:
        with self._lock:
            self._hooks = tuple(h for h in self._hooks if h != hook)

    def stop(self) -> None:
        """End the thread (at shutdown); sinks and hooks are dropped."""
        with self._lock:
            if self._sinks:
                self._restore_switches()
            self._sinks = ()
            self.active = False
            self._hooks = ()
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
            interval = max(base, cost / self.max_cpu) if sinks else self._idle_interval_s
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

    def _walk(self, top: FrameType, stop: int) -> tuple[list[_Code], FrameType | None]:
        """The frames from ``top`` down to the first of kind ``stop`` (None: the root)."""
        known = self._codes
        seen: list[_Code] = []
        frame: FrameType | None = top
        for _ in range(_MAX_DEPTH):
            if frame is None:
                break
            code = frame.f_code
            info = known.get(id(code))
            if info is None:
                info = self._learn(code)
            if info[0] == stop:
                return seen, frame
            seen.append(info)
            frame = frame.f_back
        return seen, None

    def _loop_stack(self, top: FrameType) -> Stack:
        info = self._codes.get(id(top.f_code)) or self._learn(top.f_code)
        if info[0] == _LOOP_WAIT:
            return self._cached_labels((IDLE,), LOOP_THREAD)
        known = self._codes
        seen: list[_Code] = []
        frame: FrameType | None = top
        scoped: FrameType | None = None
        cut = 0
        for _ in range(_MAX_DEPTH):
            if frame is None:
                break
            code = frame.f_code
            found = known.get(id(code))
            info = self._learn(code) if found is None else found
            kind = info[0]
            if kind == _REQUEST:
                scoped, cut = frame, len(seen)
                break
            if kind == _SCOPED:
                scoped, cut = frame, len(seen)
            seen.append(info)
            frame = frame.f_back
        labels = self._scope_labels(scoped)
        if labels is None:
            return (*self._cached_labels((NO_REQUEST,), LOOP_THREAD), *_frames(seen))
        return (*labels, LOOP_THREAD, *_frames(seen[:cut]))

    def _scope_labels(self, frame: FrameType | None) -> tuple[FrameId, ...] | None:
        """The labels of the request whose ``scope`` ``frame`` holds, if it is one."""
        if frame is None:
            return None
        scope = frame.f_locals.get("scope")
        if not isinstance(scope, dict) or scope.get("type") != "http":
            return None
        return self._labels(scope)

    def _thread_stack(self, tid: int, top: FrameType, seconds: float) -> Stack | None:
        info = self._codes.get(id(top.f_code)) or self._learn(top.f_code)
        if info[0] in (_WAIT, _LOOP_WAIT):
            return None
        seen, found = self._walk(top, _RUNNER)
        if found is not None:
            scope = _worker_scope(found)
            if scope is not None:
                return (*self._labels(scope), WORKER_THREAD, *_frames(seen))
            more, _ = self._walk(found, -1)
            seen += more
        # A thread outside any request counts only while it uses the CPU:
        # one blocked in C (time.sleep, a read) looks busy from its frames.
        if not self._used_cpu(tid, seconds):
            return None
        return (*self._cached_labels((NO_REQUEST,), OTHER_THREAD), *_frames(seen))

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

    def _learn(self, code: CodeType) -> _Code:
        """What ``code`` is, and its frame; kept (with the code, so its id stays
        its own) in a bounded table keyed by id: ids hash faster than code."""
        if len(self._codes) > _CACHE_MAX:
            self._codes = {}
        info = (
            self._classify(code),
            FrameId(_name(code), code.co_filename, code.co_firstlineno),
            code,
        )
        self._codes[id(code)] = info
        return info

    def _kind(self, code: CodeType) -> int:
        info = self._codes.get(id(code)) or self._learn(code)
        return info[0]

    def _classify(self, code: CodeType) -> int:
        if code in self.request_codes:
            return _REQUEST
        file = code.co_filename.replace("\\", "/").rsplit("/", 1)[-1]
        name = code.co_name
        if (file, name) in _LOOP_WAITS:
            return _LOOP_WAIT
        if (file, name) in _WAITS:
            return _WAIT
        if name in ("run", "_worker") and _is_runner_file(code.co_filename):
            return _RUNNER
        if "scope" in code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]:
            return _SCOPED
        return _PLAIN

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
            kind = self._kind(code)
            if kind in (_REQUEST, _SCOPED):
                scoped, cut = frame, len(out)
                if kind == _REQUEST:
                    break
            out.append(FrameId(_name(code), code.co_filename, frame.f_lineno or 0))
            frame = frame.f_back
        labels = self._scope_labels(scoped)
        if labels is None:
            out.reverse()
            return tuple(out), None
        return tuple(reversed(out[:cut])), labels[0].function if labels else None

    def forget_codes(self) -> None:
        """Classify code objects again (after ``request_codes`` changed)."""
        self._codes = {}


def _name(code: CodeType) -> str:
    """``Class.method`` for a method, the plain name for a nested function.

    The qualified name (3.11+) without what comes before ``<locals>``: a
    function defined inside another is known by its own name.
    """
    qualname: str = getattr(code, "co_qualname", code.co_name)
    return qualname.rpartition("<locals>.")[2]


def _frames(seen: list[_Code]) -> Stack:
    """Frames root first, from what a walk saw top first."""
    return tuple([info[1] for info in reversed(seen)])


def _is_runner_file(path: str) -> bool:
    path = path.replace("\\", "/")
    return path.endswith(("anyio/_backends/_asyncio.py", "concurrent/futures/thread.py"))


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


class SamplerEngine:
    """Windows by sampling: what the app does under load, at the load it has."""

    name = "sampler"
    capabilities = Capabilities(async_aware=True, threads=True, clock="wall", exact_stacks=True)

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler

    def start_request(self) -> None:
        """Never: a request is too short for 100 samples a second to say much."""
        return None

    def start_window(self, interval_s: float) -> SamplerRecording:
        # The sampler keeps its own rate (sampler_hz): one thread serves
        # every window and the continuous ring alike.
        return SamplerRecording(self.sampler)


class StackCounts:
    """Seconds per labelled stack, bounded; the sink of a recording or a slice."""

    def __init__(self, max_stacks: int = _MAX_STACKS) -> None:
        self.stacks: dict[Stack, float] = {}
        self.samples = 0
        self.idle = 0
        self.dropped = 0
        self._max = max_stacks

    def add(self, stack: Stack, seconds: float) -> None:
        stacks = self.stacks
        self.samples += 1
        if stack[0].function == IDLE:
            self.idle += 1
        if stack in stacks:
            stacks[stack] += seconds
        elif len(stacks) < self._max:
            stacks[stack] = seconds
        else:
            # Past the bound a sample keeps its labels, not its frames.
            self.dropped += 1
            cut = (*(f for f in stack if f.line == 0), _TRUNCATED)
            stacks[cut] = stacks.get(cut, 0.0) + seconds


_TRUNCATED = FrameId("<more stacks than max_stacks>", "<asgi_perf>", 0)


class SamplerRecording:
    """One window of the sampler: a sink from start to stop."""

    def __init__(self, sampler: Sampler) -> None:
        self._sampler = sampler
        self._sink = StackCounts()
        self._started = time.perf_counter()
        self._cpu0 = sampler.cpu_s
        sampler.subscribe(self._sink)

    def stop(self) -> Capture:
        self._sampler.unsubscribe(self._sink)
        duration = time.perf_counter() - self._started
        capture = sink_capture(self._sink, duration, self._sampler)
        cpu_s = self._sampler.cpu_s - self._cpu0
        capture.meta["sampler_cpu_share"] = round(cpu_s / duration, 5) if duration > 0 else 0.0
        return capture

    def abort(self) -> None:
        self._sampler.unsubscribe(self._sink)


def sink_capture(sink: StackCounts, duration_s: float, sampler: Sampler) -> Capture:
    """A ``Capture`` of what ``sink`` collected over ``duration_s``."""
    total = sum(sink.stacks.values())
    return Capture(
        engine="sampler",
        stacks=dict(sink.stacks),
        duration_s=duration_s,
        meta={
            "samples": sink.samples,
            "idle_samples": sink.idle,
            "dropped_stacks": sink.dropped,
            "interval_s": round(total / sink.samples, 6) if sink.samples else sampler.interval_s,
            "hz": sampler.hz,
        },
    )
