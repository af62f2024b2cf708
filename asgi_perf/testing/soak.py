"""Soak an app in-process: N requests, then is its memory flat?

``soak(app, "/items", requests=2000)`` serves ``app`` in-process (lifespan
included) on ``PerfTestClient``'s transport, reads the process RSS and the
tracemalloc traced size every ``every`` requests after a warm-up, and judges
each series with ``asgi_perf.memory.trend``, the requests done as its x: a
leak grows with the requests served, not with the time they took. RSS grows
only once the memory the process freed before is reused (a long test run has
plenty): the traced size is the sharper of the two. ``soak`` blocks its caller
(the app has a loop thread of its own); ``asoak`` runs it in a worker thread.
"""

from __future__ import annotations

import functools
import gc
import os
import time
import tracemalloc as tm
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import anyio.to_thread
import httpx

from asgi_perf._types import ASGIApp, Receive, Scope, Send
from asgi_perf.errors import ConfigError
from asgi_perf.memory import read_rss
from asgi_perf.memory.trend import MIN_POINTS, Trend, fit, trend
from asgi_perf.testing.memory_watch import MB, _relative, size_text
from asgi_perf.testing.transport import LoopTransport
from asgi_perf.units import parse_size_mb

PathLike = str | Sequence[str] | Callable[[int], str]

TOP_SITES = 5
DEFAULT_POINTS = 50  # readings after the warm-up: plenty for a line, few collections
_NOT_THE_APPS = (os.path.dirname(os.path.dirname(__file__)) + os.sep, tm.__file__, "<unknown>")


class SoakPoint(NamedTuple):
    """One reading: after ``requests`` requests, RSS and traced size in MB."""

    requests: int
    rss_mb: float
    traced_mb: float | None  # None without tracemalloc


class GrowingSite(NamedTuple):
    """A line whose live allocations grew from the end of the warm-up to the end."""

    filename: str  # relative to the working directory when under it
    lineno: int
    size_diff: int  # bytes
    count_diff: int  # blocks

    def __str__(self) -> str:
        blocks = f"{self.count_diff:+d} block{'s' * (abs(self.count_diff) != 1)}"
        return f"{self.filename}:{self.lineno}: +{size_text(self.size_diff)} in {blocks}"


class Series(NamedTuple):
    """One series after the warm-up: its verdict, its slope, its growth."""

    name: str  # "rss" or "tracemalloc"
    trend: Trend
    per_1000_mb: float  # the least-squares slope times 1 000 requests
    growth_mb: float  # the rise of that line over the readings

    @property
    def flat(self) -> bool:
        return self.trend.trend == "flat"


@dataclass(frozen=True)
class SoakResult:
    """What a soak measured, and its verdicts (``traced`` is None without tracemalloc)."""

    label: str  # "GET /items"
    requests: int
    warmup: int
    every: int
    points: tuple[SoakPoint, ...]
    rss: Series
    traced: Series | None
    sites: tuple[GrowingSite, ...]  # the lines that grew most, largest first
    statuses: dict[int, int]  # responses per status code
    seconds: float
    max_growth_mb: float | None

    @property
    def series(self) -> tuple[Series, ...]:
        return (self.rss,) if self.traced is None else (self.rss, self.traced)

    def problems(self) -> list[str]:
        """One line per growing series or broken limit; empty when memory stayed flat."""
        found, limit = [], self.max_growth_mb
        for s in self.series:
            if s.trend.trend == "growing":
                found.append(f"{s.name} is growing: {self._numbers(s)} (r2 {s.trend.r2 or 0:.2f})")
            elif limit is not None and s.growth_mb > limit:
                found.append(f"{s.name} grew more than {limit:g} MB: {self._numbers(s)}")
        return found

    def summary(self) -> str:
        """A few lines for people: each series' verdict, then the lines that grew."""
        lines = [
            f"soak {self.label}: {self.requests} requests ({self.warmup} of warm-up, "
            f"a reading every {self.every}) in {self.seconds:.2f} s",
            *(f"  {s.name}: {s.trend.trend}, {self._numbers(s)}" for s in self.series),
        ]
        if self.sites:
            lines.append("  growing sites (tracemalloc, by line, since the warm-up):")
            lines.extend(f"    {site}" for site in self.sites)
        return "\n".join(lines)

    def check(self) -> None:
        """Raise ``AssertionError`` listing the problems, then the summary."""
        __tracebackhide__ = True
        problems = self.problems()
        if problems:
            raise AssertionError("\n".join([*problems, self.summary()]))

    def _numbers(self, s: Series) -> str:
        return (
            f"{s.growth_mb:+.2f} MB over the {self.requests - self.warmup} requests after "
            f"the warm-up, {s.per_1000_mb:+.3f} MB per 1000 requests"
        )


