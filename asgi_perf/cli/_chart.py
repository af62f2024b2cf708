"""Charts for a terminal: a one-line sparkline and a small block chart.

Pure functions of numbers to text, in the eighth-block characters every
terminal font has. Values that are not finite are left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

BLOCKS = "\u2581\u2582\u2583\u2584\u2585\u2586\u2587\u2588"  # ▁▂▃▄▅▆▇█


def sparkline(values: Sequence[float], width: int = 60) -> str:
    """``values`` as ``width`` block characters (none for no values).

    More values than ``width`` are averaged in equal runs; fewer are
    stretched. Lowest is ``▁``, highest ``█``; a flat series is a line of ``▁``.
    """
    kept = [float(v) for v in values if math.isfinite(v)]
    if not kept or width < 1:
        return ""
    columns = _resample(kept, width)
    low, high = min(columns), max(columns)
    top = len(BLOCKS) - 1
    if high <= low:
        return BLOCKS[0] * width
    return "".join(BLOCKS[round((v - low) / (high - low) * top)] for v in columns)


def text_chart(
    xs: Sequence[float],
    ys: Sequence[float],
    height: int = 8,
    width: int = 60,
    y_label: str = "MB",
) -> str:
    """A block chart of ``height`` rows and up to ``width`` columns, one per x range.

    The y axis is labelled with the min (bottom row) and max (top row) of
    the column values, the x range is written below. Each column averages
    the points in its range of x; an empty one repeats the column before.
    One x value is one column; a flat series is a flat line. No points: a
    line saying so.
    """
    if len(xs) != len(ys):
        raise ValueError(f"text_chart: {len(xs)} xs but {len(ys)} ys")
    points = sorted(
        (float(x), float(y))
        for x, y in zip(xs, ys, strict=True)
        if math.isfinite(x) and math.isfinite(y)
    )
    if not points:
        return "(no data yet)"
    height, width = max(height, 2), max(width, 1)
    columns = _columns(points, width)
    low, high = min(columns), max(columns)
    # Eighths of a row per column: at least one, so the lowest values still show.
    eighths = [
        max(1, round((v - low) / (high - low) * height * 8)) if high > low else 1 for v in columns
    ]
    top_label, bottom_label = f"{_num(high)} {y_label}", f"{_num(low)} {y_label}"
    pad = max(len(top_label), len(bottom_label))
    rows = []
    for row in range(height - 1, -1, -1):
        cells = "".join(_cell(e - row * 8) for e in eighths).rstrip()
        label = top_label if row == height - 1 else bottom_label if row == 0 else ""
        rows.append(f"{label:>{pad}} {'┤' if label else '│'}{cells}")
    rows.append(f"{'':>{pad}} └{'─' * len(columns)}")
    # The x range under the columns: the first x under the first, the last x ending under the last.
    first, last = _num(points[0][0]), _num(points[-1][0]) if len(columns) > 1 else ""
    room = max(len(columns) - len(first), len(last) + 1)
    rows.append(f"{'':>{pad + 2}}{first}{last:>{room}}".rstrip())
    return "\n".join(rows)


def _cell(eighths: int) -> str:
    if eighths <= 0:
        return " "
    return BLOCKS[min(eighths, 8) - 1]


def _resample(values: list[float], width: int) -> list[float]:
    n = len(values)
    if n == width:
        return values
    if n < width:
        return [values[i * n // width] for i in range(width)]
    # Equal runs of consecutive values, averaged: the shape of a long series.
    out = []
    for i in range(width):
        run = values[i * n // width : (i + 1) * n // width]
        out.append(sum(run) / len(run))
    return out


def _columns(points: list[tuple[float, float]], width: int) -> list[float]:
    x0, x1 = points[0][0], points[-1][0]
    if x1 <= x0:
        return [sum(y for _, y in points) / len(points)]
    sums = [0.0] * width
    counts = [0] * width
    for x, y in points:
        column = min(width - 1, int((x - x0) / (x1 - x0) * width))
        sums[column] += y
        counts[column] += 1
    out: list[float] = []
    for total, count in zip(sums, counts, strict=True):
        # The first column always holds the first point, so there is one to repeat.
        out.append(total / count if count else out[-1])
    return out


def _num(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
