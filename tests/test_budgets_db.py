"""DB budgets (``max_queries``, ``p99_db_ms``): loading, verdicts from snapshots, notes.

The snapshots here are shaped like ``/_perf/stats`` with ``db=True`` (see
``routes[].db`` in the README); a route without ``db`` is an app running
with DB capture off, which no number can judge. The last tests serve
``db_shop`` (sqlite3 through ``asgi_perf.db.instrument``) with uvicorn and
read ``/_perf/budgets`` and ``asgi-perf check``.
"""

from __future__ import annotations

import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import db_shop
import httpx
import pytest

from asgi_perf.budgets import DB_OFF_NOTE, BudgetSet, Verdict, load_budgets
from asgi_perf.budgets.check import MERGED_NOTE
from asgi_perf.cli.check import write_junit
from asgi_perf.errors import ConfigError
from asgi_perf.integrations._summary import broken, summary
from asgi_perf.testing.budgets import format_verdict, is_broken, wants_db

ORDERS = "GET /api/orders"


def entry(
    key: str = ORDERS,
    count: int = 12,
    *,
    queries_max: int | None = 61,
    db_p99: float = 4.5,
) -> dict[str, Any]:
    """One route of a snapshot; ``queries_max=None``: the app runs with db off."""
    out: dict[str, Any] = {
        "route": key,
        "count": count,
        "errors": 0,
        "latency_ms": {"p50": 5.0, "p90": 8.0, "p95": 9.0, "p99": 10.0, "max": 12.0},
    }
    if queries_max is not None:
        out["db"] = {
            "queries": {"total": queries_max * count, "mean": float(queries_max), "p50": 61.0,
                        "p99": float(queries_max), "max": queries_max},
            "time_ms": {"total": 40.0, "mean": 3.3, "p50": 3.1, "p99": db_p99, "max": db_p99 + 1},
            "share": 0.4,
            "n_plus_one": count,
        }  # fmt: skip
    return out


def check(budgets: dict[str, Any], *routes: dict[str, Any], db: bool = True) -> list[Verdict]:
    snap: dict[str, Any] = {"schema": 1, "routes": list(routes)}
    if db:
        snap["db"] = {"enabled": True, "queries": 0, "n_plus_one_threshold": 10}
    return load_budgets(budgets).check(snap)["verdicts"]


def only(verdicts: list[Verdict]) -> Verdict:
    assert len(verdicts) == 1, verdicts
    return verdicts[0]


# --- loading -------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [(5, 5.0), (0, 0.0), ("7", 7.0), (3.0, 3.0)])
def test_max_queries_is_a_whole_number(value: object, expected: float) -> None:
    budgets = load_budgets({ORDERS: {"max_queries": value}})
    assert budgets.budgets[0].limits == {"max_queries": expected}


