"""PerfMiddleware: the hot path. Times every HTTP request and hands it to the core.

The composition root: builds the ``PerfCore`` from the options, the gate and
the ``/_perf`` app, and keeps only what every request needs.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import time
from collections.abc import Awaitable
from typing import Any

from asgi_perf._types import ASGIApp, Message, Receive, Scope, Send
from asgi_perf.api import Gate, make_perf_app
from asgi_perf.api.unavailable import make_unavailable_app
from asgi_perf.budgets import BudgetSet
from asgi_perf.config import PerfConfig, option_of
from asgi_perf.core import PerfCore
from asgi_perf.db.asyncpg_logger import SEEN as ASYNCPG
from asgi_perf.db.store import DBStats
from asgi_perf.db.tally import CURRENT as _TALLY
from asgi_perf.db.tally import Tally
from asgi_perf.engines.sampler_impl import REQUEST_SCOPE
from asgi_perf.errors import ConfigError
from asgi_perf.memory import traced_growth, traced_start
from asgi_perf.profiling import PROFILE_HEADER, PROFILE_ID_KEY, Ticket, request_tag
from asgi_perf.routes import route_path
from asgi_perf.stats.store import EXCEPTION, INCOMPLETE
from asgi_perf.window import WindowFailed

logger = logging.getLogger("asgi_perf")
_perf_counter_ns = time.perf_counter_ns
# Requests per slow turn; well under BATCH, so a batch never grows far past it.
_TURN = 64
# memory_start of a request on the fast path, and of one on the slow path
# with no tracemalloc reading from its start.
_FAST = -2
_NO_MEMORY = -1
_random = random.random


class PerfMiddleware:
    """Pure ASGI middleware; ``app.add_middleware(PerfMiddleware, **options)``.

    Options are the fields of ``PerfConfig`` (or pass ``config=PerfConfig(...)``);
    ``ASGI_PERF_*`` environment variables override both.
    """

    def __init__(self, app: ASGIApp, /, config: PerfConfig | None = None, **options: Any) -> None:
        self.app = app
        # Why asgi_perf is not running, when it is not (see _step_aside).
        self.config_error: str | None = None
        # Read first: whether a bad option raises must not depend on the others.
        trusted = PerfConfig.salvage(config, **options)
        try:
            self._build(PerfConfig.from_options(config, **options))
        except Exception as exc:
            if trusted.strict:
                raise
            self._step_aside(exc, trusted)

    def _build(self, cfg: PerfConfig) -> None:
        self.config = cfg
        self.core = core = PerfCore(cfg)
        self.enabled = cfg.enabled
        if not cfg.enabled:
            # Decided once: a disabled middleware is the app, untouched.
            self.__class__ = _Disabled
        elif core.db is not None:
            # Decided once too: with db off, the hot path has not one more step.
            self.__class__ = _WithDB
            self._db = core.db
        self.gate = Gate(cfg.token, cfg.authorize, core.internal_error)
        self._perf_app: ASGIApp = make_perf_app(core, self.gate)
        self._prefix = cfg.prefix
        self._prefix_len = len(cfg.prefix)
        self._key = core.keys.key
        self._pending = core.recorder.pending
        self._active = core.active
        self._requests = core.requests
        self._sampler = core.sampler
        # A sample finds its request through this method's frame.
        core.set_request_code(PerfMiddleware.__call__.__code__)
        self._sample_rate = cfg.sample_rate
        self._lifespan_profile = cfg.lifespan_profile
        self._tracemalloc = cfg.tracemalloc
        # Routes whose requests need no memory reading now (see memory.routes):
        # the fast path's only question about memory, asked once the app ran.
        # With tracemalloc every request is measured, from its start.
        self._settled = core.memory.routes.settled
        self._route_memory = core.memory.routes.measure
        # Every few requests take the slow way out, which folds the batch of
        # finished requests: one turn comes at least every BATCH requests.
        turn = 1 if cfg.tracemalloc else _TURN
        self._turn = itertools.cycle([True] + [False] * (turn - 1)).__next__

    def _step_aside(self, exc: Exception, trusted: PerfConfig) -> None:
        """A configuration that failed: log it once, serve the app untouched,
        answer ``/_perf`` with 503 and the error (spec 7)."""
        error = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
        self.config_error = error
        self.config = trusted
        self.enabled = False
        self._prefix = trusted.prefix
        self._prefix_len = len(trusted.prefix)
        self.gate = Gate(trusted.token, trusted.authorize)
        self._perf_app = make_unavailable_app(error, option_of(error), self.gate)
        where = f"{trusted.prefix}/* answers 503 with this error" if trusted.enabled else ""
        # Loud and once: this runs when the server builds the app, at start-up.
        logger.error(
            "asgi_perf is OFF, its configuration failed: %s. The app is served without "
            "asgi_perf%s. Fix it and restart; strict=True (or ASGI_PERF_STRICT=1) makes "
            "such an error stop the app instead.",
            error,
            f"; {where}" if where else "",
            # An error that is not a configuration error is asgi_perf's own: its trace helps.
            exc_info=None if isinstance(exc, ConfigError) else exc,
        )
        self.__class__ = _Unavailable if trusted.enabled else _Disabled

    @property
    def budgets(self) -> BudgetSet:
        return self.core.budgets

    def snapshot(self, *, histograms: bool = False) -> dict[str, Any]:
        """Everything measured so far, as served by ``GET {prefix}/stats``."""
        return self.core.snapshot(histograms=histograms)

    def reset(self) -> dict[str, Any]:
        """Clear all numbers; returns the snapshot that was cleared."""
        return self.core.reset()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                # The server's loop is known from start-up on: the watchers
                # (memory readings, loop monitor) start before any request.
                self._attach_loop()
                await self._lifespan(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        # A substring test first: one C call decides for almost every request.
        if self._prefix in scope["path"] and self._is_perf_path(scope):
            self._attach_loop()
            await self._perf_app(scope, receive, send)
            return
        # Every few requests take the slow way out (batch fold, tracemalloc);
        # so does a profiled one, and one whose route is due a memory reading.
        memory_start = self._memory_start() if self._turn() else _FAST
        ticket: Ticket | None = None
        # Header membership is one C-level scan of the header list.
        if PROFILE_HEADER in scope["headers"] or (
            self._sample_rate and _random() < self._sample_rate
        ):
            ticket = await self._start_profile(scope)
            if ticket is not None:
                if memory_start == _FAST:
                    memory_start = _NO_MEMORY
                if ticket.on_demand:
                    send = ticket.announcing(send)
        if self._sampler.active:
            # Worker threads run in a copy of this context: their samples
            # find the request here (the loop's find this frame).
            REQUEST_SCOPE.set(scope)

        t0 = _perf_counter_ns()
        ttfb = end = status = nbytes = 0
        # In flight, by start time: unique among running requests, and no
        # id() call on the hot path.
        active = self._active
        active[t0] = scope

        # A plain function returning the server's awaitable: no extra
        # coroutine per message. The request ends when the app hands over
        # its last body chunk.
        def timed_send(message: Message) -> Awaitable[None]:
            nonlocal ttfb, end, status, nbytes
            kind = message["type"]
            if kind == "http.response.body":
                # try, not contextlib.suppress: no context manager per chunk.
                try:  # noqa: SIM105
                    nbytes += len(message["body"])
                except KeyError:  # the body is optional, b"" by default
                    pass
                if not message.get("more_body"):
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
            active.pop(t0, None)
            self._finish(scope, t0, ttfb, end, status, nbytes, memory_start, exc, ticket)
            raise
        active.pop(t0, None)
        if not end or memory_start != _FAST:
            # No complete response, a slow turn or a profile to close: rare.
            self._finish(scope, t0, ttfb, end, status, nbytes, memory_start, None, ticket)
            return
        try:
            key = self._key(scope)
            if key in self._settled:
                # A complete response started before its body: ttfb is set.
                self._pending.append((key, ttfb - t0, end - t0, status, nbytes, None, 0, end))
                return
        except Exception as exc:
            self.core.internal_error("record", exc)
            return
        # Among a route's first requests, or its n-th: measure its memory.
        self._finish(scope, t0, ttfb, end, status, nbytes, _NO_MEMORY, None, None)

    async def _start_profile(self, scope: Scope) -> Ticket | None:
        """A profile for this request, if it asked (through the gate) or was sampled."""
        requests = self._requests
        if requests is None:
            return None
        on_demand = PROFILE_HEADER in scope["headers"]
        if on_demand and not await self.gate.allows(scope):
            # Not allowed to ask: treated like any other request, which the
            # sampler may still pick.
            on_demand = False
            if not (self._sample_rate and _random() < self._sample_rate):
                return None
        ticket = requests.start(on_demand)
        if ticket is not None:
            scope[PROFILE_ID_KEY] = ticket.id
        return ticket

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app's lifespan, watched: ``lifespan_profile`` starts at start-up,
        and at shutdown whatever window still runs is stopped and stored (to
        ``profile_dir``), not lost with the process."""
        core = self.core
        if self._lifespan_profile:
            try:
                core.windows.start(self.config.window_engine, None, kind="lifespan")
            except WindowFailed:
                pass  # counted and logged where it failed
            except Exception as exc:
                core.internal_error("lifespan_profile", exc)

        async def watched_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                self._stop_window_at_shutdown()
            return message

        await self.app(scope, watched_receive, send)

    def _stop_window_at_shutdown(self) -> None:
        core = self.core
        window = core.windows.current
        if window is None:
            return
        try:
            meta = core.windows.stop(window.id)
        except WindowFailed:
            return  # counted and logged where it failed
        except Exception as exc:
            core.internal_error("shutdown_window", exc)
            return
        if meta is not None:
            where = self.config.profile_dir if meta.get("stored") else None
            logger.info(
                "asgi_perf: %s profile %s stopped at shutdown; %s",
                window.kind,
                meta.get("id"),
                f"written to {where}" if where else "not written (no profile_dir)",
            )

    def _attach_loop(self) -> None:
        try:
            self.core.attach_loop()
        except Exception as exc:
            self.core.internal_error("loop_monitor", exc)

    def _is_perf_path(self, scope: Scope) -> bool:
        # Servers started with --root-path put it in front of the path.
        path = route_path(scope)
        n = self._prefix_len
        return path.startswith(self._prefix) and (len(path) == n or path[n] == "/")

    def _memory_start(self) -> int:
        """The tracemalloc reading a slow turn starts from; -1 when it takes none."""
        if not self._tracemalloc:
            return _NO_MEMORY
        try:
            return traced_start()
        except Exception as exc:
            self.core.internal_error("memory", exc)
            return _NO_MEMORY

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
        ticket: Ticket | None,
    ) -> None:
        """Record a request off the fast path: raised, cut short, sampled or profiled."""
        core = self.core
        self._attach_loop()
        raised = isinstance(exc, Exception)
        flags = 0
        if not end:
            # Disconnected, cancelled or raised: the request ends now.
            end = _perf_counter_ns()
            flags = EXCEPTION if raised else INCOMPLETE
        elif raised:
            flags = EXCEPTION
        if raised and not status:
            status = 500  # what the server will answer
        key = self._key(scope)
        try:
            memory: int | None = None
            if memory_start >= 0:
                memory = traced_growth(memory_start)
            elif ticket is None and not self._tracemalloc:
                # Not a profiled request: the profiler's own memory is not the route's.
                memory = self._route_memory(key, t0)
            core.recorder.record(
                key, (ttfb or end) - t0, end - t0, status, nbytes, memory, flags, end
            )
        except Exception as exc:
            core.internal_error("record", exc)
        if ticket is not None and self._requests is not None:
            self._requests.finish(ticket, key, status or 500, (end - t0) / 1e6, request_tag(scope))


