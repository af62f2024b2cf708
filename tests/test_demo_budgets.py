"""The shop's budgets judge its code, not the machine the demo runs on (issue #12).

``make demo`` runs the server, Locust and a yappi window on one machine, so
every route waits for cores and threads; on a busy 2-core machine ``GET
/cart`` broke its 40 ms p50 while nothing in its code was slow. The budgets
are checked here against what the demo measured on such a machine: only the
unindexed search and the orders' N+1 (issue #14: its query count, not its
latency) may fail there, and they must still fail on a fast, idle one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from asgi_perf.budgets import load_budgets

BUDGETS = Path(__file__).resolve().parent.parent / "examples" / "shop" / "perf-budgets.toml"
SEARCH = "GET /products/search"
ORDERS = "GET /api/orders"
# Queries per request (the most), from the demo's /_perf/db: the same on
# every machine. The orders' N+1 runs one per order, up to its limit of 20.
QUERIES = {
    "GET /api/orders": 22,
    "GET /cart": 2,
    "GET /products": 1,
    "GET /products/categories": 1,
    "GET /products/search": 1,
    "GET /products/{product_id}": 1,
    "POST /cart/items": 6,
    "POST /checkout": 7,
    "POST /login": 4,
}

# route: (count, p50, p90, p99, max) in ms, from the demo's stats.json.
MEASURED: dict[str, dict[str, tuple[int, float, float, float, float]]] = {
    # A 2-core VM running other work: the machine of the report.
    "busy 2-core": {
        "GET /cart": (201, 71.1, 160.9, 218.0, 265.4),
        # The routes of issue #14: `make demo` on a 2-core VM running other tests.
        "GET /api/orders": (180, 20.7, 230.8, 681.7, 737.4),
        "GET /products/categories": (189, 38.7, 198.2, 643.9, 737.6),
        "GET /products": (210, 51.4, 157.8, 279.1, 322.8),
        "GET /products/search": (209, 187.3, 331.1, 656.3, 691.6),
        "GET /products/{product_id}": (206, 46.8, 157.8, 542.7, 565.6),
        "POST /cart/items": (204, 69.7, 187.3, 331.1, 575.2),
        "POST /checkout": (198, 63.4, 194.5, 392.9, 598.8),
        "POST /login": (212, 53.4, 157.8, 244.3, 329.7),
    },
    # The same VM with two CPU-bound processes beside the demo.
    "overloaded 2-core": {
        "GET /cart": (100, 239.7, 512.6, 708.1, 711.5),
        # Issue #14's routes: the demo on that VM beside two `while True: pass`.
        "GET /api/orders": (84, 218.0, 484.2, 1397.6, 1397.6),
        "GET /products/categories": (95, 249.0, 440.3, 778.6, 778.9),
        "GET /products": (109, 190.9, 392.9, 608.2, 743.4),
        "GET /products/search": (108, 466.2, 808.8, 1351.0, 1482.7),
        "GET /products/{product_id}": (107, 128.1, 357.3, 563.7, 925.6),
        "POST /cart/items": (104, 249.0, 522.5, 694.8, 708.9),
        "POST /checkout": (97, 230.8, 532.5, 608.2, 613.5),
        "POST /login": (110, 173.6, 378.2, 631.8, 814.0),
    },
    # A fast machine with nothing else to do: the search's scan alone.
    "fast and idle": {
        "GET /cart": (200, 1.2, 2.0, 4.0, 6.0),
        # Issue #14's routes, estimated from their DB time alone (/_perf/db):
        # 22 indexed queries; a GROUP BY over a covering index of 50 000 rows.
        "GET /api/orders": (200, 2.5, 3.5, 6.0, 9.0),
        "GET /products/categories": (200, 11.0, 13.0, 18.0, 25.0),
        "GET /products": (200, 1.5, 2.5, 5.0, 8.0),
        "GET /products/search": (200, 9.0, 12.0, 18.0, 25.0),
        "GET /products/{product_id}": (200, 1.0, 1.8, 3.5, 5.0),
        "POST /cart/items": (200, 2.0, 4.0, 9.0, 12.0),
        "POST /checkout": (200, 2.5, 5.0, 10.0, 14.0),
        "POST /login": (200, 8.0, 10.0, 15.0, 20.0),
    },
}


def snapshot(routes: dict[str, tuple[int, float, float, float, float]]) -> dict[str, Any]:
    """A stats snapshot with these latencies, shaped like the middleware's."""
    return {
        "schema": 1,
        "routes": [
            {
                "route": key,
                "count": count,
                "errors": 0,
                "latency_ms": {
                    "p50": p50,
                    "p90": p90,
                    "p95": p99,
                    "p99": p99,
                    "p999": top,
                    "max": top,
                    "mean": p50,
                },
                "db": {"queries": {"max": QUERIES[key]}},
            }
            for key, (count, p50, p90, p99, top) in routes.items()
        ],
    }


@pytest.mark.parametrize("machine", list(MEASURED))
def test_only_the_unindexed_search_and_the_n_plus_one_break_their_budgets(machine: str) -> None:
    report = load_budgets(BUDGETS).check(snapshot(MEASURED[machine]))
    failing = {v["route"] for v in report["verdicts"] if v["verdict"] == "fail"}
    assert failing == {SEARCH, ORDERS}, machine
    # Every other route is judged (enough requests), and passes everything.
    outcomes: dict[str, set[str]] = {}
    for v in report["verdicts"]:
        outcomes.setdefault(v["route"], set()).add(v["verdict"])
    assert outcomes.pop(SEARCH) == {"fail", "pass"}  # error_rate holds
    # The orders fail on their query count; their latency may wait for a
    # core like any route's (the overloaded machine's p99).
    orders = {v["metric"]: v["verdict"] for v in report["verdicts"] if v["route"] == ORDERS}
    assert orders["max_queries"] == "fail"
    assert orders["error_rate"] == "pass"
    del outcomes[ORDERS]
    others = set(MEASURED[machine]) - {SEARCH, ORDERS}
    assert outcomes == {key: {"pass"} for key in others}