def soak(
    app: ASGIApp,
    path: PathLike = "/",
    *,
    method: str = "GET",
    requests: int = 2000,
    warmup: int | None = None,
    every: int | None = None,
    json: Any = None,
    headers: dict[str, str] | None = None,
    max_growth_mb: float | str | None = None,
    tracemalloc: bool = True,
    check: bool = True,
    allow_errors: bool = False,
) -> SoakResult:
    """Make ``requests`` requests to ``app``; raise ``AssertionError`` if its memory grows.

    ``path``: one path, a list taken in turn, or a function of the request's
    index. The first ``warmup`` requests (default a tenth) fill caches and are
    not judged; then RSS and the traced size (``tracemalloc``: started for the
    soak if off) are read every ``every`` requests (default: 50 readings),
    each after a full collection. ``max_growth_mb`` (MB, or ``"5 MB"``) limits
    either series' fitted growth; ``check=False`` only returns the result. A
    status >= 400 raises unless ``allow_errors``: no soaking a 404 page.
    """
    __tracebackhide__ = True  # pytest shows the test's line, not this one
    warmup, every = _plan(requests, warmup, every)
    limit = None if max_growth_mb is None else parse_size_mb(max_growth_mb, name="max_growth_mb")
    label, url = _paths(path)
    started = tracemalloc and not tm.is_tracing()
    statuses: Counter[int] = Counter()
    points: list[SoakPoint] = []
    snapshots: list[tm.Snapshot] = []  # at the end of the warm-up and at the end
    began = time.perf_counter()
    # Objects older than the soak are set aside: the collection before each reading
    # walks the soak's only, not a whole test process (tens of ms). Freeing them could
    # only lower the readings. Not if others froze some: unfreeze() would thaw those.
    freeze = gc.get_freeze_count() == 0
    if freeze:
        gc.collect()
        gc.freeze()
    if started:
        tm.start()
    try:
        with _client(app) as client:
            for done in range(requests + 1):
                if done == warmup and tracemalloc:
                    snapshots.append(_snapshot())
                if done >= warmup and ((done - warmup) % every == 0 or done == requests):
                    points.append(_read(done, tracemalloc))
                if done == requests:
                    break
                target = url(done)
                status = client.request(method, target, json=json, headers=headers).status_code
                statuses[status] += 1
                if status >= 400 and not allow_errors:
                    raise AssertionError(
                        f"soak: {method} {target} answered {status} (request {done + 1}); "
                        "allow_errors=True soaks an error path"
                    )
            if tracemalloc:
                snapshots.append(_snapshot())
    finally:
        if started:
            tm.stop()
        if freeze:
            gc.unfreeze()
    xs = [float(p.requests) for p in points]
    traced = [p.traced_mb or 0.0 for p in points]
    result = SoakResult(
        label=f"{method} {label}",
        requests=requests,
        warmup=warmup,
        every=every,
        points=tuple(points),
        rss=_judge("rss", xs, [p.rss_mb for p in points], requests),
        traced=_judge("tracemalloc", xs, traced, requests) if tracemalloc else None,
        sites=_sites(snapshots),
        statuses=dict(sorted(statuses.items())),
        seconds=time.perf_counter() - began,
        max_growth_mb=limit,
    )
    if check:
        result.check()
    return result


