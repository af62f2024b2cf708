"""Subcommands that talk to a running app: ``stats``, ``profile``, ``fetch``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from rich.table import Table
from rich.text import Text

from asgi_perf.capture import ProfileMeta, combine
from asgi_perf.cli._common import (
    IO,
    CLIError,
    client_for,
    download_profile,
    fmt_ms,
    fmt_number,
    format_for,
    progress,
    verdict_text,
    write_output,
)
from asgi_perf.cli._exit import EXIT_OK
from asgi_perf.cli.files import capture_from_json
from asgi_perf.cli.fleet import Each, clients, merged_stats
from asgi_perf.cli.view import open_file
from asgi_perf.client import PerfClient
from asgi_perf.renderers import NotRenderable, render, renderer_for

_POLL_S = 0.1


def cmd_stats(args: argparse.Namespace, io: IO) -> int:
    if args.histograms and not args.json:
        raise CLIError("--histograms goes with --json (the table shows no histograms)")
    instances = clients(args, args.url)
    if len(instances) == 1:
        with instances[0] as client:
            snapshot = client.stats(histograms=args.histograms)
    else:
        snapshot = merged_stats(instances, histograms=args.histograms)
    if args.json:
        # Plain JSON, not rich: this is what `> baseline.json` saves for `diff`.
        sys.stdout.write(json.dumps(snapshot, indent=2) + "\n")
        return EXIT_OK
    io.out.print(stats_table(snapshot, ", ".join(c.base_url for c in instances)))
    return EXIT_OK


def stats_table(snapshot: dict[str, Any], source: str) -> Table:
    routes = [r for r in snapshot.get("routes") or () if isinstance(r, dict)]
    routes.sort(key=_p99, reverse=True)
    process = snapshot.get("process") or {}
    caption = [f"{snapshot.get('requests', 0)} requests", f"{len(routes)} routes"]
    instances = snapshot.get("instances")
    if isinstance(instances, list):
        caption.insert(0, f"{len(instances)} instances merged")
    if isinstance(process.get("rss_mb"), (int, float)):
        caption.append(f"RSS {process['rss_mb']:.1f} MB")
    budgets = snapshot.get("budgets")
    if isinstance(budgets, dict):
        caption.append(
            "budgets ok" if budgets.get("ok") else f"budgets: {budgets.get('failed')} failed"
        )
    table = Table(
        # Text, not markup: a route or a URL may hold "[...]".
        title=Text(
            f"{source} — latency in ms, rps over the last {_recent_window(routes)} s — "
            "sorted by p99"
        ),
        caption=", ".join(caption),
        title_justify="left",
        caption_justify="left",
    )
    table.add_column("route", no_wrap=True)
    for name in ("count", "rps", "p50", "p90", "p99", "max", "errors"):
        table.add_column(name, justify="right")
    table.add_column("budget")
    for r in routes:
        latency = r.get("latency_ms") or {}
        recent = r.get("recent") or {}
        errors = int(r.get("errors") or 0)
        table.add_row(
            Text(str(r.get("route"))),
            fmt_number(r.get("count")),
            fmt_number(recent.get("rps")),
            *(fmt_ms(latency.get(k)) for k in ("p50", "p90", "p99", "max")),
            Text(str(errors), style="red" if errors else ""),
            verdict_text(r.get("budget")),
        )
    return table


def _p99(route: dict[str, Any]) -> float:
    value = (route.get("latency_ms") or {}).get("p99")
    return float(value) if isinstance(value, (int, float)) else -1.0


def _recent_window(routes: list[dict[str, Any]]) -> Any:
    for r in routes:
        window = (r.get("recent") or {}).get("window_s")
        if window is not None:
            return window
    return 60


def cmd_profile(args: argparse.Namespace, io: IO) -> int:
    fmt = format_for(args)
    if args.last is not None:
        if args.engine is not None:
            raise CLIError("--last is cut from the app's continuous sampler: no --engine")
        if args.last <= 0:
            raise CLIError(f"--last must be more than 0, got {args.last}")
    elif args.seconds <= 0:
        raise CLIError(f"--seconds must be more than 0, got {args.seconds:g}")
    instances = clients(args, args.url)
    if len(instances) == 1:
        body, name = _profiles(instances, args, io, fmt)[0]
    else:
        body, name = _merged_profile(instances, args, io, fmt)
    path = write_output(io, body, args.output, name)
    if args.open and path is not None:
        return open_file(path)
    return EXIT_OK


def _merged_profile(
    instances: list[PerfClient], args: argparse.Namespace, io: IO, fmt: str
) -> tuple[bytes, str]:
    """One window on each instance, downloaded as captures, combined, rendered here."""
    # The capture itself: stacks with exact weights and the engine's own call
    # counts, which .prof (stacks rebuilt) or .collapsed (rounded) would lose.
    downloads = _profiles(instances, args, io, "json")
    captures = [
        capture_from_json(body, f"{client.api_url}/profile")
        for client, (body, _) in zip(instances, downloads, strict=True)
    ]
    routes = {c.meta.get("route") for c in captures}
    meta: ProfileMeta = {"instances": [c.base_url for c in instances]}
    if len(routes) == 1:
        meta["route"] = routes.pop()
    try:
        body = render(combine(captures, meta), fmt)
    except NotRenderable as exc:
        raise CLIError(f"--format {fmt}: {exc}") from None
    what = f"last-{args.last}s" if args.last is not None else "window"
    return body, f"merged-{what}-{len(instances)}-instances{renderer_for(fmt).file_extension}"


def _profiles(
    instances: list[PerfClient], args: argparse.Namespace, io: IO, fmt: str
) -> list[tuple[bytes, str]]:
    """``GET /_perf/profile`` on every instance at once: the bodies and suggested names.

    The clients are closed once done (``Each``).
    """

    def fetch(client: PerfClient) -> tuple[bytes, str]:
        if args.last is not None:
            return client.profile(None, fmt=fmt, route=args.route, last=args.last)
        return client.profile(args.seconds, engine=args.engine, fmt=fmt, route=args.route)

    each = Each(instances, fetch)
    if args.last is not None:
        # The recent past is already recorded: nothing to wait for.
        return each.wait()
    what = instances[0].base_url if len(instances) == 1 else f"{len(instances)} instances"
    with progress(io, f"profiling {what}", args.seconds) as update:
        start = time.monotonic()
        while not each.done():
            elapsed = time.monotonic() - start
            update(elapsed, "rendering and downloading" if elapsed >= args.seconds else None)
            each.wait_changed(_POLL_S)
    return each.results()


def cmd_fetch(args: argparse.Namespace, io: IO) -> int:
    with client_for(args) as client:
        body, name = download_profile(client, args.ref, format_for(args), args.route)
    path = write_output(io, body, args.output, name)
    if args.open and path is not None:
        return open_file(path)
    return EXIT_OK
