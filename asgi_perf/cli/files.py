"""Subcommands on saved files: ``diff``, ``flamegraph``, ``merge``. No server needed."""

from __future__ import annotations

import argparse
import json
import pstats
import re
from collections.abc import Mapping
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from asgi_perf.capture import Capture, FrameId, Stack, combine, pstats_to_stacks
from asgi_perf.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    IO,
    CLIError,
    existing_file,
    fmt_ms,
    human_bytes,
    load_snapshot,
    read_pstats,
)
from asgi_perf.renderers import RENDERERS, NotRenderable, render

# ------------------------------------------------------------------------ diff

THRESHOLD_METRICS = ("p50", "p90", "p95", "p99", "p999", "max", "mean", "error_rate")
_SHOWN = ("count", "errors", "p50", "p90", "p95", "p99", "max", "mean")
_THRESHOLD_RE = re.compile(r"^([a-z0-9_]+):(\d+(?:\.\d*)?|\.\d+)%?$")


@dataclass(frozen=True)
class Threshold:
    """``--fail p99:10%``: a regression is ``new > base * (1 + percent / 100)``."""

    metric: str
    percent: float

    def passed(self, base: float, new: float) -> bool:
        return new > base * (1 + self.percent / 100)


def parse_threshold(text: str) -> Threshold:
    """argparse ``type=`` for ``--fail``: its ValueError becomes a one-line usage error."""
    match = _THRESHOLD_RE.match(text.strip().lower())
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
        return f"{value * 100:.2f}%"
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


# ------------------------------------------------------------------- profiles

_COLLAPSED_LINE = re.compile(r"^(.*\S)\s+(\d+(?:\.\d+)?)$")
# "function (file:line)" as asgi_perf writes frames; anything else is a bare name.
_COLLAPSED_FRAME = re.compile(r"^(.*) \(([^()]*?)(?::(\d+))?\)$")


def load_capture(path_text: str) -> Capture:
    """A ``.prof`` (pstats), a ``.collapsed`` (folded stacks) or a store's capture ``.json``."""
    path = existing_file(path_text)
    name = path.name.lower()
    if name.endswith(".prof"):
        return _from_prof(path)
    if name.endswith((".collapsed", ".folded")):
        return _from_collapsed(path)
    if name.endswith(".json") and not name.endswith(".speedscope.json"):
        return _from_capture_json(path)
    raise CLIError(
        f"{path_text}: unsupported file (expected a .prof, a .collapsed "
        "or a capture .json from profile_dir)"
    )


def _from_prof(path: Path) -> Capture:
    raw = read_pstats(path)
    return Capture(
        engine="pstats",
        stacks=pstats_to_stacks(raw),
        duration_s=sum(entry[2] for entry in raw.values()),
        pstats=raw,
        exact_stacks=False,
        meta={"kind": "file", "route": path.name},
    )


def _from_collapsed(path: Path) -> Capture:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise CLIError(f"{path}: not a text file of folded stacks") from None
    stacks: dict[Stack, float] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        match = _COLLAPSED_LINE.match(line)
        if match is None:
            raise CLIError(f"{path}:{number}: expected 'frame;frame;... COUNT', got {line[:60]!r}")
        stack = tuple(_frame(part) for part in match.group(1).split(";"))
        # Weights are microseconds, as asgi_perf writes them; other tools'
        # sample counts keep their proportions.
        stacks[stack] = stacks.get(stack, 0.0) + float(match.group(2)) / 1_000_000
    if not stacks:
        raise CLIError(f"{path}: no stacks in this file")
    return Capture(
        engine="collapsed",
        stacks=stacks,
        duration_s=sum(stacks.values()),
        meta={"kind": "file", "route": path.name},
    )


def _frame(text: str) -> FrameId:
    match = _COLLAPSED_FRAME.match(text)
    if match is None:
        return FrameId(text, "", 0)
    function, file, line = match.groups()
    return FrameId(function, "" if file == "?" else file, int(line or 0))


def _from_capture_json(path: Path) -> Capture:
    try:
        return Capture.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        reason = str(exc).split("\n", 1)[0] or type(exc).__name__
        raise CLIError(f"{path}: not a capture .json from profile_dir ({reason})") from None


def _format_for(output: str) -> str:
    """The renderer format an output file name asks for, longest extension first."""
    name = output.lower()
    for fmt, r in sorted(RENDERERS.items(), key=lambda kv: -len(kv[1].file_extension)):
        if name.endswith(r.file_extension):
            return fmt
    if name.endswith(".json"):
        return "capture.json"
    known = ", ".join(sorted({r.file_extension for r in RENDERERS.values()} | {".json"}))
    raise CLIError(f"-o {output}: unknown output type (extensions: {known})")


def _write(io: IO, capture: Capture, fmt: str, output: str) -> int:
    if fmt == "capture.json":
        body = json.dumps(capture.to_json(), separators=(",", ":")).encode()
    else:
        try:
            body = render(capture, fmt)
        except NotRenderable as exc:
            raise CLIError(f"-o {output}: {exc}") from None
    Path(output).write_bytes(body)
    io.out.print(f"saved {output} ({human_bytes(len(body))})", markup=False, soft_wrap=True)
    return EXIT_OK


def cmd_flamegraph(args: argparse.Namespace, io: IO) -> int:
    capture = load_capture(args.file)
    output = args.output or Path(args.file).name.split(".", 1)[0] + ".svg"
    return _write(io, capture, "svg", output)


def cmd_merge(args: argparse.Namespace, io: IO) -> int:
    fmt = _format_for(args.output)
    files = [existing_file(f) for f in args.files]
    if fmt == "prof" and all(f.name.lower().endswith(".prof") for f in files):
        for f in files:
            read_pstats(f)  # a bad file gets its own one-line error
        # pstats adds .prof files exactly; nothing to convert.
        merged = pstats.Stats(*(str(f) for f in files), stream=StringIO())
        merged.dump_stats(args.output)
        size = Path(args.output).stat().st_size
        io.out.print(
            f"saved {args.output} ({human_bytes(size)}, {len(files)} profiles merged)",
            markup=False,
            soft_wrap=True,
        )
        return EXIT_OK
    capture = combine((load_capture(str(f)) for f in files), {"files": [f.name for f in files]})
    return _write(io, capture, fmt, args.output)
