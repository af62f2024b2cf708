"""``asgi-perf soak`` and ``asgi-perf leaks``: memory commands that run beside your load.

``soak`` samples the app every few seconds while the load runs, writes the
seed's soak CSV as it goes and judges the slope; ``leaks`` is the
tracemalloc hunt in one go: baseline, wait while the load runs, diff. Both
show the bar ``profile`` shows while it waits.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO as TextFile
from typing import Any

from rich.table import Table
from rich.text import Text

from asgi_perf.cli._chart import sparkline
from asgi_perf.cli._common import (
    IO,
    CLIError,
    client_for,
    fmt_number,
    is_number,
    progress,
    say_saved,
)
from asgi_perf.cli._exit import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from asgi_perf.cli.memory import mb, positive, signed_mb, trend_text, wait_until
from asgi_perf.client import PerfClientError
from asgi_perf.errors import ConfigError
from asgi_perf.memory.timeline import CSV_COLUMNS
from asgi_perf.memory.trend import MIN_POINTS, Trend, trend, warmup_points
from asgi_perf.units import number_text, parse_growth_mb_per_h

_MAX_TOP = 1000  # the server's own bound on top
_TRACEBACK_FRAMES = 10
_SPARK_WIDTH = 30


# --------------------------------------------------------------------------- soak


@dataclass
class _Soak:
    """The points a soak took: the client's own timeline, and the CSV written as it goes."""

    out: TextFile[str] | None = None
    # (seconds since the soak began, RSS MB): one append, so Ctrl-C never splits a point.
    points: list[tuple[float, float]] = field(default_factory=list)
    pids: set[Any] = field(default_factory=set)

    @property
    def xs(self) -> list[float]:
        return [x for x, _ in self.points]

    @property
    def ys(self) -> list[float]:
        return [y for _, y in self.points]

    def add(self, elapsed_s: float, report: dict[str, Any]) -> None:
        now = report.get("now") or {}
        if not is_number(now.get("rss_mb")):
            raise PerfClientError("the /memory answer holds no RSS (not asgi_perf's?)")
        self.points.append((elapsed_s, float(now["rss_mb"])))
        self.pids.add(report.get("pid"))
        if self.out is not None:
            csv.writer(self.out, lineterminator="\n").writerow(_row(elapsed_s, now))
            # Row by row to the disk: a soak cut short keeps what it took.
            self.out.flush()


def _row(elapsed_s: float, now: dict[str, Any]) -> list[Any]:
    gens = [*(now.get("gc_collections") or ()), None, None, None][:3]
    values = {
        **now,
        # The soak's own clock: the server's elapsed_min counts from its timeline's start.
        "elapsed_min": round(elapsed_s / 60, 4),
        "gc0": gens[0],
        "gc1": gens[1],
        "gc2": gens[2],
        "timestamp": now.get("timestamp") or round(time.time(), 3),
    }
    return ["" if values.get(c) is None else values[c] for c in CSV_COLUMNS]


def planned_points(duration_s: float, interval_s: float) -> int:
    # The epsilon: 3.0 / 0.1 is 29.999999999999996, and 30 intervals were meant.
    return int(duration_s / interval_s + 1e-9) + 1


