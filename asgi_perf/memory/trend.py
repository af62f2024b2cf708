"""The leak slope of a memory timeline, and whether it says "growing".

Pure functions over (seconds, MB) points: the server's timeline, the
``asgi-perf soak`` command and the pytest ``soak`` fixture share them.

The slope is an ordinary least-squares fit after a warm-up (a process
grows while it fills its caches and pools; that is not a leak). "Growing"
asks more of the recent points than a positive slope: enough growth to be
more than allocator noise, a line that explains the points, and growth in
both halves of the stretch, so that one step (a buffer allocated once, a
pool filled late) is not read as a leak.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

MIN_POINTS = 8
# The growth over the recent stretch below which RSS moves are allocator
# noise (pages, arenas), whatever the slope.
MIN_GROWTH_MB = 1.0
MIN_R2 = 0.5
# Each half of the recent stretch must grow at a quarter of the whole's rate.
HALF_SHARE = 0.25
RECENT_S = 300.0
WARMUP_SHARE = 0.1

TrendName = Literal["flat", "growing"]


@dataclass(frozen=True)
class Fit:
    slope: float  # per second
    intercept: float
    r2: float


@dataclass(frozen=True)
class Trend:
    """What a timeline says about growth."""

    slope_mb_per_h: float | None  # over every point after the warm-up
    trend: TrendName
    points: int  # points fitted (after the warm-up)
    warmup_points: int
    recent_s: float  # the stretch "growing" is decided on
    recent_growth_mb: float | None
    r2: float | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "slope_mb_per_h": _round(self.slope_mb_per_h),
            "trend": self.trend,
            "points": self.points,
            "warmup_points": self.warmup_points,
            "recent_s": round(self.recent_s, 3),
            "recent_growth_mb": _round(self.recent_growth_mb),
            "r2": None if self.r2 is None else round(self.r2, 4),
            "reason": self.reason,
        }


def fit(xs: Sequence[float], ys: Sequence[float]) -> Fit | None:
    """Least squares ``y = slope * x + intercept``; None with fewer than two distinct x."""
    n = len(xs)
    if n < 2:
        return None
    mx = sum(xs) / n
    my = sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 0:
        return None
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    syy = sum((y - my) ** 2 for y in ys)
    slope = sxy / sxx
    # A perfectly flat series is explained by its line.
    r2 = 1.0 if syy == 0 else (sxy * sxy) / (sxx * syy)
    return Fit(slope, my - slope * mx, r2)


def warmup_points(n: int, from_start: bool) -> int:
    """Points to leave out: a tenth of them while the first point is still kept."""
    if not from_start or n < 2:
        return 0
    return max(1, int(n * WARMUP_SHARE))


def trend(
    times_s: Sequence[float],
    values_mb: Sequence[float],
    *,
    from_start: bool = True,
    recent_s: float = RECENT_S,
) -> Trend:
    """The slope (MB/h) and the verdict of a series of (seconds, MB) points.

    ``from_start``: the series begins when the process (or the count) did,
    so its first points are a warm-up.
    """
    skip = warmup_points(len(times_s), from_start)
    xs, ys = list(times_s[skip:]), list(values_mb[skip:])
    n = len(xs)

    def flat(reason: str, slope: float | None = None, **extra: Any) -> Trend:
        return Trend(
            slope_mb_per_h=slope,
            trend="flat",
            points=n,
            warmup_points=skip,
            recent_s=extra.get("recent", 0.0),
            recent_growth_mb=extra.get("growth"),
            r2=extra.get("r2"),
            reason=reason,
        )

    whole = fit(xs, ys) if n >= MIN_POINTS else None
    if whole is None:
        return flat(f"too few points after the warm-up ({n}; {MIN_POINTS} needed)")
    slope_h = whole.slope * 3600
    # The recent stretch: the last recent_s, but never fewer than MIN_POINTS.
    start = n - MIN_POINTS
    while start > 0 and xs[-1] - xs[start - 1] <= recent_s:
        start -= 1
    rx, ry = xs[start:], ys[start:]
    recent = fit(rx, ry)
    if recent is None:
        return flat("the recent points share one time", slope_h)
    span = rx[-1] - rx[0]
    growth = recent.slope * span
    found = {"recent": span, "growth": growth, "r2": recent.r2}
    if growth < MIN_GROWTH_MB:
        return flat(f"grew {growth:.2f} MB over the last {span:.0f} s", slope_h, **found)
    if recent.r2 < MIN_R2:
        return flat(f"no steady line (r2 {recent.r2:.2f})", slope_h, **found)
    half = len(rx) // 2
    for name, (hx, hy) in (
        ("first", (rx[: half + 1], ry[: half + 1])),
        ("second", (rx[half:], ry[half:])),
    ):
        part = fit(hx, hy)
        if part is None or part.slope < HALF_SHARE * recent.slope:
            reason = f"one step, not a steady growth (the {name} half is flat)"
            return flat(reason, slope_h, **found)
    return Trend(
        slope_mb_per_h=slope_h,
        trend="growing",
        points=n,
        warmup_points=skip,
        recent_s=span,
        recent_growth_mb=growth,
        r2=recent.r2,
        reason=f"grew {growth:.2f} MB over the last {span:.0f} s, steadily",
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
