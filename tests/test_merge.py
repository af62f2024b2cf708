"""Merging snapshots of several processes: exact, as if one process saw every request."""

from __future__ import annotations

import random

import pytest

from asgi_perf.stats.merge import NotMergeable, merge_snapshots
from asgi_perf.stats.store import Recorder

ROUTES = ("GET /a", "GET /b", "POST /c")


def fed(seed: int = 7, parts: int = 3, n: int = 3000) -> tuple[list[Recorder], Recorder]:
    rng = random.Random(seed)
    recorders = [Recorder() for _ in range(parts)]
    everything = Recorder()
    now = 10**12
    for i in range(n):
        total = rng.randint(10_000, 10**9)
        row = (rng.choice(ROUTES), total // 2, total, rng.choice((200, 201, 404, 500)), 100,
               rng.choice((None, 1 << 20)), 0, now + i)  # fmt: skip
        recorders[i % parts].record(*row)
        everything.record(*row)
    return recorders, everything


def test_three_parts_merge_to_what_one_process_fed_everything_reports() -> None:
    parts, everything = fed()
    merged = merge_snapshots([r.snapshot(histograms=True) for r in parts], histograms=True)
    alone = everything.snapshot(histograms=True)
    assert merged["requests"] == alone["requests"] == 3000
    for got, want in zip(merged["routes"], alone["routes"], strict=True):
        for field in ("route", "count", "errors", "status", "bytes", "latency_ms", "ttfb_ms",
                      "memory_mb", "histograms"):  # fmt: skip
            assert got[field] == want[field], field
        assert got["recent"]["count"] == want["recent"]["count"]


def test_a_part_without_histograms_is_refused_by_name() -> None:
    parts, _ = fed(parts=2, n=10)
    with pytest.raises(NotMergeable, match="histograms=1"):
        merge_snapshots([parts[0].snapshot(histograms=True), parts[1].snapshot()])
    with pytest.raises(NotMergeable):
        merge_snapshots([])
    with pytest.raises(NotMergeable, match="schema"):
        merge_snapshots([{"schema": 99, "routes": []}])


def test_routes_seen_by_one_part_only_are_kept() -> None:
    a, b = Recorder(), Recorder()
    a.record("GET /only-a", 1, 2, 200, 0, None, 0, 10**12)
    b.record("GET /only-b", 1, 2, 503, 0, None, 0, 10**12)
    merged = merge_snapshots([a.snapshot(histograms=True), b.snapshot(histograms=True)])
    assert [r["route"] for r in merged["routes"]] == ["GET /only-a", "GET /only-b"]
    assert merged["routes"][1]["errors"] == 1


def test_a_workers_state_merges_to_its_own_snapshot() -> None:
    # What a worker writes (no percentiles) gives back the numbers it would show.
    parts, _ = fed(parts=1)
    (only,) = parts
    merged = merge_snapshots([only.state()], memory_method="rss")
    alone = only.snapshot()
    for got, want in zip(merged["routes"], alone["routes"], strict=True):
        for field in ("count", "status", "latency_ms", "ttfb_ms", "memory_mb"):
            assert got[field] == want[field], field