def cmd_soak(args: argparse.Namespace, io: IO) -> int:
    duration = positive(args.minutes, "--minutes") * 60
    interval = positive(args.interval, "--interval")
    limit = None
    if args.max_growth is not None:
        try:
            limit = parse_growth_mb_per_h(args.max_growth, name="--max-growth")
        except ConfigError as exc:
            raise CLIError(str(exc)) from None
    planned = planned_points(duration, interval)
    if planned - warmup_points(planned, True) < MIN_POINTS:
        raise CLIError(
            f"--minutes {args.minutes:g} at --interval {interval:g} s takes {planned} points; "
            f"the slope needs {MIN_POINTS} after the warm-up: soak longer or sample more often"
        )
    with client_for(args) as client, contextlib.ExitStack() as files:
        soak = _Soak()
        # The first answer before the CSV: an unreachable app leaves no empty file behind.
        start = time.monotonic()
        first = client.memory()
        if args.csv:
            soak.out = files.enter_context(open(args.csv, "w", encoding="utf-8", newline=""))
            csv.writer(soak.out, lineterminator="\n").writerow(CSV_COLUMNS)
        soak.add(0.0, first)
        failure: PerfClientError | None = None
        interrupted = False
        try:
            with progress(io, f"soaking {client.base_url}", duration) as update:
                tick = 1
                while tick < planned:
                    wait_until(start + tick * interval, start, update)
                    at = time.monotonic() - start
                    soak.add(at, client.memory())
                    spark = sparkline(soak.ys[-_SPARK_WIDTH:], min(len(soak.ys), _SPARK_WIDTH))
                    update(at, f"soaking {client.base_url}: RSS {mb(soak.ys[-1])} {spark}")
                    # A slow answer: the tick due now is taken at once, the ones it
                    # overran before that are skipped rather than bunched up.
                    due = int((time.monotonic() - start) / interval + 1e-9)
                    tick = max(tick + 1, due)
        except KeyboardInterrupt:
            interrupted = True
        except PerfClientError as exc:
            # The app may have died of the very leak: its points so far still tell.
            failure = exc
    found = trend(soak.xs, soak.ys)
    verdict, code = _soak_verdict(found, limit)
    if interrupted:
        verdict = Text("cut short, so far: ").append_text(verdict)
    for part in (*_soak_view(soak, found, client.base_url, interval), verdict):
        io.out.print(part)
    if args.csv:
        say_saved(io, args.csv, Path(args.csv).stat().st_size, f", {len(soak.xs)} points")
    if failure is not None:
        raise failure
    if interrupted:
        io.err.print(f"soak interrupted after {number_text(soak.xs[-1])} s", markup=False)
        return EXIT_INTERRUPTED
    return code


def _soak_verdict(found: Trend, limit: float | None) -> tuple[Text, int]:
    """With ``--max-growth`` the limit decides; without it, "growing" fails."""
    slope = found.slope_mb_per_h
    if slope is None:
        return Text(f"FAIL: no slope to judge ({found.reason})", style="bold red"), EXIT_FAILED
    if limit is not None:
        if slope > limit:
            message = f"FAIL: the slope {signed_mb(slope, 'MB/h')} is over {mb(limit, 'MB/h')}"
            return Text(message, style="bold red"), EXIT_FAILED
        return Text(f"ok: the slope is within {mb(limit, 'MB/h')}", style="green"), EXIT_OK
    if found.trend == "growing":
        message = "FAIL: memory grows steadily (--max-growth sets a limit instead)"
        return Text(message, style="bold red"), EXIT_FAILED
    return Text("ok: no steady growth", style="green"), EXIT_OK


def _soak_view(soak: _Soak, found: Trend, source: str, interval: float) -> list[Any]:
    """The result lines of a soak (also of one cut short), but the verdict."""
    pids = ", ".join(str(p) for p in sorted(soak.pids, key=str))
    growth = soak.ys[-1] - soak.ys[0]
    lines: list[Any] = [
        Text(
            f"soak of {source}: {len(soak.xs)} points over {number_text(soak.xs[-1])} s "
            f"(one every {interval:g} s), pid {pids}"
        ),
        Text(
            f"RSS {mb(soak.ys[0])} → {mb(soak.ys[-1])} ({signed_mb(growth)})  "
            + sparkline(soak.ys, min(len(soak.ys), 60))
        ),
    ]
    if found.slope_mb_per_h is not None:
        lines.append(
            Text(
                f"slope {signed_mb(found.slope_mb_per_h, 'MB/h')}: least squares over "
                f"{found.points} points after {found.warmup_points} of warm-up"
            )
        )
    lines.append(trend_text(found.to_json(), slope=False))
    if len(soak.pids) > 1:
        lines.append(
            Text(
                f"the answers came from {len(soak.pids)} processes (several workers, or a "
                "restart): the slope mixes them",
                style="yellow",
            )
        )
    return lines


