"""``asgi-perf memory``: the app's memory now, its trend, and the timeline as a chart.

``GET /memory`` for people: now, the leak slope and its verdict, budgets,
the routes that grew most, tracing, and the timeline's RSS drawn in the
terminal; ``--watch`` redraws it. Also the pieces ``soak`` and ``leaks``
(``memory_load``) print and wait with.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

from rich.table import Table
from rich.text import Text

from asgi_perf.cli._chart import text_chart
from asgi_perf.cli._common import (
    IO,
    CLIError,
    Update,
    client_for,
    fmt_number,
    is_number,
    verdict_text,
)
from asgi_perf.cli._exit import EXIT_OK
from asgi_perf.client import PerfClient, PerfClientError
from asgi_perf.units import number_text

_WATCH_S = 2.0
_POLL_S = 0.1


# --------------------------------------------------------------------------- shared


def positive(value: float, option: str) -> float:
    """``value`` when it is a finite number above 0, else the one-line usage error."""
    if not (math.isfinite(value) and value > 0):
        raise CLIError(f"{option} must be more than 0, got {value:g}")
    return value


def mb(value: Any, unit: str = "MB") -> str:
    return f"{number_text(value)} {unit}" if is_number(value) else "-"


def signed_mb(value: Any, unit: str = "MB") -> str:
    if not is_number(value):
        return "-"
    # A flat fit's slope is a float's noise (1e-26): shown as the 0 it is.
    value = round(value, 3) + 0.0
    return f"{'+' if value >= 0 else ''}{number_text(value)} {unit}"


def wait_until(deadline: float, start: float, update: Update) -> None:
    """Sleep until ``deadline`` (monotonic), moving the bar; Ctrl-C still lands at once."""
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, _POLL_S))
        update(time.monotonic() - start, None)


# --------------------------------------------------------------------------- memory


def cmd_memory(args: argparse.Namespace, io: IO) -> int:
    if not args.watch and (args.count is not None or args.interval is not None):
        raise CLIError("--count and --interval go with --watch")
    interval = positive(args.interval, "--interval") if args.interval is not None else _WATCH_S
    if args.count is not None and args.count < 1:
        raise CLIError(f"--count must be at least 1, got {args.count}")
    with client_for(args) as client:
        if not args.watch:
            _show(client, args, io)
            return EXIT_OK
        shown = 0
        try:
            while True:
                _show(client, args, io)
                shown += 1
                if args.count is not None and shown >= args.count:
                    return EXIT_OK
                time.sleep(interval)
        except KeyboardInterrupt:
            # Ctrl-C is how a watch ends, not an interrupted task.
            return EXIT_OK


def _show(client: PerfClient, args: argparse.Namespace, io: IO) -> None:
    report = client.memory()
    if args.json:
        # --watch --json: one object a line, for a file or jq.
        text = json.dumps(report) if args.watch else json.dumps(report, indent=2)
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        return
    timeline: dict[str, Any] | None = None
    off = "the timeline is off: start the app with memory_interval_s > 0"
    if report.get("timeline") is not None:
        try:
            timeline = client.memory_timeline()
        except PerfClientError as exc:
            if exc.status != 409:
                raise
            off = str(exc)  # turned off between the two requests: say what the server said
    if args.watch and io.out.is_terminal:
        io.out.clear()
    for part in memory_view(report, timeline, client.base_url, off, io.out.width):
        io.out.print(part)
    if args.watch and not io.out.is_terminal:
        io.out.print()


def memory_view(
    report: dict[str, Any],
    timeline: dict[str, Any] | None,
    source: str,
    off: str,
    width: int,
) -> list[Any]:
    """What ``asgi-perf memory`` prints, as rich renderables."""
    now = report.get("now") or {}
    parts: list[Any] = [
        Text(f"{source} — pid {report.get('pid')} — {time.strftime('%H:%M:%S')}", style="bold"),
        Text(
            "  ".join(
                f"{label} {value}"
                for label, value in (
                    ("RSS", mb(now.get("rss_mb"))),
                    ("VMS", mb(now.get("vms_mb"))),
                    ("USS", mb(now.get("uss_mb"))),
                    ("fds", fmt_number(now.get("fds"))),
                    ("threads", fmt_number(now.get("threads"))),
                    ("connections", fmt_number(now.get("connections"))),
                )
            )
        ),
        trend_text(report),
        Text(f"peak RSS {mb(report.get('peak_rss_mb'))}"),
    ]
    budgets = [v for v in report.get("budgets") or () if isinstance(v, dict)]
    if budgets:
        parts.append(_budgets_table(budgets))
    workers = [w for w in report.get("workers") or () if isinstance(w, dict)]
    if workers:
        parts.append(_workers_table(workers))
    routes = [r for r in report.get("routes") or () if isinstance(r, dict)]
    if routes:
        parts.append(_routes_table(routes, str(report.get("memory_method") or "rss")))
    parts.append(_tracing_text(report.get("tracemalloc") or {}))
    if timeline is None:
        parts.append(Text(off, style="yellow"))
    else:
        parts.extend(_chart(timeline, width))
    return parts


def trend_text(found: dict[str, Any], *, slope: bool = True) -> Text:
    """``trend: growing, +12 MB/h (why)``, as the server or the soak found it."""
    name = str(found.get("trend") or "flat")
    per_h = found.get("slope_mb_per_h")
    text = Text("trend: ")
    text.append(name, style="bold red" if name == "growing" else "green")
    if slope:
        text.append(f", {signed_mb(per_h, 'MB/h')}" if is_number(per_h) else ", no slope yet")
    text.append(f" ({found.get('reason')})")
    return text


def _budgets_table(verdicts: list[dict[str, Any]]) -> Table:
    table = Table(title="process budgets", title_justify="left")
    table.add_column("metric")
    for name in ("limit", "measured"):
        table.add_column(name, justify="right")
    table.add_column("verdict")
    for v in verdicts:
        metric = str(v.get("metric"))
        unit = "MB/h" if metric.endswith("_per_h") else "MB"
        table.add_row(
            metric,
            mb(v.get("limit"), unit),
            mb(v.get("measured"), unit),
            verdict_text(v.get("verdict")),
        )
    return table


def _workers_table(workers: list[dict[str, Any]]) -> Table:
    table = Table(title="workers", title_justify="left")
    for name in ("pid", "RSS", "peak", "slope", "trend"):
        table.add_column(name, justify="left" if name == "trend" else "right")
    for w in workers:
        table.add_row(
            fmt_number(w.get("pid")),
            mb(w.get("rss_mb")),
            mb(w.get("peak_rss_mb")),
            signed_mb(w.get("slope_mb_per_h"), "MB/h"),
            str(w.get("trend") or "-"),
        )
    return table


def _routes_table(routes: list[dict[str, Any]], method: str) -> Table:
    noisy = ": noisy under concurrency" if method == "rss" else ""
    table = Table(
        title="routes by memory per request (MB)",
        caption=f"measured by {method}{noisy}",
        title_justify="left",
        caption_justify="left",
    )
    table.add_column("route", no_wrap=True)
    for name in ("samples", "p50", "p99", "max"):
        table.add_column(name, justify="right")
    table.add_column("budget")
    for r in routes:
        table.add_row(
            Text(str(r.get("route"))),  # Text: a route may hold "[...]"
            fmt_number(r.get("samples")),
            *(fmt_number(r.get(k), 3) for k in ("p50", "p99", "max")),
            verdict_text(r.get("budget")),
        )
    return table


def _tracing_text(status: dict[str, Any]) -> Text:
    if not status.get("tracing"):
        return Text("tracemalloc: off (asgi-perf leaks URL --seconds 30 finds what grows)")
    frames = int(status.get("frames") or 0)
    text = (
        f"tracemalloc: on, {frames} frame{'s' if frames != 1 else ''} "
        f"(started by {status.get('started_by')}), traced {mb(status.get('traced_mb'))}, "
        f"peak {mb(status.get('peak_mb'))}"
    )
    baseline = status.get("baseline")
    if isinstance(baseline, dict) and is_number(baseline.get("at")):
        text += f", baseline of {time.strftime('%H:%M:%S', time.localtime(baseline['at']))}"
    return Text(text)


def _chart(timeline: dict[str, Any], width: int) -> list[Any]:
    points = [p for p in timeline.get("points") or () if isinstance(p, dict)]
    kept = [p for p in points if is_number(p.get("elapsed_min")) and is_number(p.get("rss_mb"))]
    title = (
        f"RSS over the timeline: {len(kept)} points, one every {timeline.get('interval_s')} s "
        f"(x: minutes since it started)"
    )
    chart = text_chart(
        [p["elapsed_min"] for p in kept],
        [p["rss_mb"] for p in kept],
        width=max(20, min(72, width - 16)),
    )
    return [Text(), Text(title, style="bold"), Text(chart)]