async def asoak(app: ASGIApp, path: PathLike = "/", **options: Any) -> SoakResult:
    """``soak(app, path, **options)`` in a worker thread: the caller's loop keeps
    running, and what it allocates meanwhile is read with the app's."""
    return await anyio.to_thread.run_sync(functools.partial(soak, app, path, **options))


def _plan(requests: int, warmup: int | None, every: int | None) -> tuple[int, int]:
    warmup = requests // 10 if warmup is None else warmup
    if not 0 <= warmup < requests:
        raise ConfigError(f"warmup: 0 <= warmup < requests needed, got {warmup} and {requests}")
    judged = requests - warmup
    every = max(1, judged // DEFAULT_POINTS) if every is None else every
    if every < 1:
        raise ConfigError(f"every: must be at least 1, got {every!r}")
    # One reading at the end of the warm-up, one every `every`, one at the very end.
    if (points := 1 + judged // every + (judged % every != 0)) < MIN_POINTS:
        raise ConfigError(
            f"every: {points} readings after the warm-up ({judged} requests, every {every}), "
            f"the trend needs {MIN_POINTS}: make more requests or read more often"
        )
    return warmup, every


def _paths(path: PathLike) -> tuple[str, Callable[[int], str]]:
    """How the soak names its paths, and the path of the i-th request."""
    if isinstance(path, str):
        return path, lambda _: path
    if callable(path):
        return f"{getattr(path, '__name__', 'path')}(i)", path
    paths = list(path)
    if not paths:
        raise ConfigError("path: an empty list of paths")
    return ", ".join(paths), lambda i: paths[i % len(paths)]


def _client(app: ASGIApp) -> httpx.Client:
    # The app itself, not wrapped by PerfMiddleware: the memory measured is the app's.
    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            # Servers hand every request a shallow copy of the lifespan state.
            scope["state"] = dict(transport.state)
        await app(scope, receive, send)

    transport = LoopTransport(serve, raise_app_exceptions=True)
    return httpx.Client(
        transport=transport, base_url="http://testserver", follow_redirects=True, trust_env=False
    )


def _read(done: int, traced: bool) -> SoakPoint:
    gc.collect()  # cycles not collected yet are no leak
    return SoakPoint(done, read_rss() / MB, tm.get_traced_memory()[0] / MB if traced else None)


def _snapshot() -> tm.Snapshot:
    gc.collect()  # garbage is not a growing site
    return tm.take_snapshot()


def _judge(name: str, xs: list[float], ys: list[float], requests: int) -> Series:
    line = fit(xs, ys)
    slope = 0.0 if line is None else line.slope
    # recent_s is counted in requests here: the whole stretch after the warm-up is judged.
    verdict = trend(xs, ys, from_start=False, recent_s=float(requests))
    return Series(name, verdict, slope * 1000, slope * (xs[-1] - xs[0]))


def _sites(snapshots: list[tm.Snapshot]) -> tuple[GrowingSite, ...]:
    if len(snapshots) < 2:
        return ()
    before, after = snapshots
    # Filtered after grouping by line: Snapshot.filter_traces would match every trace.
    # Allocations of tracemalloc's snapshots and of asgi_perf's bookkeeping are not the app's.
    sites: list[GrowingSite] = []
    for stat in after.compare_to(before, "lineno"):  # the largest changes first
        frame = stat.traceback[0]
        if stat.size_diff > 0 and not frame.filename.startswith(_NOT_THE_APPS):
            where = _relative(frame.filename, Path.cwd())
            sites.append(GrowingSite(where, frame.lineno, stat.size_diff, stat.count_diff))
    return tuple(sites[:TOP_SITES])
