"""A log-bucketed histogram with a guaranteed relative error.

Bucket ``i`` holds values in ``(GAMMA**(i-1), GAMMA**i]`` and reports the
point ``2 * GAMMA**i / (GAMMA + 1)``, which is within ``LAYOUT_ALPHA`` of
every value in the bucket (the DDSketch construction). Buckets are fixed, so
two histograms merge exactly by adding counts: that is what lets workers and
saved snapshots be combined without losing accuracy. Memory is bounded by
the value range: about 1 100 buckets cover 1 ns to one hour.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from itertools import accumulate, repeat
from operator import mul as _mul
from typing import Any

RELATIVE_ERROR = 0.01
# The layout is built a little tighter than the promise, so that float
# rounding at a bucket edge can never push an answer past RELATIVE_ERROR.
LAYOUT_ALPHA = 0.0095
GAMMA = (1 + LAYOUT_ALPHA) / (1 - LAYOUT_ALPHA)
# log2 takes one argument, so it is called without building an argument
# tuple: a third cheaper than math.log on the batch path.
_INV_LOG_GAMMA = 1.0 / math.log2(GAMMA)
_log = math.log2
_ceil = math.ceil

QUANTILES: tuple[tuple[str, float], ...] = (
    ("p50", 0.50),
    ("p90", 0.90),
    ("p95", 0.95),
    ("p99", 0.99),
    ("p999", 0.999),
)


_BY_Q = sorted(QUANTILES, key=lambda nq: nq[1])


def bucket_index(value: float) -> int:
    """The bucket a positive value falls in."""
    return _ceil(_log(value) * _INV_LOG_GAMMA)


def bucket_value(index: int) -> float:
    """The representative value of a bucket (within RELATIVE_ERROR of its members)."""
    return 2.0 * GAMMA**index / (GAMMA + 1.0)


class Histogram:
    """Counts of non-negative values; values <= 0 land in an exact zero bucket.

    The maximum is kept exactly; the minimum is read from the lowest bucket
    (within RELATIVE_ERROR, like every quantile): keeping it exactly would
    cost a pass over every batch of the hot path's numbers.
    """

    __slots__ = ("buckets", "count", "max", "sum", "zero")

    def __init__(self) -> None:
        self.buckets: Counter[int] = Counter()
        self.count = 0
        self.zero = 0
        self.sum = 0.0
        self.max = 0.0

    @property
    def min(self) -> float:
        """The smallest value, within RELATIVE_ERROR (0.0 when empty or any <= 0)."""
        if self.zero or not self.buckets:
            return 0.0
        return min(bucket_value(min(self.buckets)), self.max)

    def record(self, value: float) -> None:
        self.count += 1
        self.sum += value
        if value > self.max:
            self.max = value
        if value > 0:
            i = _ceil(_log(value) * _INV_LOG_GAMMA)
            b = self.buckets
            b[i] = b.get(i, 0) + 1
        else:
            self.zero += 1

    def record_many(self, values: Sequence[float]) -> None:
        """Record a batch with no Python-level step per value.

        Bucket indices come from chained ``map`` calls and are counted by
        ``Counter.update``, all in C (about half the cost of sorting and
        bisecting, measured with callgrind). Same buckets as ``record``.
        """
        if not values:
            return
        try:
            indices = list(map(_ceil, map(_mul, map(_log, values), repeat(_INV_LOG_GAMMA))))
        except ValueError:
            # A value <= 0, where log2 is undefined: those go to the zero bucket.
            ordered = sorted(values)
            pos = bisect_right(ordered, 0)
            self.count += pos
            self.zero += pos
            self.sum += sum(ordered[:pos])
            self.record_many(ordered[pos:])
            return
        self.count += len(values)
        self.sum += sum(values)
        hi = max(values)
        if hi > self.max:
            self.max = hi
        self.buckets.update(indices)

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s counts into this histogram (exact)."""
        if not other.count:
            return
        self.buckets.update(other.buckets)
        self.count += other.count
        self.zero += other.zero
        self.sum += other.sum
        self.max = max(self.max, other.max)

    def copy(self) -> Histogram:
        h = Histogram()
        h.merge(self)
        return h

    def quantile(self, q: float) -> float:
        """The nearest-rank ``q`` quantile, within RELATIVE_ERROR of the exact one."""
        if not self.count:
            return 0.0
        rank = max(1, _ceil(q * self.count))
        if rank <= self.zero:
            return 0.0
        seen = self.zero
        for i in sorted(self.buckets):
            seen += self.buckets[i]
            if seen >= rank:
                # The maximum is exact; never report beyond it.
                return min(bucket_value(i), self.max)
        return self.max

    def quantiles(self, names: Iterable[tuple[str, float]] = QUANTILES) -> dict[str, float]:
        """Several quantiles from one sort and one running sum of the buckets.

        The running sum and the search for each rank are C-level
        (``accumulate``, ``bisect``): a snapshot of hundreds of routes reads
        thousands of buckets, and a Python step per bucket was most of it.
        """
        wanted = _BY_Q if names is QUANTILES else sorted(names, key=lambda nq: nq[1])
        out = dict.fromkeys([n for n, _ in wanted], 0.0)
        if not self.count:
            return out
        keys = sorted(self.buckets)
        running = list(accumulate(map(self.buckets.__getitem__, keys)))
        for name, q in wanted:
            rank = max(1, _ceil(q * self.count)) - self.zero
            if rank <= 0:
                continue  # within the zero bucket
            i = bisect_left(running, rank)
            # The maximum is exact; never report beyond it.
            out[name] = min(bucket_value(keys[i]), self.max) if i < len(keys) else self.max
        return out

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else 0.0

    def summary(self, scale: float = 1.0, ndigits: int = 3) -> dict[str, float]:
        """Quantiles, max and mean divided by ``scale`` (e.g. 1e6 for ns -> ms)."""
        out = {k: round(v / scale, ndigits) for k, v in self.quantiles().items()}
        out["max"] = round(self.max / scale, ndigits)
        out["mean"] = round(self.mean / scale, ndigits)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready form; ``from_dict`` restores it exactly."""
        return {
            "layout_alpha": LAYOUT_ALPHA,
            "count": self.count,
            "zero": self.zero,
            "sum": self.sum,
            "min": self.min,
            "max": self.max,
            "buckets": [[i, self.buckets[i]] for i in sorted(self.buckets)],
        }

    def to_state(self) -> dict[str, Any]:
        """``to_dict`` without the sort: what workers write every second."""
        return {
            "count": self.count,
            "zero": self.zero,
            "sum": self.sum,
            "max": self.max,
            "buckets": list(self.buckets.items()),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Histogram:
        if data.get("layout_alpha", LAYOUT_ALPHA) != LAYOUT_ALPHA:
            raise ValueError("histogram was recorded with another bucket layout")
        h = cls()
        h.buckets = Counter({int(i): int(c) for i, c in data.get("buckets", [])})
        h.count = int(data.get("count", 0))
        h.zero = int(data.get("zero", 0))
        h.sum = float(data.get("sum", 0.0))
        h.max = float(data.get("max", 0.0))
        if sum(h.buckets.values()) + h.zero != h.count:
            raise ValueError("histogram bucket counts do not add up to its count")
        return h
