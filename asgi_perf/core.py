"""PerfCore: everything asgi_perf measures and keeps, for one process.

Built from a ``PerfConfig``; knows nothing of ASGI messages. The middleware
feeds it from the hot path, the ``/_perf`` app reads it, and each
collaborator gets only the piece it needs (a store, a callable).
"""

from __future__ import annotations

import logging
import os
import tracemalloc
from typing import Any

from asgi_perf._types import Scope
from asgi_perf.budgets import BudgetSet, load_budgets
from asgi_perf.config import PerfConfig
from asgi_perf.engines import Engine, check_engine_name
from asgi_perf.memory import process_memory
from asgi_perf.profiling import RequestProfiler, engine_for
from asgi_perf.routes import RouteKeys
from asgi_perf.stats.store import Recorder
from asgi_perf.storage import ProfileStore
from asgi_perf.window import Windows

logger = logging.getLogger("asgi_perf")

MEMORY_NOTE = (
    "per-request memory is the growth of process RSS (sampled requests) "
    "or the tracemalloc peak; concurrent requests blur both"
)


class PerfCore:
    """The recorder, route keys, budgets, profile store, engines and windows."""

    def __init__(self, config: PerfConfig) -> None:
        self.config = cfg = config
        self.internal_errors = 0
        self._logged: set[str] = set()
        self.budgets: BudgetSet = load_budgets(cfg.budgets, min_samples=cfg.min_samples)
        self.recorder = Recorder(max_routes=cfg.max_routes, window_s=cfg.recent_window_s)
        self.keys = RouteKeys(cfg.route_key, self.internal_error)
        # Requests in flight, by their start time (ns): read by ``in_flight``.
        self.active: dict[int, Scope] = {}
        self.memory_method = "tracemalloc" if cfg.tracemalloc else "rss"
        self.started_tracemalloc = False
        if cfg.enabled and cfg.tracemalloc and not tracemalloc.is_tracing():
            tracemalloc.start()
            self.started_tracemalloc = True
        self.store = ProfileStore(
            max_profiles=cfg.max_profiles,
            max_bytes=cfg.max_profile_bytes,
            profile_dir=cfg.profile_dir if cfg.enabled else None,
            keep_slowest=cfg.keep_slowest,
            keep_last=cfg.keep_last,
            on_error=self.internal_error,
        )
        self._engines: dict[str, Engine] = {}
        self.requests: RequestProfiler | None = None
        if cfg.enabled:
            self.requests = RequestProfiler(
                self.engine(cfg.engine),
                self.store,
                max_concurrent=cfg.max_concurrent_profiles,
                over_budget=self.over_budget,
                on_error=self.internal_error,
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
            requests.paused = self.windows.running

    def engine(self, name: str) -> Engine:
        """The engine called ``name``, one instance per core (single-flight)."""
        engine = self._engines.get(name)
        if engine is None:
            cfg = self.config
            engine = self._engines[name] = engine_for(
                check_engine_name(name), cfg.profile_interval_ms, cfg.yappi_clock
            )
        return engine

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
        snap["memory_note"] = MEMORY_NOTE
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
