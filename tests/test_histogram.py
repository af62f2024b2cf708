import json
import math
import random

import pytest

from asgi_perf.stats.histogram import RELATIVE_ERROR, Histogram


def exact_quantile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank quantile, the definition the histogram promises to approximate."""
    return sorted_values[max(1, math.ceil(q * len(sorted_values))) - 1]


@pytest.mark.parametrize(
    "draw",
    [
        lambda r: r.lognormvariate(13, 1.5),  # latencies in ns, heavy tail
        lambda r: r.uniform(1, 1e9),
        lambda r: r.expovariate(1 / 5e6),
        lambda r: float(r.randint(1, 50)),  # few distinct small values
    ],
    ids=["lognormal", "uniform", "exponential", "small-integers"],
)
@pytest.mark.parametrize("q", [0.0, 0.01, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0])
def test_quantiles_within_relative_error_of_exact(draw, q):
    rng = random.Random(1234)
    values = [draw(rng) for _ in range(20_000)]
    h = Histogram()
    for v in values:
        h.record(v)
    exact = exact_quantile(sorted(values), q)
    assert abs(h.quantile(q) - exact) <= RELATIVE_ERROR * exact


def test_quantiles_agrees_with_quantile():
    rng = random.Random(7)
    h = Histogram()
    for _ in range(5000):
        h.record(rng.lognormvariate(10, 2))
    many = h.quantiles()
    assert list(many) == ["p50", "p90", "p95", "p99", "p999"]
    for name, q in [("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99), ("p999", 0.999)]:
        assert many[name] == h.quantile(q)


def test_zero_and_negative_values_are_exact_zero():
    h = Histogram()
    for v in [0, -5, 0, 10]:
        h.record(v)
    assert h.quantile(0.5) == 0.0
    assert h.quantile(1.0) == pytest.approx(10, rel=RELATIVE_ERROR)
    assert h.count == 4
    assert h.max == 10


def test_empty_histogram_reports_zeros():
    h = Histogram()
    assert h.quantile(0.99) == 0.0
    assert h.summary() == {
        "p50": 0.0,
        "p90": 0.0,
        "p95": 0.0,
        "p99": 0.0,
        "p999": 0.0,
        "max": 0.0,
        "mean": 0.0,
    }


def test_merge_equals_recording_everything_in_one():
    rng = random.Random(3)
    values = [rng.lognormvariate(12, 1) for _ in range(3000)]
    whole, a, b = Histogram(), Histogram(), Histogram()
    for i, v in enumerate(values):
        whole.record(v)
        (a if i % 3 else b).record(v)
    a.merge(b)
    assert a.buckets == whole.buckets
    assert a.count == whole.count
    assert a.max == whole.max
    assert a.min == whole.min
    assert a.sum == pytest.approx(whole.sum)
    assert a.quantiles() == whole.quantiles()


def test_serialises_through_json_exactly():
    rng = random.Random(5)
    h = Histogram()
    for _ in range(1000):
        h.record(rng.expovariate(1e-6))
    h.record(0)
    back = Histogram.from_dict(json.loads(json.dumps(h.to_dict())))
    assert back.buckets == h.buckets
    assert (back.count, back.zero, back.max, back.min) == (h.count, h.zero, h.max, h.min)
    assert back.quantiles() == h.quantiles()


def test_from_dict_rejects_inconsistent_counts():
    data = Histogram().to_dict()
    data["count"] = 3
    with pytest.raises(ValueError, match="do not add up"):
        Histogram.from_dict(data)


def test_memory_is_bounded_by_value_range_not_count():
    h = Histogram()
    rng = random.Random(9)
    for _ in range(200_000):
        h.record(rng.uniform(1e3, 1e10))  # 1 µs .. 10 s in ns
    # log(1e7) / log(gamma) ~ 850 buckets whatever the number of values.
    assert len(h.buckets) < 900


@pytest.mark.parametrize("seed", range(5))
def test_record_many_equals_record_one_by_one(seed):
    rng = random.Random(seed)
    values = [rng.choice([0, 1, 17, 10**6]) * rng.random() for _ in range(500)]
    values += [int(rng.lognormvariate(11, 2)) for _ in range(500)]
    one, many = Histogram(), Histogram()
    for v in values:
        one.record(v)
    for start in range(0, len(values), 128):
        many.record_many(values[start : start + 128])
    assert (many.count, many.zero, many.max, many.min) == (one.count, one.zero, one.max, one.min)
    assert many.sum == pytest.approx(one.sum)
    # Float rounding may move a value sitting exactly on an edge by one
    # bucket; the quantiles must still agree within the error bound.
    for name, value in one.quantiles().items():
        assert many.quantiles()[name] == pytest.approx(value, rel=2 * RELATIVE_ERROR)


def test_the_maximum_is_exact_and_the_minimum_within_the_error_bound():
    h = Histogram()
    h.record_many([1000, 2000])
    h.record_many([1500, 2001])  # in the bucket of 2000: still the new maximum
    h.record_many([999.9, 1200])
    h.record(1100)
    assert (h.max, h.count) == (2001, 7)
    assert h.min == pytest.approx(999.9, rel=RELATIVE_ERROR)
    assert Histogram.from_dict(h.to_dict()).min == h.min
    h.record_many([-5, 0, 3000])
    assert (h.max, h.min, h.zero, h.count) == (3000, 0.0, 2, 10)
