"""Per-request cost of each middleware, in-process, against the same app bare.

The app is driven through the ASGI interface by ``_driver.drive`` in one
event loop per test, so neither sockets nor an HTTP client are in the
numbers: what differs between variants is only the middleware. Wall-clock
limits are not asserted (the machines running this are noisy); the figures
are printed and compared with SPEC section 9 by a reader.
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
from benchmarks.apps import PATHS, VARIANTS, find_middleware, make_app

BATCH = 200
ROUNDS = 60
WARMUP_ROUNDS = 5
# The summary run: every variant, interleaved round by round, so that a
# slow minute of a noisy machine hits all of them alike.
SUMMARY_ROUNDS = 51
SUMMARY_BATCH = 500
TARGET_ADDED_US = 5.0
TARGET_SHARE_OF_PROMETHEUS = 0.5


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_request(
    benchmark: BenchmarkFixture, loop: asyncio.AbstractEventLoop, variant: str, path: str
) -> None:
    app = make_app(variant)
    benchmark.group = f"GET {path} ({BATCH} requests per round)"

    sent = 0

    def batch() -> int:
        nonlocal sent
        sent += BATCH
        return loop.run_until_complete(drive(app, path, BATCH))

    answered = benchmark.pedantic(batch, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS, iterations=1)

    assert answered == BATCH
    if variant == "asgi_perf":
        snapshot = find_middleware(app, PerfMiddleware).snapshot()
        assert snapshot["requests"] == sent
        assert snapshot["internal_errors"] == 0
    # None under --benchmark-disable, where the function runs once as a smoke test.
    if benchmark.stats is not None:
        benchmark.extra_info["batch"] = BATCH
        us_per_request = benchmark.stats.stats.median / BATCH * 1e6
        benchmark.extra_info["us_per_request"] = round(us_per_request, 3)


def _interleaved(loop: asyncio.AbstractEventLoop) -> dict[str, dict[str, list[float]]]:
    """µs per request of every (path, variant), one value per round."""
    apps = {variant: make_app(variant) for variant in VARIANTS}
    for app in apps.values():
        for path in PATHS:
            loop.run_until_complete(drive(app, path, SUMMARY_BATCH))
    results: dict[str, dict[str, list[float]]] = {
        path: {variant: [] for variant in VARIANTS} for path in PATHS
    }
    for round_ in range(SUMMARY_ROUNDS):
        # Rotate the order so no variant always runs first (cold) or last.
        shift = round_ % len(VARIANTS)
        order = VARIANTS[shift:] + VARIANTS[:shift]
        for path in PATHS:
            for variant in order:
                t0 = time.perf_counter_ns()
                answered = loop.run_until_complete(drive(apps[variant], path, SUMMARY_BATCH))
                elapsed = time.perf_counter_ns() - t0
                assert answered == SUMMARY_BATCH
                results[path][variant].append(elapsed / SUMMARY_BATCH / 1e3)
    return results


def _report(results: dict[str, dict[str, list[float]]]) -> tuple[list[str], dict[str, Any]]:
    lines = [
        f"in-process, {SUMMARY_ROUNDS} interleaved rounds x {SUMMARY_BATCH} requests; "
        "added = median over rounds of (variant - bare) in the same round;",
        "added % = median over rounds of (variant / bare - 1);",
        "min = fastest round, the least disturbed by the machine's other work",
        f"{'request':<16} {'variant':<11} {'median us':>10} {'added us':>9} {'added %':>8} "
        f"{'min us':>8} {'added':>7}",
    ]
    info: dict[str, Any] = {}
    for path, by_variant in results.items():
        bare = by_variant["bare"]
        bare_min = min(bare)
        added: dict[str, float] = {}
        added_pct: dict[str, float] = {}
        for variant, values in by_variant.items():
            median = statistics.median(values)
            delta = statistics.median(v - b for v, b in zip(values, bare, strict=True))
            added[variant] = delta
            share_of_bare = statistics.median(v / b - 1 for v, b in zip(values, bare, strict=True))
            added_pct[variant] = share_of_bare * 100
            fastest = min(values)
            shown = "-" if variant == "bare" else f"{delta:+.2f}"
            shown_pct = "-" if variant == "bare" else f"{share_of_bare * 100:+.1f}"
            shown_min = "-" if variant == "bare" else f"{fastest - bare_min:+.2f}"
            lines.append(
                f"{'GET ' + path:<16} {variant:<11} {median:>10.2f} {shown:>9} {shown_pct:>8} "
                f"{fastest:>8.2f} {shown_min:>7}"
            )
        share = added["asgi_perf"] / added["prometheus"] if added["prometheus"] > 0 else None
        verdict_abs = "met" if added["asgi_perf"] <= TARGET_ADDED_US else "MISSED"
        verdict_rel = (
            "met" if share is not None and share < TARGET_SHARE_OF_PROMETHEUS else "MISSED"
        )
        share_text = "n/a" if share is None else f"{share:.2f}"
        lines.append(
            f"{'GET ' + path:<16} asgi_perf added {added['asgi_perf']:.2f} us "
            f"(target <= {TARGET_ADDED_US:g}: {verdict_abs}); "
            f"asgi_perf/prometheus overhead {share_text} "
            f"(target < {TARGET_SHARE_OF_PROMETHEUS:g}: {verdict_rel})"
        )
        info[path] = {
            "us_per_request": {v: round(statistics.median(x), 3) for v, x in by_variant.items()},
            "added_us": {v: round(d, 3) for v, d in added.items() if v != "bare"},
            "added_pct": {v: round(d, 2) for v, d in added_pct.items() if v != "bare"},
            "min_us_per_request": {v: round(min(x), 3) for v, x in by_variant.items()},
            "asgi_perf_share_of_prometheus": None if share is None else round(share, 3),
        }
    return lines, info


def test_summary_interleaved(
    benchmark: BenchmarkFixture, loop: asyncio.AbstractEventLoop, summary_lines: list[str]
) -> None:
    benchmark.group = "summary: all variants interleaved (one round = the whole run)"
    results = benchmark.pedantic(_interleaved, args=(loop,), rounds=1, iterations=1)
    lines, info = _report(results)
    benchmark.extra_info.update(info)
    summary_lines.extend(lines)
