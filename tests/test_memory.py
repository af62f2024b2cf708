"""The memory pieces on their own: the trend, the route schedule, readings, the timeline."""

from __future__ import annotations

import csv
import io
import random
import time

import pytest

from asgi_perf.budgets import load_budgets
from asgi_perf.errors import ConfigError
from asgi_perf.memory.routes import RouteMemory
from asgi_perf.memory.rss import RSSHistory, read_rss
from asgi_perf.memory.timeline import CSV_COLUMNS, Timeline
from asgi_perf.memory.trend import MIN_POINTS, fit, trend

# --------------------------------------------------------------------------- trend


def test_fit_recovers_a_line_exactly():
    xs = [float(x) for x in range(20)]
    found = fit(xs, [3.0 * x + 7.0 for x in xs])
    assert found is not None
    assert found.slope == pytest.approx(3.0)
    assert found.intercept == pytest.approx(7.0)
    assert found.r2 == pytest.approx(1.0)
    assert fit([1.0], [2.0]) is None
    assert fit([1.0, 1.0], [2.0, 3.0]) is None


def test_a_steady_leak_is_growing_at_its_rate():
    rng = random.Random(1)
    # 2 MB a minute, noise of a few pages, a point every 5 s for 5 minutes.
    xs = [5.0 * i for i in range(61)]
    ys = [100 + x / 30 + rng.uniform(-0.05, 0.05) for x in xs]
    found = trend(xs, ys)
    assert found.trend == "growing", found.reason
    assert found.slope_mb_per_h == pytest.approx(120.0, rel=0.02)
    assert found.warmup_points == 6


def test_flat_noise_is_flat():
    rng = random.Random(2)
    xs = [5.0 * i for i in range(360)]
    ys = [80 + rng.uniform(-1.5, 1.5) for _ in xs]
    found = trend(xs, ys)
    assert found.trend == "flat"
    assert found.slope_mb_per_h is not None and abs(found.slope_mb_per_h) < 1.0


def test_one_step_is_not_a_leak():
    # A buffer allocated once, half-way: RSS jumps by 20 MB and stays.
    xs = [5.0 * i for i in range(60)]
    for at in (15, 30, 45):
        ys = [50.0 if i < at else 70.0 for i in range(60)]
        found = trend(xs, ys, from_start=False)
        assert found.trend == "flat", (at, found.reason)


def test_growth_under_a_megabyte_is_noise():
    xs = [5.0 * i for i in range(60)]
    ys = [50 + 0.5 * x / xs[-1] for x in xs]  # 0.5 MB over five minutes, perfectly steady
    assert trend(xs, ys, from_start=False).trend == "flat"


def test_too_few_points_give_no_slope():
    found = trend([0.0, 1.0, 2.0], [1.0, 2.0, 3.0])
    assert found.slope_mb_per_h is None
    assert found.trend == "flat"
    assert str(MIN_POINTS) in found.reason


def test_the_warm_up_is_left_out_of_the_slope():
    xs = [float(i) for i in range(100)]
    # Start-up fills caches for ten points, then nothing moves.
    ys = [10.0 * min(i, 10) for i in range(100)]
    found = trend(xs, ys)
    assert found.slope_mb_per_h == pytest.approx(0.0, abs=1e-9)
    # Once the first points are gone from the timeline, nothing is skipped.
    assert trend(xs, ys, from_start=False).warmup_points == 0


def test_growing_is_decided_on_the_recent_points():
    # An hour flat, then a leak of 1 MB a minute for the last five minutes.
    xs = [5.0 * i for i in range(720)]
    ys = [60.0 if x < 3300 else 60.0 + (x - 3300) / 60 for x in xs]
    found = trend(xs, ys, from_start=False)
    assert found.trend == "growing", found.reason


# --------------------------------------------------------------------------- readings


def test_history_answers_with_the_last_reading_before_a_time():
    history = RSSHistory(size=4)
    assert history.before(10) is None
    for t in (10, 20, 30, 40, 50):
        history.note(t, t * 100)
    assert history.before(35) == 3000
    assert history.before(50) == 5000
    assert history.before(15) is None  # 10 fell off the bounded deque
    rss = history.read()
    assert rss == pytest.approx(read_rss(), rel=0.5)
    assert history.before(time.perf_counter_ns()) == rss
    history.clear()
    assert history.before(time.perf_counter_ns()) is None


# --------------------------------------------------------------------------- schedule


def test_a_route_is_measured_on_its_first_requests_then_every_nth():
    history = RSSHistory()
    history.note(0, 1000)
    routes = RouteMemory(history, first=3, every=4, max_keys=10)
    measured = [routes.measure("GET /a", 1) is not None for _ in range(5)]
    assert measured == [True, True, True, False, False]
    assert "GET /a" in routes.settled
    # The recorder folded 3 + 4 requests: the 7th is due again.
    routes.folded("GET /a", 6)
    assert "GET /a" in routes.settled
    routes.folded("GET /a", 7)
    assert "GET /a" not in routes.settled
    assert routes.measure("GET /a", 1) is not None
    assert "GET /a" in routes.settled
    # A fold of many requests at once owes one reading per `every`.
    routes.folded("GET /a", 7 + 4 * 3)
    taken = sum(routes.measure("GET /a", 1) is not None for _ in range(10))
    assert taken == 3