# --------------------------------------------------------------------------- leaks


def cmd_leaks(args: argparse.Namespace, io: IO) -> int:
    seconds = positive(args.seconds, "--seconds")
    if not 1 <= args.top <= _MAX_TOP:
        raise CLIError(f"--top must be from 1 to {_MAX_TOP}, got {args.top}")
    traceback = args.group_by == "traceback"
    frames = args.frames if args.frames is not None else _TRACEBACK_FRAMES if traceback else 1
    if frames < 1:
        raise CLIError(f"--frames must be at least 1, got {frames}")
    with client_for(args) as client:
        status = client.tracemalloc_start(frames)
        ours = bool(status.get("started"))
        try:
            client.memory_baseline()
            with progress(io, f"watching allocations in {client.base_url}", seconds) as update:
                start = time.monotonic()
                wait_until(start + seconds, start, update)
            diff = client.memory_diff(args.top, args.group_by)
            for part in leaks_view(diff, client.base_url, status, ours):
                io.out.print(part)
        except BaseException:
            # Tracing slows every allocation of the app: never leave on what
            # this command turned on. The first error is the one to report.
            if ours:
                with contextlib.suppress(PerfClientError):
                    client.tracemalloc_stop()
            raise
        if ours:
            client.tracemalloc_stop()
    return EXIT_OK


def leaks_view(diff: dict[str, Any], source: str, status: dict[str, Any], ours: bool) -> list[Any]:
    """What ``asgi-perf leaks`` prints, as rich renderables."""
    grew = [
        s for s in diff.get("stats") or () if isinstance(s, dict) and _bytes(s, "size_diff") > 0
    ]
    seconds = diff.get("seconds")
    over = f"{number_text(seconds)} s" if is_number(seconds) else "the wait"
    frames = int(status.get("frames") or 0)
    who = "" if ours else f", already on (started by {status.get('started_by')}): left on"
    how = f"tracemalloc, {frames} frame{'s' if frames != 1 else ''}{who}"
    if not grew:
        return [Text(f"nothing grew in {source} over {over} ({how})")]
    summary = Text(
        f"what grew in {source} over {over}: {signed_mb(diff.get('growth_mb'))} in all, "
        f"grouped by {diff.get('group_by')} ({how})"
    )
    table = Table()
    table.add_column("growth", justify="right")
    table.add_column("count", justify="right")
    table.add_column("size now", justify="right")
    # fold: a long path is wrapped, never cut (the line number is what matters).
    table.add_column("where", overflow="fold")
    for s in grew:
        count = s.get("count_diff")
        table.add_row(
            "+" + _size(_bytes(s, "size_diff")),
            f"{'+' if is_number(count) and count >= 0 else ''}{fmt_number(count)}",
            _size(_bytes(s, "size")),
            Text(_where(s, diff.get("group_by") == "traceback")),
        )
    return [summary, table]


def _size(n: int) -> str:
    # MB of 2**20 bytes, as the server's growth_mb and the budgets count them.
    if n < 1024:
        return f"{n} B"
    if n < 1 << 20:
        return f"{number_text(n / 1024)} KB"
    return mb(n / (1 << 20))


def _bytes(stat: dict[str, Any], name: str) -> int:
    value = stat.get(f"{name}_bytes")
    return int(value) if is_number(value) else 0


def _where(stat: dict[str, Any], traceback: bool) -> str:
    site = _site(stat)
    if not traceback:
        return site
    frames = [f for f in stat.get("traceback") or () if isinstance(f, dict)]
    # The server lists the oldest frame first, the allocating line last.
    callers = [f"  ← {_site(f)}" for f in reversed(frames[:-1])]
    return "\n".join([site, *callers])


def _site(frame: dict[str, Any]) -> str:
    path = str(frame.get("file"))
    with contextlib.suppress(ValueError):  # another drive on Windows
        relative = os.path.relpath(path)
        if not relative.startswith(".."):
            path = relative
    line = frame.get("line")
    return f"{path}:{line}" if line is not None else path
