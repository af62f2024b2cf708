"""The plain-text summary the Locust plugin prints at the end of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from asgi_perf.budgets import BudgetReport, Verdict

_TABLE_ROWS = 20


def fmt(metric: str, value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    if metric.endswith("_ms"):
        # Three significant digits below 10 ms: a 0.05 ms limit is not "0.1".
        return f"{value:.1f} ms" if abs(value) >= 10 else f"{value:.3g} ms"
    if metric == "max_mb":
        return f"{value:.2f} MB"
    if metric == "error_rate":
        return f"{value * 100:.2f} %"
    if metric == "max_queries":
        return f"{value:g}"
    return f"{value}"


def table(verdicts: list[Verdict]) -> list[str]:
    # Fails first (the server and BudgetSet.check already sort them so); the
    # rest is cut to keep the summary short, budgets.json has everything.
    failing = [v for v in verdicts if v.get("verdict") == "fail"]
    others = [v for v in verdicts if v.get("verdict") != "fail"]
    shown = failing + others[: max(0, _TABLE_ROWS - len(failing))]
    rows = [("route", "metric", "limit", "measured", "verdict")]
    for v in shown:
        metric = str(v.get("metric", ""))
        rows.append(
            (
                str(v.get("route", "")),
                metric,
                fmt(metric, v.get("limit")),
                fmt(metric, v.get("measured")),
                str(v.get("verdict", "")).upper(),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [
        "  ".join(
            cell.rjust(width) if 2 <= i <= 3 else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if len(shown) < len(verdicts):
        lines.append(f"... {len(verdicts) - len(shown)} more verdicts in budgets.json")
    return lines


def summary(
    run_id: str,
    host: str,
    stats: dict[str, Any],
    verdicts: BudgetReport | None,
    saved: list[Path],
) -> list[str]:
    """What the run measured, the verdicts as a table, and the files saved."""
    lines = [f"asgi_perf: run {run_id} on {host}: {stats.get('requests', 0)} requests seen"]
    rows = _rows(verdicts)
    if verdicts is None:
        lines.append("no budget verdicts")
    elif not rows:
        lines.append(f"no budgets ({verdicts.get('source', 'none')})")
    else:
        counts = {k: sum(v.get("verdict") == k for v in rows) for k in ("fail", "pass")}
        insufficient = len(rows) - counts["fail"] - counts["pass"]
        result = "FAILED" if counts["fail"] else "ok"
        lines.append(
            f"budgets {result}: {counts['fail']} fail, {counts['pass']} pass, "
            f"{insufficient} insufficient ({verdicts.get('source', '')})"
        )
        lines.extend(table(rows))
        notes = dict.fromkeys(str(v["note"]) for v in rows if v.get("note"))
        lines.extend(f"note: {note}" for note in notes)
    for path in saved:
        lines.append(f"  {path}")
    by_name = {p.name: p for p in saved}
    if "window.prof" in by_name:
        lines.append(f"open: snakeviz {by_name['window.prof']}")
    if "window.svg" in by_name:
        lines.append(f"      {by_name['window.svg']} in a browser (flame graph)")
    return lines


def broken(verdicts: BudgetReport | None) -> list[str]:
    """One line per failed verdict: ``GET /x p99_ms 81.4 ms > 50.0 ms``."""
    return [
        f"{v.get('route')} {v.get('metric')} {fmt(str(v.get('metric')), v.get('measured'))}"
        f" > {fmt(str(v.get('metric')), v.get('limit'))}"
        for v in _rows(verdicts)
        if v.get("verdict") == "fail"
    ]


def _rows(verdicts: BudgetReport | None) -> list[Verdict]:
    # The report may come from another version's server: no "verdicts" is none.
    return list(verdicts.get("verdicts") or ()) if verdicts else []
