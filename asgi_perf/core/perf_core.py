"""PerfCore: everything asgi_perf measures and keeps, for one process.

Built from a ``PerfConfig``; knows nothing of ASGI messages. The middleware
feeds it from the hot path, the ``/_perf`` app reads it, and each
collaborator gets only the piece it needs (a store, a callable).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from types import CodeType
from typing import Any, TypeVar

from asgi_perf._types import Scope
from asgi_perf.budgets import BudgetSet, load_budgets
from asgi_perf.capture import Capture, FrameId
from asgi_perf.config import PerfConfig
from asgi_perf.continuous import Ring
from asgi_perf.core.snapshot import build_snapshot, worker_state
from asgi_perf.db import sqlalchemy_events
from asgi_perf.db.store import DBStats
from asgi_perf.engines import WINDOW_ONLY, Engine, check_engine_name
from asgi_perf.engines.sampler_impl import Sampler, SamplerEngine
from asgi_perf.errors import ConfigError
from asgi_perf.labels import OWN, request_frame, route_frame, tag_frame
from asgi_perf.loop import LoopMonitor
from asgi_perf.memory.tracing import LeakFinder
from asgi_perf.memory.watch import ProcessMemory
from asgi_perf.profiling import PROFILE_ID_KEY, RequestProfiler, engine_for, request_tag
from asgi_perf.routes import RouteKeys, route_path
from asgi_perf.server_windows import ServerWindows
from asgi_perf.stats.store import Recorder
from asgi_perf.storage import ProfileStore
from asgi_perf.window import WindowFailed, Windows
from asgi_perf.workers import Workers, server_directory

logger = logging.getLogger("asgi_perf")

T = TypeVar("T")
READINGS_INTERVAL_S = 0.1


class PerfCore:
    """The recorder, route keys, budgets, profile store, engines and windows."""

    def __init__(self, config: PerfConfig) -> None:
        self.config = cfg = config
        self.internal_errors = 0
        self._logged: set[str] = set()
        try:
            self.budgets: BudgetSet = load_budgets(cfg.budgets, min_samples=cfg.min_samples)
        except ConfigError as exc:
            # A file's errors name the file; say too which option brought it in.
            if str(exc).startswith("budgets: "):
                raise
            raise ConfigError(f"budgets: {exc}") from None
        self.recorder = Recorder(max_routes=cfg.max_routes, window_s=cfg.recent_window_s)
        self.keys = RouteKeys(cfg.route_key, self.internal_error)
        # Requests in flight, by their start time (ns): read by ``in_flight``.
        self.active: dict[int, Scope] = {}
        self.memory_method = "tracemalloc" if cfg.tracemalloc else "rss"
        self.memory = ProcessMemory(
            interval_s=cfg.memory_interval_s if cfg.enabled else 0.0,
            max_points=cfg.memory_points,
            first=min(self.budgets.max_min_samples(), 1000),
            every=cfg.memory_sample_every,
            max_keys=2 * cfg.max_routes + 16,
            requests=self.recorder.count,
            on_error=self.internal_error,
        )
        if not cfg.tracemalloc:
            # The fold tells the schedule when a route's n-th request is due.
            self.recorder.on_fold = self.memory.routes.folded
        self.started_tracemalloc = False
        if cfg.enabled and cfg.tracemalloc and not tracemalloc.is_tracing():
            tracemalloc.start()
            self.started_tracemalloc = True
        self.leaks = LeakFinder(configured=cfg.enabled and cfg.tracemalloc)
        self.store = ProfileStore(
            max_profiles=cfg.max_profiles,
            max_bytes=cfg.max_profile_bytes,
            profile_dir=cfg.profile_dir if cfg.enabled else None,
            keep_slowest=cfg.keep_slowest,
            keep_last=cfg.keep_last,
            on_error=self.internal_error,
        )
        self._engines: dict[str, Engine] = {}
        # The sampling thread is started by whoever needs it first: a window,
        # the continuous ring, the loop monitor.
        self.sampler = Sampler(
            cfg.sampler_hz, cfg.sampler_max_cpu, self._labels, self.internal_error
        )
        self._label_cache: dict[tuple[str, str | None, str | None], tuple[FrameId, ...]] = {}
        self._own_labels = (route_frame(OWN),)
        self.loop: LoopMonitor | None = None
        if cfg.enabled and cfg.loop_monitor:
            self.loop = LoopMonitor(
                self.sampler,
                threshold_ms=cfg.block_threshold_ms,
                max_blocks=cfg.max_loop_blocks,
                in_flight=self.in_flight,
            )
        self.ring = Ring(self.sampler, cfg.continuous_minutes) if cfg.continuous else None
        self.workers: Workers | None = None
        self.server_windows: ServerWindows | None = None
        if cfg.enabled:
            shared = Path(cfg.shared_dir) if cfg.shared_dir is not None else server_directory()
            if shared is not None:
                self.workers = Workers(
                    shared,
                    self._worker_state,
                    self._reset_here,
                    self.internal_error,
                    interval_s=cfg.flush_interval_s,
                )
                self.server_windows = ServerWindows(
                    shared, self.store, self.workers.live_pids, self.internal_error
                )
                self.workers.hooks.append(self._poll_server)
                self.workers.profiles = self._shared_profiles
                try:
                    self.workers.start()
                    atexit.register(self.workers.stop)
                except OSError as exc:
                    # An unwritable directory: this worker answers for itself.
                    self.internal_error("shared_dir", exc)
                    self.workers = None
                    self.server_windows = None
        # Database queries (issue #14): None when off, and nothing is hooked.
        self.db: DBStats | None = None
        if cfg.enabled and cfg.db:
            self.db = DBStats(
                route_key=self._db_route,
                max_routes=cfg.max_routes,
                n_plus_one_threshold=cfg.n_plus_one_threshold,
                slow_query_ms=cfg.slow_query_ms,
                max_slow_queries=cfg.max_slow_queries,
                on_error=self.internal_error,
            )
            if self.workers is not None:
                self.db.others = self._others_db
            sqlalchemy_events.install()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.requests: RequestProfiler | None = None
        if cfg.enabled:
            self.requests = RequestProfiler(
                self.engine(cfg.engine),
                self.store,
                max_concurrent=cfg.max_concurrent_profiles,
                budget=cfg.profile_budget,
                over_budget=self.over_budget,
                on_error=self.internal_error,
            )
            refused = self.requests.sampling_refused
            if cfg.sample_rate and refused is not None:
                # Loud and once, at start-up: the option is not honoured.
                logger.error(
                    "asgi_perf: sample_rate=%s is not applied with engine=%r: %s. Requests "
                    "that ask (X-Perf-Profile: 1) are still profiled; to sample, use "
                    "engine='pyinstrument'.",
                    cfg.sample_rate,
                    cfg.engine,
                    refused,
                )
        requests = self.requests
        self.windows = Windows(
            self.engine,
            self.store,
            max_seconds=cfg.max_window_seconds,
            interval_ms=cfg.profile_interval_ms,
            requests_active=(lambda: 0) if requests is None else (lambda: requests.active),
            on_error=self.internal_error,
        )
        if requests is not None:
            requests.paused = self.windows.hooked

    def engine(self, name: str) -> Engine:
        """The engine called ``name``, one instance per core (single-flight)."""
        engine = self._engines.get(name)
        if engine is None:
            cfg = self.config
            check_engine_name(name)
            if name == "sampler":
                engine = SamplerEngine(self.sampler)
            else:
                engine = engine_for(name, cfg.profile_interval_ms, cfg.yappi_clock, cfg.sampler_hz)
            self._engines[name] = engine
        return engine

    def set_request_code(self, code: CodeType) -> None:
        """The code of the frame that runs a request: how a sample finds its request."""
        self.sampler.set_request_codes(frozenset({code}))

    def attach_loop(self) -> None:
        """Called on the event loop's thread: start what watches that loop.

        The first request (or the lifespan start-up) does it; the loop is
        only known from inside it.
        """
        loop = asyncio.get_running_loop()
        if loop is self._loop or not self.config.enabled:
            return
        self._loop = loop
        self.sampler.loop_thread = threading.get_ident()
        if self.workers is not None:
            # A worker forked after the app was built (gunicorn --preload)
            # starts its own writer here.
            self.workers.start()
        if self.loop is not None:
            self.loop.attach(loop)
        # RSS readings for the requests' starts, and the timeline's points.
        # With neither the timeline nor the loop monitor the thread is not
        # started for the readings alone: a request then starts from the
        # last measured request's reading.
        self.memory.start()
        if self.memory.timeline is not None or self.loop is not None:
            # Ten readings a second are enough for the requests' starts; the
            # loop monitor, when on, ticks the thread more often anyway.
            self.sampler.add_hook(self.memory.tick, READINGS_INTERVAL_S)
        if self.ring is not None:
            self.ring.start()
        # The thread serves the loop for as long as the loop lives, no longer
        # (an app built per test must not leave a thread behind).
        self.sampler.add_hook(self._watch_loop, READINGS_INTERVAL_S)

    def _watch_loop(self, now: float) -> None:
        """On the sampler's thread: stop sampling once the loop is gone."""
        loop = self._loop
        if loop is not None and loop.is_closed():
            self.close()

    def close(self) -> None:
        """Stop the sampler thread and what it serves (the server is shutting down)."""
        self._loop = None
        if self.loop is not None:
            self.loop.detach()
        if self.ring is not None:
            self.ring.stop()
        self.sampler.remove_hook(self._watch_loop)
        self.sampler.remove_hook(self.memory.tick)
        self.sampler.stop()

    def _labels(self, scope: Scope) -> tuple[FrameId, ...]:
        """The label frames of a request's samples: route, tag, profile id."""
        path = scope.get("path", "")
        if self.config.prefix in path and route_path(scope).startswith(self.config.prefix):
            # asgi_perf's own endpoints (a window's wait, a render).
            return self._own_labels
        route = self.recorder.capped(self.keys.key(scope))
        tag = request_tag(scope)
        profile_id = scope.get(PROFILE_ID_KEY)
        key = (route, tag, profile_id)
        labels = self._label_cache.get(key)
        if labels is None:
            if len(self._label_cache) > 4096:
                self._label_cache = {}
            frames = [route_frame(route)]
            if tag:
                frames.append(tag_frame(tag))
            if profile_id:
                frames.append(request_frame(profile_id))
            labels = self._label_cache[key] = tuple(frames)
        return labels

    def internal_error(self, kind: str, exc: BaseException) -> None:
        """Count a failure inside asgi_perf; log each kind once, never raise."""
        self.internal_errors += 1
        if kind not in self._logged:
            self._logged.add(kind)
            logger.error(
                "asgi_perf internal error (%s); the request was served", kind, exc_info=exc
            )

    def over_budget(self, route: str, duration_ms: float) -> bool:
        """Whether one request of ``route`` broke its latency limit."""
        limit = self.budgets.latency_limit_ms(route) if self.budgets else None
        return limit is not None and duration_ms > limit

    def in_flight(self) -> dict[str, int]:
        """Requests running now, by route key (routing has usually happened)."""
        counts: dict[str, int] = {}
        capped = self.recorder.capped
        key = self.keys.key
        for scope in list(self.active.values()):
            name = capped(key(scope))
            counts[name] = counts.get(name, 0) + 1
        return counts

    # -- windows of every worker (called by the workers' poll thread)

    def _poll_server(self) -> None:
        sw = self.server_windows
        if sw is not None:
            sw.poll(self._join_window, self._leave_window)
            sw.serve_exports()

    def _join_window(self, request: dict[str, Any]) -> str | None:
        """Start this worker's part of a server window (on its event loop)."""
        engine = str(request["engine"])

        def start() -> str | None:
            try:
                return self.windows.start(
                    engine,
                    None,
                    tag=request.get("tag"),
                    native=bool(request.get("native")),
                    part_of=str(request["id"]),
                ).id
            except WindowFailed:
                return None  # counted by start; the part says it could not start

        return self._on_loop(start, needs_loop=engine not in WINDOW_ONLY)

    def _leave_window(self, local_id: str) -> Capture | None:
        def take() -> Capture | None:
            try:
                return self.windows.take(local_id)
            except WindowFailed:
                return None  # counted by take; the part says "no capture"

        return self._on_loop(take, needs_loop=False)

    def _on_loop(self, fn: Callable[[], T], *, needs_loop: bool) -> T | None:
        """``fn()`` on the event loop's thread, waited for; None when it cannot run.

        The sampler and py-spy start from any thread; a hooking profiler
        must start on the loop's own thread, which a worker that has served
        no request yet has not shown us.
        """
        loop = self._loop
        if loop is None or loop.is_closed():
            return None if needs_loop else fn()
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except BaseException as exc:
                done.set_exception(exc)

        loop.call_soon_threadsafe(run)
        try:
            return done.result(timeout=5)
        except Exception as exc:
            self.internal_error("server_window", exc)
            return None

    def _db_route(self, scope: Scope) -> str:
        """The route a request's queries count under: the recorder's name for it."""
        return self.recorder.capped(self.keys.key(scope))

    def _others_db(self) -> list[dict[str, Any]]:
        workers = self.workers
        if workers is None:
            return []
        found = [(body.get("snapshot") or {}).get("db_state") for body in workers.others()]
        return [state for state in found if isinstance(state, dict)]

    def _shared_profiles(self) -> list[Any]:
        """This worker's stored profiles, as the others list them."""
        return [dict(m) for m in self.store.list(limit=self.store.max_profiles)]

    def _worker_state(self) -> dict[str, Any]:
        """What this worker shares with the others: its counts, histograms, memory."""
        return worker_state(self)

    async def fresh(self, timeout_s: float = 0.5) -> None:
        """Have every live worker write its state now, so an answer counts all.

        Waits at most ``timeout_s``; a worker too busy to answer in time is
        counted as of its last write.
        """
        workers = self.workers
        if workers is None:
            return
        try:
            # Our own file too: if this worker dies next, the others count
            # what it had served when it last answered.
            if not workers.catch_up():
                workers.write()
            asked = workers.ask_flush()
            deadline = time.monotonic() + timeout_s
            while not workers.flushed_since(asked) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        except OSError as exc:
            self.internal_error("shared_dir", exc)

    def snapshot(self, *, histograms: bool = False) -> dict[str, Any]:
        """Everything measured so far, as served by ``GET {prefix}/stats``.

        With workers, the numbers of every worker of the server, merged.
        """
        return build_snapshot(self, histograms=histograms)

    def reset(self) -> dict[str, Any]:
        """Clear all numbers; returns the snapshot that was cleared."""
        cleared = self.snapshot()
        if self.workers is not None:
            self.workers.reset_all()
        else:
            self._reset_here()
        return cleared

    def _reset_here(self) -> None:
        """Clear this process's numbers (a worker told to reset does this)."""
        self.recorder.reset()
        self.memory.clear()
        if self.loop is not None:
            self.loop.reset()
        if self.db is not None:
            self.db.reset()
