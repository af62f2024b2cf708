"""Event-loop health: scheduling lag, and the code that blocks the loop.

The sampler's thread hands the loop a callback every ``ping_interval_s``
(``call_soon_threadsafe``) and times how long the loop takes to run it:
that is the lag every request waiting on the loop pays. When a callback
stays unanswered for ``threshold_ms`` the loop is stuck in one piece of
code; the thread reads the loop thread's stack then, while it is still
stuck, so the block names the line that blocks (a ``time.sleep`` or a sync
driver call inside an ``async def`` route), with the routes in flight.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from asgi_perf.capture import Capture, Stack
from asgi_perf.engines.sampler_impl import Sampler
from asgi_perf.labels import LOOP_THREAD, route_frame
from asgi_perf.stats.histogram import Histogram


@dataclass
class Block:
    """One time the loop was stuck past the threshold."""

    at: float  # time.time() when it began
    duration_ms: float
    routes: list[str]
    thread: str
    stack: Stack  # root first, each frame at the line it was on

    def to_json(self) -> dict[str, Any]:
        return {
            "at": round(self.at, 3),
            "duration_ms": round(self.duration_ms, 3),
            "routes": self.routes,
            "thread": self.thread,
            "stack": [{"function": f.function, "file": f.file, "line": f.line} for f in self.stack],
        }


@dataclass
class _Stuck:
    """What the thread saw of a callback the loop had not run yet."""

    sent: float
    route: str | None
    stack: Stack
    in_flight: list[str] = field(default_factory=list)


class LoopMonitor:
    """Lag histogram and blocking detector for the loop the app runs on."""

    def __init__(
        self,
        sampler: Sampler,
        *,
        threshold_ms: float,
        max_blocks: int,
        in_flight: Callable[[], dict[str, int]],
        ping_interval_s: float = 0.02,
    ) -> None:
        self._sampler = sampler
        self.threshold_ms = threshold_ms
        self.max_blocks = max_blocks
        self._in_flight = in_flight
        self._ping_interval_s = min(ping_interval_s, threshold_ms / 4000)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_name = ""
        self.lag = Histogram()
        self.blocks: list[Block] = []
        self.blocked_ms_total = 0.0
        self.block_count = 0
        self.route_blocks: dict[str, int] = {}
        self._sent: float | None = None
        self._last_ping = 0.0
        self._stuck: _Stuck | None = None

    @property
    def running(self) -> bool:
        return self._loop is not None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Watch ``loop`` (called on its own thread)."""
        if self._loop is loop:
            return
        self._loop = loop
        self._thread_name = threading.current_thread().name
        self._sent = None
        self._stuck = None
        self._sampler.add_hook(self.tick)

    def detach(self) -> None:
        self._sampler.remove_hook(self.tick)
        self._loop = None

    def tick(self, now: float) -> None:
        """On the sampler's thread: ping the loop, or look at it if it is stuck."""
        loop = self._loop
        if loop is None:
            return
        sent = self._sent
        if sent is None:
            if now - self._last_ping < self._ping_interval_s:
                return
            self._sent = self._last_ping = now
            try:
                loop.call_soon_threadsafe(self._pong, now)
            except RuntimeError:  # the loop is closed: the server stopped
                self._sent = None
                self.detach()
            return
        if self._stuck is None and (now - sent) * 1000 >= self.threshold_ms:
            stack, route = self._sampler.loop_snapshot()
            self._stuck = _Stuck(sent, route, stack, sorted(self._in_flight()))

    def _pong(self, sent: float) -> None:
        """On the loop: the ping ``sent`` has come through."""
        now = time.perf_counter()
        lag_ms = (now - sent) * 1000
        stuck, self._stuck = self._stuck, None
        self._sent = None
        self.lag.record(lag_ms)
        if lag_ms < self.threshold_ms:
            return
        if stuck is None or stuck.sent != sent:
            stuck = _Stuck(sent, None, ())
        self._record(now, lag_ms, stuck)

    def _record(self, now: float, lag_ms: float, stuck: _Stuck) -> None:
        routes = [stuck.route] if stuck.route else []
        routes += [r for r in stuck.in_flight if r not in routes]
        block = Block(
            at=time.time() - (time.perf_counter() - now) - lag_ms / 1000,
            duration_ms=lag_ms,
            routes=routes,
            thread=self._thread_name,
            stack=stuck.stack,
        )
        self.block_count += 1
        self.blocked_ms_total += lag_ms
        # The one stuck in it is to blame; without a stack, all in flight.
        for route in routes[:1] if stuck.route else routes:
            self.route_blocks[route] = self.route_blocks.get(route, 0) + 1
        self.blocks.append(block)
        if len(self.blocks) > self.max_blocks:
            # The longest are kept: they are the ones worth fixing first.
            self.blocks.remove(min(self.blocks, key=lambda b: b.duration_ms))

    def summary(self) -> dict[str, Any]:
        """The short form in ``/stats``: lag quantiles and the blocks, without stacks."""
        return {
            "lag_ms": self.lag.summary(),
            # As in /loop, without the stacks: those are in /loop.
            "blocks": [
                {k: v for k, v in b.to_json().items() if k != "stack"}
                for b in sorted(self.blocks, key=lambda b: b.at)
            ],
            "block_count": self.block_count,
            "blocked_ms_total": round(self.blocked_ms_total, 3),
            "threshold_ms": self.threshold_ms,
            "monitoring": self.running,
        }

    def report(self) -> dict[str, Any]:
        """``GET /loop``: lag, every kept block with its stack."""
        lag = self.lag.summary()
        return {
            "schema": 1,
            "monitoring": self.running,
            "lag_ms": {k: lag[k] for k in ("p50", "p90", "p99", "max", "mean")},
            "pings": self.lag.count,
            "blocks": [b.to_json() for b in sorted(self.blocks, key=lambda b: b.at)],
            "block_count": self.block_count,
            "blocked_ms_total": round(self.blocked_ms_total, 3),
            "threshold_ms": self.threshold_ms,
            "routes": dict(sorted(self.route_blocks.items())),
        }

    def blocks_capture(self) -> Capture:
        """Every kept block's stack as one profile, weighted by how long it blocked."""
        stacks: dict[Stack, float] = {}
        for b in self.blocks:
            label = route_frame(b.routes[0] if b.routes else "<unknown>")
            # Each frame keeps the line it was on: where to look.
            stack = (label, LOOP_THREAD, *b.stack)
            stacks[stack] = stacks.get(stack, 0.0) + b.duration_ms / 1000
        return Capture(
            engine="sampler",
            stacks=stacks,
            duration_s=sum(stacks.values()),
            meta={"kind": "loop_blocks", "route": "<process>", "samples": len(self.blocks)},
        )

    def reset(self) -> None:
        self.lag = Histogram()
        self.blocks = []
        self.blocked_ms_total = 0.0
        self.block_count = 0
        self.route_blocks = {}
