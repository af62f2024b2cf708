"""PerfMiddleware: times every HTTP request per route and serves ``/_perf``."""

from __future__ import annotations

import itertools
import logging
import os
import random
import time
import tracemalloc
from collections.abc import Awaitable
from typing import Any

from asgi_perf._types import ASGIApp, Message, Receive, Scope, Send
from asgi_perf.budgets import BudgetSet, load_budgets
from asgi_perf.config import PerfConfig
from asgi_perf.endpoints import Gate
from asgi_perf.engines import Engine, check_engine_name
from asgi_perf.memory import process_memory, read_rss, traced_growth, traced_start
from asgi_perf.profiling import PROFILE_HEADER, SCOPE_KEY, RequestProfiler, engine_for
from asgi_perf.routes import FASTAPI_CONTEXT_KEY, UNMATCHED, RouteKeys
from asgi_perf.stats.store import BATCH, EXCEPTION, INCOMPLETE, Recorder
from asgi_perf.storage import ProfileStore
from asgi_perf.window import Windows

logger = logging.getLogger("asgi_perf")
_perf_counter_ns = time.perf_counter_ns
_FASTAPI_CONTEXT_KEY = FASTAPI_CONTEXT_KEY
_BATCH = BATCH
_random = random.random


class PerfMiddleware:
    """Pure ASGI middleware; ``app.add_middleware(PerfMiddleware, **options)``.

    Options are the fields of ``PerfConfig`` (or pass ``config=PerfConfig(...)``);
    ``ASGI_PERF_*`` environment variables override both.
    """

    def __init__(self, app: ASGIApp, /, config: PerfConfig | None = None, **options: Any) -> None:
        self.app = app
        self.config = cfg = PerfConfig.from_options(config, **options)
        self.enabled = cfg.enabled
        self.budgets: BudgetSet = load_budgets(cfg.budgets, min_samples=cfg.min_samples)
        self.recorder = Recorder(max_routes=cfg.max_routes, window_s=cfg.recent_window_s)
        self.internal_errors = 0
        self._logged: set[str] = set()
        self._prefix = cfg.prefix
        self._prefix_len = len(cfg.prefix)
        self._keys = RouteKeys()
        self._memo = self._keys.memo
        self._pending = self.recorder.pending
        self._flush = self.recorder.flush
        self._route_key = cfg.route_key
        self._active: dict[int, Scope] = {}
        self._rss = read_rss
        self._tracemalloc = cfg.tracemalloc
        self.memory_method = "tracemalloc" if cfg.tracemalloc else "rss"
        # Reading RSS costs a system call; only every n-th request pays it.
        # The first request is measured so that a quiet app shows a number.
        every = 1 if cfg.tracemalloc else cfg.memory_sample_every
        self._memory_turn = itertools.cycle([True] + [False] * (every - 1))
        self._started_tracemalloc = False
        if cfg.enabled and cfg.tracemalloc and not tracemalloc.is_tracing():
            tracemalloc.start()
            self._started_tracemalloc = True
        self.store = ProfileStore(
            max_profiles=cfg.max_profiles,
            max_bytes=cfg.max_profile_bytes,
            profile_dir=cfg.profile_dir if cfg.enabled else None,
            keep_slowest=cfg.keep_slowest,
            keep_last=cfg.keep_last,
            on_error=self.internal_error,
        )
        self._engines: dict[str, Engine] = {}
        self.requests = RequestProfiler(self, self.store) if cfg.enabled else None
        self.windows = Windows(self, self.engine)
        if self.requests is not None:
            self._engines[cfg.engine] = self.requests.engine
            self.requests.paused = self.windows.running
        self._sample_rate = cfg.sample_rate
        self.gate = Gate(cfg.token, cfg.authorize, self.internal_error)
        from asgi_perf.endpoints import make_perf_app

        self._perf_app = make_perf_app(self)

    def engine(self, name: str) -> Engine:
        """The engine called ``name``, one instance per middleware (single-flight)."""
        engine = self._engines.get(name)
        if engine is None:
            cfg = self.config
            engine = self._engines[name] = engine_for(
                check_engine_name(name), cfg.profile_interval_ms, cfg.yappi_clock
            )
        return engine

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.enabled:
            if scope["type"] == "lifespan" and self.config.lifespan_profile and self.enabled:
                await self._lifespan(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        # A substring test first: one C call decides for almost every request.
        if self._prefix in scope["path"] and self._is_perf_path(scope):
            await self._perf_app(scope, receive, send)
            return
        # Header membership is one C-level scan of the header list.
        if (
            PROFILE_HEADER in scope["headers"]
            or (self._sample_rate and _random() < self._sample_rate)
        ) and SCOPE_KEY not in scope:
            await self.requests.handle(scope, receive, send)  # type: ignore[union-attr]
            return

        t0 = _perf_counter_ns()
        ttfb = end = status = nbytes = 0
        memory_start = self._memory_start() if next(self._memory_turn) else -1
        active = self._active
        rid = id(scope)
        active[rid] = scope

        # A plain function returning the server's awaitable: no extra
        # coroutine per message. The request ends when the app hands over
        # its last body chunk.
        def timed_send(message: Message) -> Awaitable[None]:
            nonlocal ttfb, end, status, nbytes
            kind = message["type"]
            if kind == "http.response.body":
                nbytes += len(message.get("body", b""))
                if not message.get("more_body", False):
                    end = _perf_counter_ns()
            elif kind == "http.response.start":
                status = message["status"]
                ttfb = _perf_counter_ns()
            elif kind == "http.response.pathsend":
                end = _perf_counter_ns()
                nbytes += _file_size(message.get("path"))
            return send(message)

        try:
            await self.app(scope, receive, timed_send)
        except BaseException as exc:
            del active[rid]
            self._finish(scope, t0, ttfb, end, status, nbytes, memory_start, exc)
            raise
        del active[rid]
        if not end or memory_start >= 0:
            # No complete response, or a memory sample to close: rare.
            self._finish(scope, t0, ttfb, end, status, nbytes, memory_start, None)
            return
        try:
            # Recorder.record with the memoised case of _key, inlined: this
            # is the path of almost every request.
            route = scope.get("route")
            hit = (
                None
                if route is None or self._route_key is not None or "fastapi" in scope
                else self._memo.get((id(route), scope["method"], scope.get("root_path", "")))
            )
            pending = self._pending
            pending.append(
                (
                    self._key(scope) if hit is None else hit[1],
                    (ttfb or end) - t0,
                    end - t0,
                    status,
                    nbytes,
                    None,
                    0,
                    end,
                )
            )
            if len(pending) >= _BATCH:
                self._flush()
        except Exception as exc:
            self.internal_error("record", exc)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Profile from start-up to shutdown; the file lands in ``profile_dir``."""
        window_id = ""
        try:
            window_id = self.windows.start(self.config.engine, None, kind="lifespan").id
        except Exception as exc:
            self.internal_error("lifespan_profile", exc)

        async def watched_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown" and window_id:
                try:
                    meta = self.windows.stop(window_id)
                    if meta is not None:
                        logger.info("asgi_perf: lifespan profile %s", meta.get("path"))
                except Exception as exc:
                    self.internal_error("lifespan_profile", exc)
            return message

        await self.app(scope, watched_receive, send)

    def over_budget(self, route: str, duration_ms: float) -> bool:
        limit = self.budgets.latency_limit_ms(route) if self.budgets else None
        return limit is not None and duration_ms > limit

    def _is_perf_path(self, scope: Scope) -> bool:
        path: str = scope["path"]
        root_path = scope.get("root_path")
        if root_path and path.startswith(root_path):
            # Servers started with --root-path put it in front of the path.
            path = path[len(root_path) :]
        n = self._prefix_len
        return path.startswith(self._prefix) and (len(path) == n or path[n] == "/")

    def _memory_start(self) -> int:
        try:
            return traced_start() if self._tracemalloc else self._rss()
        except Exception as exc:
            self.internal_error("memory", exc)
            return -1

    def _finish(
        self,
        scope: Scope,
        t0: int,
        ttfb: int,
        end: int,
        status: int,
        nbytes: int,
        memory_start: int,
        exc: BaseException | None,
    ) -> None:
        """Record a request off the fast path: raised, cut short, or memory-sampled."""
        raised = isinstance(exc, Exception)
        flags = 0
        if not end:
            # Disconnected, cancelled or raised: the request ends now.
            end = _perf_counter_ns()
            flags = EXCEPTION if raised else INCOMPLETE
        elif raised:
            flags = EXCEPTION
        try:
            memory: int | None = None
            if memory_start >= 0:
                if self._tracemalloc:
                    memory = traced_growth(memory_start)
                else:
                    memory = self._rss() - memory_start
            if raised and not status:
                status = 500  # what the server will answer
            self.recorder.record(
                self._key(scope), (ttfb or end) - t0, end - t0, status, nbytes, memory, flags, end
            )
        except Exception as exc:
            self.internal_error("record", exc)

    def _key(self, scope: Scope) -> str:
        if self._route_key is not None:
            try:
                return str(self._route_key(scope)) or UNMATCHED
            except Exception as exc:
                self.internal_error("route_key", exc)
                return UNMATCHED
        route = scope.get("route")
        if route is None:
            return UNMATCHED
        ident = route
        fastapi_scope = scope.get("fastapi")
        if fastapi_scope:
            context = fastapi_scope.get(_FASTAPI_CONTEXT_KEY)
            if context is not None and context.original_route is route:
                ident = context
        hit = self._memo.get((id(ident), scope["method"], scope.get("root_path", "")))
        if hit is not None:
            return hit[1]
        # Starlette's mounts keep the root path they started from; without a
        # mount the root path is still the one this middleware saw.
        return self._keys.resolve(scope, scope.get("app_root_path", scope.get("root_path", "")))

    def internal_error(self, kind: str, exc: BaseException) -> None:
        """Count a failure inside asgi_perf; log each kind once, never raise."""
        self.internal_errors += 1
        if kind not in self._logged:
            self._logged.add(kind)
            logger.error(
                "asgi_perf internal error (%s); the request was served", kind, exc_info=exc
            )

    def in_flight(self) -> dict[str, int]:
        """Requests running now, by route key (routing has usually happened)."""
        counts: dict[str, int] = {}
        capped = self.recorder.capped
        for scope in list(self._active.values()):
            key = capped(self._key(scope))
            counts[key] = counts.get(key, 0) + 1
        return counts

    def snapshot(self, *, histograms: bool = False) -> dict[str, Any]:
        """Everything measured so far, as served by ``GET {prefix}/stats``."""
        snap = self.recorder.snapshot(self.in_flight(), self.memory_method, histograms)
        snap["pid"] = os.getpid()
        snap["internal_errors"] = self.internal_errors
        snap["profiling"] = {
            "requests": None if self.requests is None else self.requests.stats(),
            "windows": self.windows.stats(),
            "store": self.store.stats(),
        }
        snap["process"] = process_memory()
        snap["memory_note"] = (
            "per-request memory is the growth of process RSS (sampled requests) "
            "or the tracemalloc peak; concurrent requests blur both"
        )
        if self.budgets:
            checked = self.budgets.check(snap)
            snap["budgets"] = {
                "ok": checked["ok"],
                "failed": sum(1 for v in checked["verdicts"] if v["verdict"] == "fail"),
            }
            for route in snap["routes"]:
                route["budget"] = self.budgets.route_verdict(route)
        return dict(sorted(snap.items(), key=lambda kv: kv[0] != "schema"))

    def reset(self) -> dict[str, Any]:
        """Clear all numbers; returns the snapshot that was cleared."""
        cleared = self.snapshot()
        self.recorder.reset()
        return cleared


def _file_size(path: object) -> int:
    """Bytes of a file sent by ``http.response.pathsend`` (0 when unknown)."""
    try:
        return os.stat(path).st_size if isinstance(path, (str, os.PathLike)) else 0
    except OSError:
        return 0