class _WithDB(PerfMiddleware):
    """``db=True``: each request gets a tally of its queries, counted when it ends.

    Around the hot path, not in it: ``PerfMiddleware.__call__`` runs as it
    is (and stays the frame the sampler finds requests by).
    """

    _db: DBStats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self._prefix in scope["path"] and self._is_perf_path(scope)):
            await PerfMiddleware.__call__(self, scope, receive, send)
            return
        tally = Tally(self._db, scope)
        token = _TALLY.set(tally)
        t0 = _perf_counter_ns()
        try:
            # Background tasks run inside this call: their queries count too.
            await PerfMiddleware.__call__(self, scope, receive, send)
        finally:
            elapsed = _perf_counter_ns() - t0
            if ASYNCPG.asyncpg:
                # asyncpg logs a query one loop turn after it ran: let it.
                await asyncio.sleep(0)
            _TALLY.reset(token)
            try:
                self._db.fold(self._db.route_of(tally), tally, elapsed)
            except Exception as exc:
                self.core.internal_error("db", exc)


class _Disabled(PerfMiddleware):
    """``enabled=False``: every scope goes to the app as it came."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class _Unavailable(PerfMiddleware):
    """A configuration error without ``strict``: the app as it came, and
    ``/_perf`` answering 503 with the error."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._prefix in scope["path"] and self._is_perf_path(scope):
            await self._perf_app(scope, receive, send)
            return
        await self.app(scope, receive, send)

    @property
    def budgets(self) -> BudgetSet:
        raise self._not_running()

    def snapshot(self, *, histograms: bool = False) -> dict[str, Any]:
        raise self._not_running()

    def reset(self) -> dict[str, Any]:
        raise self._not_running()

    def _not_running(self) -> ConfigError:
        # In-process readers (tests, plugins) get the error the log got.
        return ConfigError(f"asgi_perf is not running: {self.config_error}")


def _file_size(path: object) -> int:
    """Bytes of a file sent by ``http.response.pathsend`` (0 when unknown)."""
    try:
        return os.stat(path).st_size if isinstance(path, (str, os.PathLike)) else 0
    except OSError:
        return 0