def test_a_rare_route_is_measured_from_its_first_request():
    history = RSSHistory()
    history.note(0, 1000)
    routes = RouteMemory(history, first=20, every=16, max_keys=10)
    for _ in range(300):
        routes.measure("GET /busy", 1)
    assert routes.measure("GET /rare", 1) is not None


def test_the_schedule_is_bounded_and_needs_a_reading_from_before():
    history = RSSHistory()
    routes = RouteMemory(history, first=2, every=2, max_keys=2)
    assert routes.measure("GET /a", 1) is None  # no reading from before it began
    history.note(0, 1)
    assert routes.measure("GET /a", 5) is not None
    assert routes.measure("GET /b", 5) is not None
    assert routes.measure("GET /c", 5) is None  # a third key: past the bound
    routes.clear()
    assert not routes.settled


# --------------------------------------------------------------------------- timeline


def test_the_timeline_is_bounded_and_its_csv_starts_with_the_seed_columns():
    count = iter(range(1000))
    timeline = Timeline(0.05, 5, lambda: next(count), lambda kind, exc: None)
    for i in range(8):
        timeline.tick(float(i))
    points = timeline.points()
    assert len(points) == 5
    assert not timeline.from_start
    assert [p.requests for p in points] == [3, 4, 5, 6, 7]
    first = points[0]
    assert first.rss_mb > 1 and first.vms_mb >= first.rss_mb
    assert first.threads >= 1 and len(first.gc) == 3
    rows = list(csv.reader(io.StringIO(timeline.csv())))
    assert rows[0][:4] == ["elapsed_min", "rss_mb", "vms_mb", "connections"]
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 6
    assert float(rows[1][1]) == first.rss_mb
    timeline.clear()
    assert timeline.points() == [] and timeline.from_start


def test_the_timeline_takes_a_point_only_when_one_is_due():
    timeline = Timeline(10.0, 100, lambda: 0, lambda kind, exc: None)
    for now in (0.0, 1.0, 9.9, 10.0, 15.0, 20.5):
        timeline.tick(now)
    assert len(timeline.points()) == 3  # at 0, 10 and 20.5


# --------------------------------------------------------------------------- budgets


def test_one_observation_over_a_maximum_fails_whatever_the_sample_count():
    budgets = load_budgets({"GET /big": {"max_mb": 8}, "GET /small": {"max_mb": 50}})
    snap = {
        "routes": [
            {"route": "GET /big", "count": 3, "memory_mb": {"samples": 3, "max": 24.1}},
            {"route": "GET /small", "count": 25, "memory_mb": {"samples": 25, "max": 0.1}},
        ]
    }
    verdicts = {v["route"]: v["verdict"] for v in budgets.check(snap)["verdicts"]}
    assert verdicts == {"GET /big": "fail", "GET /small": "pass"}
    # Under the limit, a pass still needs min_samples.
    snap["routes"][1]["memory_mb"]["samples"] = 3
    verdicts = {v["route"]: v["verdict"] for v in budgets.check(snap)["verdicts"]}
    assert verdicts["GET /small"] == "insufficient"


def test_process_budgets_come_from_a_process_table(tmp_path):
    path = tmp_path / "budgets.toml"
    path.write_text(
        '[budgets."GET /x"]\np99_ms = 10\n\n'
        '[budgets.process]\nmax_rss_mb = "512 MB"\nmax_growth_mb_per_h = "10 MB/h"\n'
    )
    budgets = load_budgets(path)
    assert dict(budgets.process) == {"max_rss_mb": 512.0, "max_growth_mb_per_h": 10.0}
    process = {"peak_rss_mb": 600.0, "slope_mb_per_h": 3.0, "trend_points": 9}
    snap = {"routes": [], "process": process}
    found = {v["metric"]: v for v in budgets.check(snap)["verdicts"] if v["route"] == "process"}
    assert found["max_rss_mb"]["verdict"] == "fail"
    assert found["max_rss_mb"]["measured"] == 600.0
    assert found["max_growth_mb_per_h"]["verdict"] == "pass"
    assert not budgets.check(snap)["ok"]
    # With workers, the worst process decides.
    snap = {
        "routes": [],
        "processes": [
            {"peak_rss_mb": 100.0, "slope_mb_per_h": 1.0, "trend_points": 20},
            {"peak_rss_mb": 110.0, "slope_mb_per_h": 40.0, "trend_points": 20},
        ],
    }
    found = {v["metric"]: v for v in budgets.process_verdicts(snap)}
    assert found["max_growth_mb_per_h"]["verdict"] == "fail"
    assert found["max_growth_mb_per_h"]["measured"] == 40.0
    assert found["max_rss_mb"]["verdict"] == "pass"
    # No slope yet: not enough points to say.
    snap = {"routes": [], "process": {"peak_rss_mb": 10.0, "slope_mb_per_h": None}}
    found = {v["metric"]: v for v in budgets.process_verdicts(snap)}
    assert found["max_growth_mb_per_h"]["verdict"] == "insufficient"


@pytest.mark.parametrize(
    "table",
    [
        {"process": {"max_rss": 10}},
        {"process": {"max_rss_mb": "ten"}},
        {"process": {"max_growth_mb_per_h": "10 MB/fortnight"}},
        {"process": 5},
    ],
)
def test_bad_process_budgets_fail_at_start_up(table):
    with pytest.raises(ConfigError):
        load_budgets(table)
