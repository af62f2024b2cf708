"""``asgi-perf check``: budget verdicts from a live app or a saved snapshot, for CI."""

from __future__ import annotations

import argparse
import dataclasses
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from asgi_perf.budgets import BudgetReport, BudgetSet, Verdict, load_budgets
from asgi_perf.cli._common import (
    IO,
    CLIError,
    client_for,
    fmt_number,
    is_number,
    is_url,
    load_snapshot,
    percent_text,
    verdict_text,
)
from asgi_perf.cli._exit import EXIT_FAILED, EXIT_OK
from asgi_perf.cli.fleet import clients, merged_stats
from asgi_perf.errors import ConfigError
from asgi_perf.units import number_text


def cmd_check(args: argparse.Namespace, io: IO) -> int:
    budgets = _budgets(args)
    target = args.targets[0]
    if len(args.targets) > 1:
        result = _check_merged(args, budgets)
    elif is_url(target):
        with client_for(args, target) as client:
            # The app's own budgets, unless a file says which to apply.
            result = client.budgets() if budgets is None else budgets.check(client.stats())
    else:
        snapshot = load_snapshot(target)
        if budgets is None:
            raise CLIError("checking a saved snapshot needs --budgets FILE")
        result = budgets.check(snapshot)
    verdicts = [v for v in result.get("verdicts") or () if isinstance(v, dict)]
    if args.junit:
        write_junit(Path(args.junit), verdicts, str(result.get("source") or target))
    if not verdicts:
        io.out.print(f"no budgets to check (source: {result.get('source')})", markup=False)
        return EXIT_OK
    io.out.print(verdicts_table(verdicts, str(result.get("source") or "")))
    for note in dict.fromkeys(str(v["note"]) for v in verdicts if v.get("note")):
        io.out.print(Text(f"note: {note}", style="yellow"))
    counts = Counter(str(v.get("verdict")) for v in verdicts)
    summary = ", ".join(f"{counts[k]} {k}" for k in ("fail", "pass", "insufficient") if counts[k])
    failed = counts["fail"] > 0
    io.out.print(
        f"[bold red]budgets broken[/]: {summary}" if failed else f"[green]budgets ok[/]: {summary}"
    )
    return EXIT_FAILED if failed else EXIT_OK


def _check_merged(args: argparse.Namespace, budgets: BudgetSet | None) -> BudgetReport:
    """``budgets`` judged on the merged numbers of several instances."""
    for target in args.targets:
        if not is_url(target):
            raise CLIError(f"{target}: several targets must all be URLs (http://...)")
    if budgets is None:
        # /_perf/budgets gives an instance's verdicts on its own numbers, not
        # the budgets themselves: they cannot be judged again on the sum.
        raise CLIError(
            "several URLs are judged on their merged numbers: give the budgets with "
            "--budgets FILE (each app's /_perf/budgets judges only its own numbers)"
        )
    return budgets.check(merged_stats(clients(args, args.targets)))


def _budgets(args: argparse.Namespace) -> BudgetSet | None:
    if args.budgets is None:
        if args.min_samples is not None:
            raise CLIError("--min-samples applies to --budgets FILE (the app uses its own)")
        return None
    if not Path(args.budgets).is_file():
        raise CLIError(f"{args.budgets}: no such budgets file")
    try:
        budgets = load_budgets(args.budgets, pyproject=None)
        if args.min_samples is not None:
            # The command line wins over the file's own default.
            budgets = dataclasses.replace(budgets, min_samples=args.min_samples)
    except ConfigError as exc:
        raise CLIError(str(exc)) from None
    if not budgets:
        raise CLIError(f"{args.budgets}: no budgets in this file")
    return budgets


def verdicts_table(verdicts: list[Verdict], source: str) -> Table:
    # Text, not markup: a route or a file name may hold "[...]".
    table = Table(
        title=Text(f"budget verdicts, source: {source}") if source else None, title_justify="left"
    )
    table.add_column("route", no_wrap=True)
    table.add_column("metric")
    for name in ("limit", "measured", "margin", "samples"):
        table.add_column(name, justify="right")
    table.add_column("verdict")
    for v in verdicts:
        metric = str(v.get("metric"))
        table.add_row(
            Text(str(v.get("route"))),
            metric,
            _value(metric, v.get("limit")),
            _value(metric, v.get("measured")),
            _value(metric, v.get("margin")),
            fmt_number(v.get("samples")),
            verdict_text(v.get("verdict")),
        )
    return table


def _value(metric: str, value: Any) -> str:
    if not is_number(value):
        return "-"
    if metric == "error_rate":
        return percent_text(value)
    if metric == "max_queries":
        return number_text(value)
    unit = " MB" if metric == "max_mb" else " ms"
    return number_text(value) + unit


def write_junit(path: Path, verdicts: list[Verdict], source: str) -> None:
    """One testcase per verdict: ``failure`` for fail, ``skipped`` for insufficient."""
    counts = Counter(str(v.get("verdict")) for v in verdicts)
    totals = {
        "tests": str(len(verdicts)),
        "failures": str(counts["fail"]),
        "errors": "0",
        "skipped": str(counts["insufficient"]),
    }
    root = ET.Element("testsuites", {"name": "asgi-perf check", **totals})
    suite = ET.SubElement(root, "testsuite", {"name": f"asgi_perf budgets ({source})", **totals})
    for v in verdicts:
        route, metric = str(v.get("route")), str(v.get("metric"))
        case = ET.SubElement(
            suite,
            "testcase",
            {"classname": "asgi_perf.budgets", "name": f"{route} {metric}", "time": "0"},
        )
        limit, measured = _value(metric, v.get("limit")), _value(metric, v.get("measured"))
        if v.get("verdict") == "fail":
            failure = ET.SubElement(
                case,
                "failure",
                {"type": "budget", "message": f"{metric} {measured} > limit {limit}"},
            )
            failure.text = (
                f"route {route}, pattern {v.get('pattern')}: {metric} measured {measured}, "
                f"limit {limit}, over {v.get('samples')} samples"
            )
        elif v.get("verdict") == "insufficient":
            message = f"not enough samples for {metric}: {v.get('samples')}"
            ET.SubElement(case, "skipped", {"message": str(v.get("note") or message)})
    ET.indent(root)
    try:
        ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    except OSError as exc:
        raise CLIError(f"--junit {path}: {exc.strerror or exc}") from None
