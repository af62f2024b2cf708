"""``asgi-perf diff``: two saved snapshots side by side; exit 1 past a ``--fail`` threshold."""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rich.table import Table
from rich.text import Text

from asgi_perf.cli._common import IO, fmt_ms, load_snapshot, percent_text
from asgi_perf.cli._exit import EXIT_FAILED, EXIT_OK

THRESHOLD_METRICS = ("p50", "p90", "p95", "p99", "p999", "max", "mean", "error_rate")
_SHOWN = ("count", "errors", "p50", "p90", "p95", "p99", "max", "mean")
_THRESHOLD_RE = re.compile(r"([a-z0-9_]+):(\d+(?:\.\d*)?|\.\d+)%?")


@dataclass(frozen=True)
class Threshold:
    """``--fail p99:10%``: a regression is ``new > base * (1 + percent / 100)``."""

    metric: str
    percent: float

    def passed(self, base: float, new: float) -> bool:
        return new > base * (1 + self.percent / 100)


def parse_threshold(text: str) -> Threshold:
    """argparse ``type=`` for ``--fail``: its ValueError becomes a one-line usage error."""
    match = _THRESHOLD_RE.fullmatch(text.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"bad threshold {text!r}: expected METRIC:PERCENT like p99:10% "
            f"(metrics: {', '.join(THRESHOLD_METRICS)})"
        )
    metric, percent = match.group(1), float(match.group(2))
    if metric not in THRESHOLD_METRICS:
        raise argparse.ArgumentTypeError(
            f"bad threshold {text!r}: unknown metric {metric!r} "
            f"(metrics: {', '.join(THRESHOLD_METRICS)})"
        )
    return Threshold(metric, percent)


def _measure(route: Mapping[str, Any], metric: str) -> float | None:
    count = route.get("count")
    if metric in ("count", "errors"):
        value = route.get(metric)
    elif metric == "error_rate":
        value = (route.get("errors") or 0) / count if isinstance(count, int) and count else None
    else:
        value = (route.get("latency_ms") or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) else None


def _routes(snapshot: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {
        str(r["route"]): r
        for r in snapshot.get("routes") or ()
        if isinstance(r, Mapping) and "route" in r
    }


def cmd_diff(args: argparse.Namespace, io: IO) -> int:
    base, new = _routes(load_snapshot(args.base)), _routes(load_snapshot(args.new))
    # The last --fail for a metric wins, like any repeated option.
    thresholds = {t.metric: t for t in args.fail or ()}
    shown = [*_SHOWN, *(m for m in THRESHOLD_METRICS if m in thresholds and m not in _SHOWN)]
    table = Table(
        # Text, not markup: a route or a file name may hold "[...]".
        title=Text(f"{args.base} → {args.new} (latency in ms)"),
        title_justify="left",
    )
    table.add_column("route", no_wrap=True)
    table.add_column("metric")
    for name in ("base", "new", "change", "threshold"):
        table.add_column(name, justify="right")
    table.add_column("verdict")
    regressions: list[str] = []
    common = sorted(set(base) & set(new))
    for route in common:
        for i, metric in enumerate(shown):
            b, n = _measure(base[route], metric), _measure(new[route], metric)
            threshold = thresholds.get(metric)
            broken = bool(threshold and b is not None and n is not None and threshold.passed(b, n))
            if broken:
                regressions.append(f"{route} {metric} {_change(b, n)}")
            table.add_row(
                Text(route if i == 0 else ""),
                metric,
                _cell(metric, b),
                _cell(metric, n),
                _change_text(metric, b, n, broken),
                f"+{threshold.percent:g}%" if threshold else "",
                Text("REGRESSION", style="bold red") if broken else ("ok" if threshold else ""),
                end_section=i == len(shown) - 1,
            )
    if common:
        io.out.print(table)
    else:
        io.out.print("no route is in both snapshots", markup=False)
    for label, routes in (
        (f"new routes (not in {args.base})", sorted(set(new) - set(base))),
        (f"gone routes (not in {args.new})", sorted(set(base) - set(new))),
    ):
        if routes:
            io.out.print(f"{label}: {', '.join(routes)}", markup=False, soft_wrap=True)
    if regressions:
        summary = Text.assemble(
            (f"{len(regressions)} regression(s) past --fail thresholds", "bold red"),
            ": " + "; ".join(regressions),
        )
        io.out.print(summary, soft_wrap=True)
        return EXIT_FAILED
    if thresholds:
        io.out.print("[green]no regression past the --fail thresholds[/]")
    return EXIT_OK


def _cell(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if metric in ("count", "errors"):
        return str(int(value))
    if metric == "error_rate":
        return percent_text(value)
    return fmt_ms(value)


def _change(base: float | None, new: float | None) -> str:
    if base is None or new is None:
        return "-"
    if base == 0:
        return "+0.0%" if new == 0 else "from 0"
    return f"{(new - base) / base * 100:+.1f}%"


def _change_text(metric: str, base: float | None, new: float | None, broken: bool) -> Text:
    text = _change(base, new)
    if broken:
        return Text(text, style="bold red")
    if metric == "count" or base is None or new is None or new == base:
        return Text(text)
    # Lower is better for everything but the request count.
    return Text(text, style="green" if new < base else "yellow")
