"""The dashboard's Database panel in a real browser (Debian's Chromium, Playwright).

A real app (``tests/db_shop.py``: sqlite3 through ``asgi_perf.db.instrument``)
under uvicorn, real traffic, and the page read as a person reads it: the
routes by DB time, the N+1 with the line of the app that runs it, the slow
statements; and nothing of the panel, nor a call to ``/db``, while capture
is off.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import db_shop
import httpx
import pytest

CHROMIUM = os.environ.get("ASGI_PERF_CHROMIUM", "/usr/bin/chromium")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM),
        reason=f"no Chromium at {CHROMIUM}: apt-get install chromium (make does, as root)",
    ),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (dev extra)")

WAIT_MS = 15_000
BUDGETS = {"min_samples": 1, "GET /orders": {"max_queries": 5}}
ORDERS_CHIP = "tr[data-route='GET /orders'] .verdict"


def traffic(url: str, *paths: str) -> None:
    with httpx.Client(base_url=url, trust_env=False, timeout=30) as client:
        for path in paths:
            assert client.get(path).status_code == 200


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM)
        yield launched
        launched.close()


@pytest.fixture
def open_dashboard(
    browser: Any, live_server: Callable[..., Any]
) -> Iterator[Callable[..., tuple[Any, str, list[str], list[str]]]]:
    """Factory: ``open_dashboard(**perf)`` -> (page, url, URLs asked, errors logged)."""
    contexts: list[Any] = []
    conns = []

    def open_page(send: tuple[str, ...] = (), **perf: Any) -> tuple[Any, str, list[str], list[str]]:
        conns.append(db_shop.connect())
        url = live_server(db_shop.make_app(conns[-1], **perf)).url
        traffic(url, *send)
        context = browser.new_context(
            color_scheme="light", viewport={"width": 1400, "height": 1000}
        )
        contexts.append(context)
        page = context.new_page()
        asked: list[str] = []
        errors: list[str] = []
        page.on("request", lambda r: asked.append(r.url))
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
        page.goto(url + "/_perf/")
        return page, url, asked, errors

    yield open_page
    for context in contexts:
        context.close()
    for conn in conns:
        conn.close()


def cells(page: Any, selector: str) -> list[list[str]]:
    return [
        [c.strip() for c in row]
        for row in page.eval_on_selector_all(
            f"{selector} tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.innerText))"
        )
    ]


def test_the_db_panel_shows_routes_n_plus_one_and_slow_statements(open_dashboard: Any) -> None:
    page, url, asked, errors = open_dashboard(
        ("/orders", "/orders", "/orders/joined", "/search?ms=30"),
        db=True,
        slow_query_ms=20,
        budgets=BUDGETS,
    )
    page.wait_for_selector("#db .db-n-plus-one tbody tr:not(.empty)", timeout=WAIT_MS)
    assert page.is_visible("#db")
    per_request = db_shop.ORDERS + 1
    routes = {r[0]: r for r in cells(page, "#db .db-routes")}
    assert set(routes) == {"GET /orders", "GET /orders/joined", "GET /search"}
    assert routes["GET /orders"][1:3] == ["2", f"{per_request}.0"]
    assert routes["GET /orders/joined"][1:3] == ["1", "1.0"]
    assert routes["GET /orders"][5] == "0"  # no query failed
    # The 30 ms statement puts /search first: routes by DB time.
    assert cells(page, "#db .db-routes")[0][0] == "GET /search"
    assert cells(page, "#db .db-n-plus-one") == [
        [
            "GET /orders",
            db_shop.LINES_STATEMENT,
            str(db_shop.ORDERS),
            "2",
            db_shop.call_site("N+1-HERE"),
        ]
    ]
    assert "run 10+ times" in page.inner_text("#db .db-n-plus-one-title")
    slow = cells(page, "#db .db-slow")
    assert [(r[1], r[3], r[4]) for r in slow] == [
        ("GET /search", db_shop.SEARCH_STATEMENT, db_shop.call_site("SLOW-HERE"))
    ]
    assert slow[0][2].endswith(" ms")
    assert "over 20.0 ms" in page.inner_text("#db .db-slow-title")
    summary = page.inner_text("#db .summary")
    assert f"{2 * per_request + 2} queries on 3 routes; 1 N+1, 1 slow statements kept" == summary
    assert page.is_hidden("#db .off")
    # The route table's budget chip: the N+1 breaks max_queries.
    page.wait_for_selector(f"{ORDERS_CHIP}.verdict-fail", timeout=WAIT_MS)
    assert page.inner_text(ORDERS_CHIP) == "fail queries ≤ 5"

    # A click on the route: its detail says how it uses the database.
    page.click("#routes-table tr[data-route='GET /orders']")
    page.wait_for_selector("#route:not([hidden])", timeout=WAIT_MS)
    detail = page.inner_text("#route .summary")
    assert f"; DB {per_request}.0 queries/request (max {per_request}), p99 " in detail
    assert detail.endswith("; N+1 in 2 requests")

    # New queries come in: the panel reads /db again and shows them.
    traffic(url, "/orders/joined", "/orders/joined")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#db .db-routes tbody tr')]"
        ".some(r => r.cells[0].innerText === 'GET /orders/joined' && r.cells[1].innerText === '3')",
        timeout=WAIT_MS,
    )
    origin = urlsplit(url).netloc
    assert all(urlsplit(u).netloc == origin for u in asked if not u.startswith(("data:", "blob:")))
    assert errors == []


def test_the_db_panel_is_hidden_while_capture_is_off(open_dashboard: Any) -> None:
    page, _, asked, errors = open_dashboard(("/orders",), budgets=BUDGETS)
    page.wait_for_selector("body[data-ready]", timeout=WAIT_MS)
    # One more refresh: the panel stays hidden and /db is never asked (no 409 to show).
    page.wait_for_function(
        "() => document.querySelector('#status').textContent.startsWith('updated')",
        timeout=WAIT_MS,
    )
    assert page.is_hidden("#db")
    assert not [u for u in asked if urlsplit(u).path == "/_perf/db"]
    assert any(urlsplit(u).path == "/_perf/stats" for u in asked)
    # A DB budget cannot be judged: the chip says why, its title how to fix it.
    page.wait_for_selector(f"{ORDERS_CHIP}.verdict-insufficient", timeout=WAIT_MS)
    assert page.inner_text(ORDERS_CHIP) == "insufficient queries ≤ 5 (no DB numbers)"
    title = page.get_attribute(ORDERS_CHIP, "title")
    assert title == "no DB numbers: start the app with db=True (or ASGI_PERF_DB=1)"
    assert errors == []