@pytest.mark.parametrize("value", [-1, 2.5, "3 queries", "", True, float("inf"), [3]])
def test_max_queries_refuses_what_is_not_a_count(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        load_budgets({ORDERS: {"max_queries": value}})
    assert str(info.value).startswith(f'budgets: "{ORDERS}": max_queries: expected a whole number')


def test_p99_db_ms_takes_human_units(tmp_path: Path) -> None:
    path = tmp_path / "perf-budgets.toml"
    path.write_text(f'["{ORDERS}"]\nmax_queries = 5\np99_db_ms = "0.02 s"\n', encoding="utf-8")
    (budget,) = load_budgets(path).budgets
    assert dict(budget.limits) == {"max_queries": 5.0, "p99_db_ms": 20.0}


# --- verdicts ------------------------------------------------------------------


def test_one_request_over_max_queries_fails_with_few_samples() -> None:
    # A maximum: one request with 61 queries breaks a limit of 5, before min_samples.
    v = only(check({"min_samples": 100, ORDERS: {"max_queries": 5}}, entry(count=1)))
    assert (v["verdict"], v["measured"], v["margin"], v["samples"]) == ("fail", 61.0, -56.0, 1)
    assert "note" not in v


@pytest.mark.parametrize(
    ("limit", "count", "verdict"),
    [(61, 20, "pass"), (61, 19, "insufficient"), (60, 20, "fail"), (0, 20, "fail")],
)
def test_max_queries(limit: int, count: int, verdict: str) -> None:
    v = only(check({ORDERS: {"max_queries": limit}}, entry(count=count)))
    assert v["verdict"] == verdict
    assert v["measured"] == 61


@pytest.mark.parametrize(
    ("limit", "p99", "verdict"), [(5, 4.5, "pass"), (4.5, 4.5, "pass"), (4, 4.5, "fail")]
)
def test_p99_db_ms(limit: float, p99: float, verdict: str) -> None:
    v = only(check({ORDERS: {"p99_db_ms": limit}}, entry(count=50, db_p99=p99)))
    assert (v["verdict"], v["measured"], v["samples"]) == (verdict, p99, 50)


def test_p99_db_ms_needs_min_samples() -> None:
    v = only(check({"min_samples": 20, ORDERS: {"p99_db_ms": 1}}, entry(count=3, db_p99=9.0)))
    assert v["verdict"] == "insufficient"  # a percentile, not a maximum
    assert "note" not in v


def test_a_route_with_no_queries_passes() -> None:
    v = only(check({ORDERS: {"max_queries": 0}}, entry(count=30, queries_max=0)))
    assert (v["verdict"], v["measured"]) == ("pass", 0)


def test_db_off_is_insufficient_with_a_note() -> None:
    found = check(
        {ORDERS: {"max_queries": 5, "p99_db_ms": 10, "p99_ms": 100}},
        entry(count=500, queries_max=None),
        db=False,
    )
    by_metric = {v["metric"]: v for v in found}
    for metric in ("max_queries", "p99_db_ms"):
        v = by_metric[metric]
        assert (v["verdict"], v["measured"], v["note"]) == ("insufficient", None, DB_OFF_NOTE)
    assert DB_OFF_NOTE == "no DB numbers: start the app with db=True (or ASGI_PERF_DB=1)"
    # The latency budget beside them is judged as ever, and carries no note.
    assert by_metric["p99_ms"]["verdict"] == "pass"
    assert "note" not in by_metric["p99_ms"]


def test_untested_route_has_a_note_only_when_db_is_off() -> None:
    budgets = {ORDERS: {"max_queries": 5}}
    on = only(check(budgets, db=True))
    assert (on["route"], on["verdict"], on["samples"]) == (ORDERS, "insufficient", 0)
    assert "note" not in on  # db is on: the route just had no requests
    off = only(check(budgets, db=False))
    assert (off["verdict"], off["note"]) == ("insufficient", DB_OFF_NOTE)


def test_merged_stats_of_several_instances_say_so() -> None:
    # `asgi-perf check URL URL --budgets`: the instances' DB numbers are not added up.
    snap = {"routes": [entry(queries_max=None)], "instances": ["http://a:1", "http://b:1"]}
    v = only(load_budgets({ORDERS: {"max_queries": 5}}).check(snap)["verdicts"])
    assert (v["verdict"], v["note"]) == ("insufficient", MERGED_NOTE)
    assert "check each URL on its own" in MERGED_NOTE


def test_route_verdict_and_report_ok() -> None:
    budgets = load_budgets({"GET /api/*": {"max_queries": 5}})
    assert budgets.route_verdict(entry()) == "fail"
    assert budgets.route_verdict(entry(queries_max=3, count=25)) == "pass"
    assert budgets.route_verdict(entry(queries_max=None)) == "insufficient"
    report = budgets.check({"routes": [entry(queries_max=None)]})
    assert report["ok"] is True  # nothing failed: the note says why nothing passed either


def test_glob_and_exact_patterns_apply_per_metric() -> None:
    budgets = {"*": {"max_queries": 100, "p99_db_ms": 50}, ORDERS: {"max_queries": 5}}
    found = {(v["metric"], v["pattern"], v["verdict"]) for v in check(budgets, entry(count=30))}
    assert found == {("max_queries", ORDERS, "fail"), ("p99_db_ms", "*", "pass")}


# --- how the verdicts read -----------------------------------------------------


def test_one_line_per_verdict() -> None:
    fail, note = (
        only(check({ORDERS: {"max_queries": 5}}, entry(count=1))),
        only(check({ORDERS: {"max_queries": 5}}, entry(count=1, queries_max=None), db=False)),
    )
    assert format_verdict(fail) == f"{ORDERS} max_queries: 61 queries > limit 5 queries (1 sample)"
    assert (
        format_verdict(note) == f"{ORDERS} max_queries: {DB_OFF_NOTE} (1 sample), limit 5 queries"
    )
    # A budget that cannot be measured must not let a test pass.
    assert is_broken(fail) and is_broken(note)
    db_ms = only(check({ORDERS: {"p99_db_ms": 10}}, entry(count=20)))
    assert format_verdict(db_ms) == f"{ORDERS} p99_db_ms: 4.5 ms <= limit 10 ms (20 samples)"
    assert not is_broken(db_ms)


def test_wants_db() -> None:
    assert wants_db(load_budgets({ORDERS: {"p99_db_ms": 10}}))
    assert not wants_db(load_budgets({ORDERS: {"p99_ms": 10}}))
    assert not wants_db(BudgetSet())


def test_junit_skips_with_the_note(tmp_path: Path) -> None:
    found = check({ORDERS: {"max_queries": 5}}, entry(queries_max=None), db=False)
    write_junit(tmp_path / "junit.xml", found, "test")
    skipped = ET.parse(tmp_path / "junit.xml").getroot().find(".//skipped")
    assert skipped is not None
    assert skipped.get("message") == DB_OFF_NOTE


def test_locust_summary_shows_the_db_budget_and_the_note() -> None:
    budgets = {ORDERS: {"max_queries": 5}, "GET /api/products": {"max_queries": 5}}
    report = load_budgets(budgets).check(
        {"routes": [entry(count=30), entry("GET /api/products", queries_max=None)]}
    )
    lines = summary("run1", "http://127.0.0.1:1", {"requests": 42}, report, [])
    assert lines[1] == "budgets FAILED: 1 fail, 0 pass, 1 insufficient (budgets)"
    row = next(line for line in lines if line.startswith(ORDERS))
    assert row.split() == [*ORDERS.split(), "max_queries", "5", "61", "FAIL"]
    assert f"note: {DB_OFF_NOTE}" in lines
    assert broken(report) == [f"{ORDERS} max_queries 61 > 5"]


# --- a real app: /_perf/budgets, /_perf/stats and asgi-perf check ----------------


@pytest.fixture
def shop_url(live_server: Any) -> Iterator[Callable[..., str]]:
    conns: list[sqlite3.Connection] = []

    def start(**perf: Any) -> str:
        conns.append(db_shop.connect())
        url: str = live_server(db_shop.make_app(conns[-1], **perf)).url
        with httpx.Client(base_url=url, trust_env=False, timeout=30) as client:
            for path in ("/orders", "/orders", "/orders/joined", "/orders/joined"):
                client.get(path).raise_for_status()
        return url

    yield start
    for conn in conns:
        conn.close()


LIVE_BUDGETS = {
    "min_samples": 2,
    "GET /orders": {"max_queries": 5},
    "GET /orders/joined": {"max_queries": 5, "p99_db_ms": "1 s"},
}


@pytest.mark.slow
def test_budgets_of_a_real_app(shop_url: Callable[..., str]) -> None:
    url = shop_url(db=True, budgets=LIVE_BUDGETS)
    report = httpx.get(f"{url}/_perf/budgets", trust_env=False, timeout=30).json()
    found = {(v["route"], v["metric"]): v for v in report["verdicts"]}
    assert report["ok"] is False
    orders = found[("GET /orders", "max_queries")]
    assert (orders["verdict"], orders["measured"]) == ("fail", db_shop.ORDERS + 1)
    joined = found[("GET /orders/joined", "max_queries")]
    assert (joined["verdict"], joined["measured"], joined["samples"]) == ("pass", 1, 2)
    assert found[("GET /orders/joined", "p99_db_ms")]["verdict"] == "pass"
    assert not any("note" in v for v in report["verdicts"])
    stats = httpx.get(f"{url}/_perf/stats", trust_env=False, timeout=30).json()
    assert {r["route"]: r["budget"] for r in stats["routes"]} == {
        "GET /orders": "fail",
        "GET /orders/joined": "pass",
    }


@pytest.mark.slow
def test_budgets_of_a_real_app_with_db_off(shop_url: Callable[..., str], cli: Any) -> None:
    url = shop_url(budgets=LIVE_BUDGETS)
    report = httpx.get(f"{url}/_perf/budgets", trust_env=False, timeout=30).json()
    assert report["ok"] is True
    assert {(v["route"], v["metric"], v["verdict"], v.get("note")) for v in report["verdicts"]} == {
        ("GET /orders", "max_queries", "insufficient", DB_OFF_NOTE),
        ("GET /orders/joined", "max_queries", "insufficient", DB_OFF_NOTE),
        ("GET /orders/joined", "p99_db_ms", "insufficient", DB_OFF_NOTE),
    }
    code, out, err = cli("check", url)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    # The note once, under the table, whatever the number of verdicts it explains.
    assert [line for line in lines if line.startswith("note:")] == [f"note: {DB_OFF_NOTE}"]
    assert lines[-1] == "budgets ok: 3 insufficient"


@pytest.mark.slow
def test_check_prints_the_db_verdicts(shop_url: Callable[..., str], cli: Any) -> None:
    url = shop_url(db=True, budgets=LIVE_BUDGETS)
    code, out, _ = cli("check", url)
    assert code == 1
    row = next(line for line in out.splitlines() if "GET /orders " in line)
    cells = [c.strip() for c in row.strip("│").split("│")]
    # Query counts have no unit; margin = limit - measured.
    assert cells == ["GET /orders", "max_queries", "5", "13", "-8", "2", "fail"]


@pytest.mark.slow
def test_check_of_several_instances_says_db_is_not_merged(
    shop_url: Callable[..., str], cli: Any, tmp_path: Path
) -> None:
    urls = [shop_url(db=True), shop_url(db=True)]
    budgets = tmp_path / "budgets.toml"
    budgets.write_text('min_samples = 1\n["GET /orders"]\nmax_queries = 5\n', encoding="utf-8")
    code, out, _ = cli("check", *urls, "--budgets", str(budgets))
    assert code == 0
    assert f"note: {MERGED_NOTE}" in out.splitlines()
