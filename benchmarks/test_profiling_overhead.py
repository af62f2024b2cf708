"""What a profiled request costs, per engine, in-process, next to bare and unprofiled.

Four ways to serve the same request, side by side:

- ``bare``: no middleware;
- ``asgi_perf``: PerfMiddleware with ``sample_rate=0`` (the default): what
  every unprofiled request pays;
- ``profiled-<engine>``: every request sends ``X-Perf-Profile: 1`` and is
  profiled by that engine; the difference to ``asgi_perf`` is the cost of
  one request profile, start to stored.

Every profile asked for by header is kept, so once ``max_profiles`` (200) is
reached each new one evicts the oldest: the figures include that, as a
service profiling by header or by ``sample_rate`` for a while would pay it.
Two requests: the trivial ``GET /`` (the fixed cost of a profile) and the
shop's ``GET /shop/orders/17`` (a few nested calls, real stacks to store).
No wall-clock limits are asserted; the summary prints after the tables.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from asgi_perf import PerfMiddleware
from benchmarks._driver import drive
from benchmarks.apps import find_middleware, make_app

ENGINES = ("pyinstrument", "yappi", "cprofile")
KINDS = ("bare", "asgi_perf", *(f"profiled-{engine}" for engine in ENGINES))
# path -> the app that serves it (the driver sends no query string).
REQUESTS = {"/": "trivial", "/shop/orders/17": "shop"}
PROFILE_ME = ((b"x-perf-profile", b"1"),)
# Profiled requests with the deterministic engines take milliseconds:
# smaller batches than test_overhead.py keep this file under a minute.
BATCH = 30
ROUNDS = 12
WARMUP_ROUNDS = 2
SUMMARY_ROUNDS = 11


def _build(kind: str, path: str) -> tuple[Any, tuple[tuple[bytes, bytes], ...]]:
    """The app for ``kind`` and the headers its requests carry."""
    app_name = REQUESTS[path]
    if kind == "bare":
        return make_app("bare", app=app_name), ()
    if kind == "asgi_perf":
        return make_app("asgi_perf", {"sample_rate": 0.0}, app=app_name), ()
    engine = kind.removeprefix("profiled-")
    return make_app("asgi_perf", {"engine": engine}, app=app_name), PROFILE_ME


def _check(app: Any, kind: str, sent: int) -> None:
    """Every request counted; profiled exactly when it was meant to be, none failed."""
    if kind == "bare":
        return
    snapshot = find_middleware(app, PerfMiddleware).snapshot()
    assert snapshot["requests"] == sent
    assert snapshot["internal_errors"] == 0
    profiling = snapshot["profiling"]["requests"]
    assert profiling["failed"] == 0
    assert profiling["profiled"] == (0 if kind == "asgi_perf" else sent)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.mark.parametrize("path", REQUESTS)
@pytest.mark.parametrize("kind", KINDS)
def test_profiled_request(
    benchmark: BenchmarkFixture, loop: asyncio.AbstractEventLoop, kind: str, path: str
) -> None:
    app, headers = _build(kind, path)
    benchmark.group = f"profiled GET {path} ({BATCH} requests per round)"
    sent = 0

    def batch() -> int:
        nonlocal sent
        sent += BATCH
        return loop.run_until_complete(drive(app, path, BATCH, headers))

    answered = benchmark.pedantic(batch, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS, iterations=1)

    assert answered == BATCH
    _check(app, kind, sent)
    # None under --benchmark-disable, where the function runs once as a smoke test.
    if benchmark.stats is not None:
        benchmark.extra_info["batch"] = BATCH
        us_per_request = benchmark.stats.stats.median / BATCH * 1e6
        benchmark.extra_info["us_per_request"] = round(us_per_request, 3)


def _interleaved(loop: asyncio.AbstractEventLoop) -> dict[str, dict[str, list[float]]]:
    """µs per request of every (path, kind), one value per round, kinds interleaved."""
    built = {(path, kind): _build(kind, path) for path in REQUESTS for kind in KINDS}
    sent = dict.fromkeys(built, 0)
    for key, (app, headers) in built.items():
        loop.run_until_complete(drive(app, key[0], BATCH, headers))
        sent[key] += BATCH
    results: dict[str, dict[str, list[float]]] = {
        path: {kind: [] for kind in KINDS} for path in REQUESTS
    }
    for round_ in range(SUMMARY_ROUNDS):
        # Rotate the order so no kind always runs first (cold) or last.
        shift = round_ % len(KINDS)
        order = KINDS[shift:] + KINDS[:shift]
        for path in REQUESTS:
            for kind in order:
                app, headers = built[(path, kind)]
                t0 = time.perf_counter_ns()
                answered = loop.run_until_complete(drive(app, path, BATCH, headers))
                elapsed = time.perf_counter_ns() - t0
                assert answered == BATCH
                sent[(path, kind)] += BATCH
                results[path][kind].append(elapsed / BATCH / 1e3)
    for (path, kind), (app, _) in built.items():
        _check(app, kind, sent[(path, kind)])
    return results


def _report(results: dict[str, dict[str, list[float]]]) -> tuple[list[str], dict[str, Any]]:
    lines = [
        f"profiled requests, in-process, {SUMMARY_ROUNDS} interleaved rounds x {BATCH} requests;",
        "vs bare / per profile = median over rounds of (kind - bare) / (kind - asgi_perf "
        "unprofiled) in the same round",
        f"{'request':<22} {'kind':<22} {'median us':>10} {'vs bare us':>11} {'per profile us':>15}",
    ]
    info: dict[str, Any] = {}
    for path, by_kind in results.items():
        bare, unprofiled = by_kind["bare"], by_kind["asgi_perf"]
        info[path] = {}
        for kind, values in by_kind.items():
            vs_bare = statistics.median(v - b for v, b in zip(values, bare, strict=True))
            per_profile = statistics.median(v - u for v, u in zip(values, unprofiled, strict=True))
            shown_bare = "-" if kind == "bare" else f"{vs_bare:+.1f}"
            shown_profile = f"{per_profile:+.1f}" if kind.startswith("profiled-") else "-"
            lines.append(
                f"{'GET ' + path:<22} {kind:<22} {statistics.median(values):>10.1f} "
                f"{shown_bare:>11} {shown_profile:>15}"
            )
            info[path][kind] = {
                "us_per_request": round(statistics.median(values), 2),
                "added_us_vs_bare": round(vs_bare, 2),
                "added_us_vs_unprofiled": round(per_profile, 2),
            }
    return lines, info


def test_profiled_summary_interleaved(
    benchmark: BenchmarkFixture, loop: asyncio.AbstractEventLoop, summary_lines: list[str]
) -> None:
    benchmark.group = "summary: profiled requests, interleaved (one round = the whole run)"
    results = benchmark.pedantic(_interleaved, args=(loop,), rounds=1, iterations=1)
    lines, info = _report(results)
    benchmark.extra_info.update(info)
    summary_lines.extend(lines)
