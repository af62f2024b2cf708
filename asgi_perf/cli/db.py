"""``asgi-perf db``: where the time goes in the database, from ``GET /db``.

Three tables: routes by DB time, the N+1s found (with the line of the app
that ran the statement), and the slow statements kept; with ``--route``,
that route's top statements too. The app runs with ``db=True``; when it
does not, the server answers 409 and this says how to turn it on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from rich.table import Table
from rich.text import Text

from asgi_perf.cli._common import IO, CLIError, client_for, fmt_number, is_number
from asgi_perf.cli._exit import EXIT_FAILED, EXIT_OK
from asgi_perf.client import PerfClientError
from asgi_perf.units import number_text

DB_OFF = "DB capture is off: start the app with db=True (or ASGI_PERF_DB=1)"
MAX_LIMIT = 1000  # the server's own bound on ?limit


def cmd_db(args: argparse.Namespace, io: IO) -> int:
    if args.limit is not None and not 1 <= args.limit <= MAX_LIMIT:
        raise CLIError(f"--limit must be between 1 and {MAX_LIMIT}, got {args.limit}")
    with client_for(args) as client:
        try:
            report = client.db(route=args.route, limit=args.limit)
        except PerfClientError as exc:
            if exc.status != 409:
                raise
            raise CLIError(DB_OFF, EXIT_FAILED) from None
        source = client.base_url
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return EXIT_OK
    for part in db_view(report, source, show_statements=args.route is not None):
        io.out.print(part)
    return EXIT_OK


def db_view(report: dict[str, Any], source: str, *, show_statements: bool) -> list[Any]:
    """What ``asgi-perf db`` prints, as rich renderables."""
    routes = _dicts(report.get("routes"))
    n_plus_one = _dicts(report.get("n_plus_one"))
    slow = _dicts(report.get("slow"))
    parts: list[Any] = [routes_table(routes, source) if routes else Text("no queries recorded")]
    if show_statements:
        parts.extend(statements_table(r) for r in routes)
    threshold = report.get("n_plus_one_threshold")
    if n_plus_one:
        parts.append(n_plus_one_table(n_plus_one, threshold))
    else:
        parts.append(Text(f"no N+1 found (a statement run {threshold}+ times in one request)"))
    slow_ms = report.get("slow_query_ms")
    if slow:
        parts.append(slow_table(slow, slow_ms))
    else:
        parts.append(Text(f"no statement slower than {fmt_number(slow_ms)} ms"))
    return parts


def routes_table(routes: list[dict[str, Any]], source: str) -> Table:
    # Text, not markup: a route or a URL may hold "[...]".
    table = Table(title=Text(f"{source} — routes by DB time"), title_justify="left")
    table.add_column("route", no_wrap=True)
    for name in ("requests", "queries", "queries/req", "DB ms", "DB ms/req", "failed"):
        table.add_column(name, justify="right")
    for r in routes:
        requests = r.get("requests")
        failed = r.get("failed")
        table.add_row(
            Text(str(r.get("route"))),
            fmt_number(requests),
            fmt_number(r.get("queries")),
            _per(r.get("queries"), requests),
            _ms(r.get("time_ms")),
            _ms(_ratio(r.get("time_ms"), requests)),
            Text(fmt_number(failed), style="red" if is_number(failed) and failed else ""),
        )
    return table


def statements_table(route: dict[str, Any]) -> Table:
    table = Table(title=Text(f"{route.get('route')} — top statements"), title_justify="left")
    table.add_column("statement", overflow="fold")
    for name in ("count", "total ms", "mean ms", "max ms", "failed"):
        table.add_column(name, justify="right")
    for s in _dicts(route.get("statements")):
        table.add_row(
            Text(str(s.get("statement"))),
            fmt_number(s.get("count")),
            _ms(s.get("total_ms")),
            _ms(s.get("mean_ms")),
            _ms(s.get("max_ms")),
            fmt_number(s.get("failed")),
        )
    return table


def n_plus_one_table(rows: list[dict[str, Any]], threshold: Any) -> Table:
    table = Table(
        title=Text(f"N+1: a statement run {threshold}+ times in one request"),
        title_justify="left",
        title_style="bold red",
    )
    table.add_column("route", no_wrap=True)
    table.add_column("statement", overflow="fold")
    table.add_column("per request", justify="right")
    table.add_column("requests", justify="right")
    table.add_column("call site", no_wrap=True)
    for n in rows:
        table.add_row(
            Text(str(n.get("route"))),
            Text(str(n.get("statement"))),
            fmt_number(n.get("per_request")),
            fmt_number(n.get("requests")),
            _call_site(n.get("call_site")),
        )
    return table


def slow_table(rows: list[dict[str, Any]], slow_ms: Any) -> Table:
    title = f"slow statements (over {fmt_number(slow_ms)} ms), newest first"
    table = Table(title=Text(title), title_justify="left")
    table.add_column("at", no_wrap=True)
    table.add_column("route", no_wrap=True)
    table.add_column("ms", justify="right")
    table.add_column("statement", overflow="fold")
    table.add_column("call site", no_wrap=True)
    for s in rows:
        at = s.get("at")
        table.add_row(
            time.strftime("%H:%M:%S", time.localtime(at)) if is_number(at) else "-",
            Text(str(s.get("route"))),
            _ms(s.get("duration_ms")),
            Text(str(s.get("statement"))),
            _call_site(s.get("call_site")),
        )
    return table


def _ms(value: Any) -> str:
    # Three significant digits: a query often takes 0.04 ms, which two decimals would round.
    return number_text(value) if is_number(value) else "-"


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _ratio(total: Any, requests: Any) -> float | None:
    if is_number(total) and is_number(requests) and requests > 0:
        return float(total) / requests
    return None


def _per(total: Any, requests: Any) -> str:
    return fmt_number(_ratio(total, requests))


def _call_site(site: Any) -> Text:
    return Text(site, style="cyan") if isinstance(site, str) else Text("-", style="dim")
