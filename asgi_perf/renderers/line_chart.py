"""A small SVG line chart: the memory timeline (elapsed minutes, RSS MB) and the dashboard.

One self-contained file, as the flame graph: no script, no external
reference, texts escaped. Axes run over "nice" ticks (1, 2, 2.5 or 5 times a
power of ten) that enclose the data, so both ends carry a label; the main
series' min, max and last value are written beside the title. An empty
series says "no data yet" and a single point is a dot: a chart asked for
before the first reading is a picture, not an error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from asgi_perf.renderers.flamegraph import _esc

Points = Sequence[tuple[float, float]]

_LEFT, _RIGHT, _TOP, _BOTTOM = 58, 14, 30, 40
_MIN_WIDTH, _MIN_HEIGHT = 200, 120
_TICKS = 5
_COLOURS = ("#1f6fb4", "#d9622b", "#2c9a4b", "#8c54b5", "#b8860b")
# Beyond this many points per pixel column a line shows nothing more; down to it,
# each column keeps its lowest and highest point, so spikes stay drawn.
_PER_COLUMN = 2
_CSS = (
    "text{font:11px sans-serif;fill:#333}.t{font-weight:bold;font-size:13px}"
    ".s{fill:#666}.g{stroke:#ececec}.a{stroke:#777}"
)


def line_chart_svg(
    series: Points,
    *,
    title: str,
    x_label: str,
    y_label: str,
    width: int = 640,
    height: int = 240,
    extra: Sequence[tuple[str, Points]] = (),
) -> str:
    """An SVG document: ``series`` as a line of (x, y) points, ``extra`` as named lines.

    Points that are not finite are left out; the rest are drawn in x order.
    A line longer than twice the plot's width in pixels is down-sampled to
    the lowest and highest point of each pixel column.
    """
    width, height = max(int(width), _MIN_WIDTH), max(int(height), _MIN_HEIGHT)
    lines = [(y_label, _clean(series)), *((name, _clean(pts)) for name, pts in extra)]
    everything = [p for _, pts in lines for p in pts]
    plot = (_LEFT, _TOP, width - _RIGHT, height - _BOTTOM)
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n"
        '<rect width="100%" height="100%" fill="#fff"/>\n'
        f'<text class="t" x="{_LEFT}" y="18">{_esc(title)}</text>\n'
    ]
    if lines[0][1]:
        ys = [y for _, y in lines[0][1]]
        summary = f"min {_num(min(ys))} \u00b7 max {_num(max(ys))} \u00b7 last {_num(ys[-1])}"
        parts.append(
            f'<text class="s" x="{width - _RIGHT}" y="18" text-anchor="end">'
            f"{_esc(summary)}</text>\n"
        )
    parts.append(_axis_labels(plot, x_label, y_label))
    if not everything:
        x0, y0, x1, y1 = plot
        parts.append(
            f'<rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" fill="none" '
            f'class="a"/>\n<text class="s" x="{(x0 + x1) / 2:.1f}" y="{(y0 + y1) / 2:.1f}" '
            'text-anchor="middle">no data yet</text>\n</svg>\n'
        )
        return "".join(parts)
    xt = _ticks(min(x for x, _ in everything), max(x for x, _ in everything))
    yt = _ticks(min(y for _, y in everything), max(y for _, y in everything))
    parts.append(_grid(plot, xt, yt))
    for i, (_, pts) in enumerate(lines):
        colour = _COLOURS[i % len(_COLOURS)]
        placed = [_place(plot, xt, yt, x, y) for x, y in _thin(pts, plot[2] - plot[0])]
        if len(placed) == 1:
            (px, py), (_, value) = placed[0], pts[0]
            parts.append(
                f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{colour}"/>\n'
                f'<text class="s" x="{px + 6:.1f}" y="{py - 6:.1f}">{_esc(_num(value))}</text>\n'
            )
        elif placed:
            coords = " ".join(f"{px:.1f},{py:.1f}" for px, py in placed)
            parts.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" '
                f'stroke-linejoin="round" points="{coords}"/>\n'
            )
    if extra:
        parts.append(_legend(lines, width))
    parts.append("</svg>\n")
    return "".join(parts)


def _clean(points: Points) -> list[tuple[float, float]]:
    kept = [(float(x), float(y)) for x, y in points if math.isfinite(x) and math.isfinite(y)]
    kept.sort(key=lambda p: p[0])  # stable: points sharing an x keep their order
    return kept


def _thin(points: list[tuple[float, float]], columns: int) -> list[tuple[float, float]]:
    if len(points) <= _PER_COLUMN * columns:
        return points
    x0, x1 = points[0][0], points[-1][0]
    buckets: dict[int, list[tuple[float, float]]] = {}
    for p in points:
        column = int((p[0] - x0) / (x1 - x0) * (columns - 1)) if x1 > x0 else 0
        buckets.setdefault(column, []).append(p)
    kept: list[tuple[float, float]] = []
    for column in sorted(buckets):
        bucket = buckets[column]
        low, high = min(bucket, key=lambda p: p[1]), max(bucket, key=lambda p: p[1])
        kept.extend(sorted({low, high}, key=bucket.index))
    return kept


def _ticks(low: float, high: float) -> list[float]:
    """About ``_TICKS`` round values from at or below ``low`` to at or above ``high``."""
    if high <= low:
        pad = abs(low) * 0.05 or 1.0  # one value: an axis around it
        low, high = low - pad, high + pad
    raw = (high - low) / (_TICKS - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first, last = math.floor(low / step), math.ceil(high / step)
    return [round(i * step, 12) for i in range(first, last + 1)]


def _place(
    plot: tuple[int, int, int, int], xt: list[float], yt: list[float], x: float, y: float
) -> tuple[float, float]:
    x0, y0, x1, y1 = plot
    px = x0 + (x - xt[0]) / (xt[-1] - xt[0]) * (x1 - x0)
    py = y1 - (y - yt[0]) / (yt[-1] - yt[0]) * (y1 - y0)
    return px, py


def _grid(plot: tuple[int, int, int, int], xt: list[float], yt: list[float]) -> str:
    x0, y0, x1, y1 = plot
    out = []
    for value in yt:
        _, py = _place(plot, xt, yt, xt[0], value)
        out.append(f'<line class="g" x1="{x0}" y1="{py:.1f}" x2="{x1}" y2="{py:.1f}"/>')
        out.append(
            f'<text x="{x0 - 6}" y="{py + 4:.1f}" text-anchor="end">{_esc(_tick(value, yt))}</text>'
        )
    for value in xt:
        px, _ = _place(plot, xt, yt, value, yt[0])
        out.append(f'<line class="a" x1="{px:.1f}" y1="{y1}" x2="{px:.1f}" y2="{y1 + 4}"/>')
        out.append(
            f'<text x="{px:.1f}" y="{y1 + 16}" text-anchor="middle">{_esc(_tick(value, xt))}</text>'
        )
    out.append(f'<polyline class="a" fill="none" points="{x0},{y0} {x0},{y1} {x1},{y1}"/>')
    return "\n".join(out) + "\n"


def _axis_labels(plot: tuple[int, int, int, int], x_label: str, y_label: str) -> str:
    x0, y0, x1, y1 = plot
    return (
        f'<text x="{(x0 + x1) / 2:.1f}" y="{y1 + 34}" text-anchor="middle">{_esc(x_label)}</text>\n'
        f'<text transform="rotate(-90)" x="{-(y0 + y1) / 2:.1f}" y="14" '
        f'text-anchor="middle">{_esc(y_label)}</text>\n'
    )


def _legend(lines: list[tuple[str, list[tuple[float, float]]]], width: int) -> str:
    out, x = [], float(_LEFT + 8)
    for i, (name, _) in enumerate(lines):
        colour = _COLOURS[i % len(_COLOURS)]
        out.append(
            f'<rect x="{x:.1f}" y="{_TOP + 4}" width="10" height="3" fill="{colour}"/>'
            f'<text x="{x + 14:.1f}" y="{_TOP + 9}">{_esc(name)}</text>'
        )
        x += 24 + 6.5 * len(name)  # about one character of 11px sans-serif
        if x > width - _RIGHT - 40:
            break
    return "\n".join(out) + "\n"


def _tick(value: float, ticks: list[float]) -> str:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    if step * 10**decimals % 1 > 1e-6:  # steps of 2.5
        decimals += 1
    return f"{value:.{decimals}f}"


def _num(value: float) -> str:
    # Three significant digits below 100, none lost above: 0.123, 12.3, 1234.
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
