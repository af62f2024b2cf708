"""``asgi-perf db``: tables from ``GET /_perf/db``, and its errors, over real sockets.

Two kinds of server: one that answers with a recorded ``/_perf/db``
(``tests/data/db.json``), so every column is checked against known numbers,
and a real app wrapped by ``PerfMiddleware(db=True)`` whose sqlite3
connection goes through ``asgi_perf.db.instrument``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import db_shop
import httpx
import pytest
from helpers import closed_port
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

RECORDED = json.loads((Path(__file__).parent / "data" / "db.json").read_text(encoding="utf-8"))
DB_OFF = "DB capture is off: start the app with db=True (or ASGI_PERF_DB=1)"
ENV_TO_CLEAR = ("ASGI_PERF_TOKEN", "ASGI_PERF_PREFIX", "FORCE_COLOR", "TTY_COMPATIBLE", "COLUMNS")

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)


def assert_one_line_error(err: str, *fragments: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("asgi-perf: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def recorded_server(
    live_server: Any, status: int = 200, body: Any = RECORDED
) -> tuple[str, list[dict[str, str]]]:
    """A server answering ``/_perf/db`` with ``body``; the query strings it got."""
    asked: list[dict[str, str]] = []

    async def db(request: Request) -> JSONResponse:
        asked.append(dict(request.query_params))
        return JSONResponse(body, status_code=status)

    async def other(request: Request) -> JSONResponse:
        return JSONResponse({"error": f"no such path: {request.url.path}"}, status_code=404)

    app = Starlette(routes=[Route("/_perf/db", db), Route("/_perf/{rest:path}", other)])
    return live_server(app).url, asked


def rows(out: str, title: str) -> list[list[str]]:
    """The rows of the table titled ``title`` in rich's output, cells stripped."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if title in line)
    found = []
    for line in lines[start + 4 :]:  # title, top border, header, separator
        if not line.startswith("│"):
            break
        found.append([cell.strip() for cell in line.strip("│").split("│")])
    return found


# --------------------------------------------------------------------------- recorded


def test_tables_from_a_recorded_answer(live_server: Any, cli: Run) -> None:
    url, asked = recorded_server(live_server)
    code, out, err = cli("db", url)
    assert (code, err) == (0, "")
    assert asked == [{}]  # no --route, no --limit: the server's defaults
    assert rows(out, "routes by DB time") == [
        ["GET /api/orders", "12", "720", "60.0", "33.1", "2.76", "0"],
        ["GET /api/products/search", "40", "40", "1.0", "5210.4", "130.3", "2"],
        ["<no request>", "0", "3", "-", "0.8", "-", "0"],
    ]
    statement = "SELECT product_id, quantity, price FROM order_lines WHERE order_id = ?"
    assert rows(out, "N+1: a statement run 10+ times in one request") == [
        ["GET /api/orders", statement, "60", "12", "examples/shop/app.py:354"]
    ]
    slow = rows(out, "slow statements (over 100.0 ms), newest first")
    search = "GET /api/products/search"
    assert [(r[1], r[2], r[4]) for r in slow] == [
        (search, "412.7", "examples/shop/app.py:200"),
        (search, "120.5", "-"),  # call site not known
    ]
    assert {r[3] for r in slow} == {RECORDED["slow"][0]["statement"]}
    # Without --route, no route's statements: the overview stays one screen.
    assert "top statements" not in out


def test_route_and_limit_go_to_the_server(live_server: Any, cli: Run) -> None:
    one = {**RECORDED, "routes": RECORDED["routes"][:1]}
    url, asked = recorded_server(live_server, body=one)
    code, out, _ = cli("db", url, "--route", "GET /api/orders", "--limit", "2")
    assert code == 0
    assert asked == [{"route": "GET /api/orders", "limit": "2"}]
    assert rows(out, "GET /api/orders — top statements") == [
        [RECORDED["routes"][0]["statements"][0]["statement"], "708", "30.2", "0.043", "0.3", "0"],
        [RECORDED["routes"][0]["statements"][1]["statement"], "12", "2.9", "0.242", "0.41", "0"],
    ]


def test_json_is_the_answer_as_is(live_server: Any, cli: Run) -> None:
    url, _ = recorded_server(live_server)
    code, out, _ = cli("db", url, "--json")
    assert code == 0
    assert json.loads(out) == RECORDED


def test_nothing_recorded_yet(live_server: Any, cli: Run) -> None:
    empty = {**RECORDED, "routes": [], "n_plus_one": [], "slow": []}
    url, _ = recorded_server(live_server, body=empty)
    code, out, _ = cli("db", url)
    assert code == 0
    assert out.splitlines() == [
        "no queries recorded",
        "no N+1 found (a statement run 10+ times in one request)",
        "no statement slower than 100.0 ms",
    ]


# --------------------------------------------------------------------------- errors


def test_db_off_is_one_line_and_exit_1(live_server: Any, cli: Run) -> None:
    url, _ = recorded_server(live_server, 409, {"error": "DB capture is off (db=False)"})
    code, out, err = cli("db", url)
    assert (code, out) == (1, "")
    assert assert_one_line_error(err) == f"asgi-perf: error: {DB_OFF}"


def test_an_app_without_db_endpoint(live_server: Any, cli: Run) -> None:
    # An older asgi_perf answers its own JSON 404 under the prefix.
    url, _ = recorded_server(live_server, 404, {"error": "unknown path /_perf/db"})
    code, out, err = cli("db", url)
    assert (code, out) == (3, "")
    assert_one_line_error(err, "404 from", "/_perf/db", "unknown path")


def test_bad_request_says_what_the_server_said(live_server: Any, cli: Run) -> None:
    url, _ = recorded_server(live_server, 400, {"error": "route: no such route"})
    code, _, err = cli("db", url, "--route", "GET /nowhere")
    assert code == 3
    assert_one_line_error(err, "400 from", "route: no such route")


def test_unreachable(cli: Run) -> None:
    code, out, err = cli("db", f"http://127.0.0.1:{closed_port()}")
    assert (code, out) == (3, "")
    assert_one_line_error(err, "cannot reach", "/_perf/db", "connection refused")


@pytest.mark.parametrize("limit", ["0", "1001"])
def test_limit_out_of_range_is_usage(cli: Run, limit: str) -> None:
    code, _, err = cli("db", "http://127.0.0.1:1", "--limit", limit)
    assert code == 2
    assert_one_line_error(err, f"--limit must be between 1 and 1000, got {limit}")


def test_limit_must_be_a_number(cli: Run) -> None:
    code, _, err = cli("db", "http://127.0.0.1:1", "--limit", "ten")
    assert code == 2
    assert_one_line_error(err, "expected a whole number")


# --------------------------------------------------------------------------- a real app


@pytest.fixture
def shop(live_server: Any) -> Iterator[Callable[..., str]]:
    """Factory: ``shop(**perf)`` -> the URL of ``db_shop`` served by uvicorn."""
    conns: list[sqlite3.Connection] = []

    def start(**perf: Any) -> str:
        conns.append(db_shop.connect())
        url: str = live_server(db_shop.make_app(conns[-1], **perf)).url
        return url

    yield start
    for conn in conns:
        conn.close()


def get(url: str, path: str, n: int = 1) -> None:
    with httpx.Client(base_url=url, trust_env=False, timeout=30) as client:
        for _ in range(n):
            client.get(path).raise_for_status()


@pytest.mark.slow
def test_a_real_app_with_an_n_plus_one(shop: Callable[..., str], cli: Run) -> None:
    url = shop(db=True, slow_query_ms=20)
    get(url, "/orders", 3)
    get(url, "/orders/joined", 2)
    get(url, "/search?ms=1")  # under slow_query_ms
    get(url, "/search?ms=40")
    code, out, err = cli("db", url)
    assert (code, err) == (0, "")
    routes = rows(out, "routes by DB time")
    per_request = db_shop.ORDERS + 1
    # Exact counts; the DB time is measured, so only its order is checked.
    assert {r[0]: r[1:4] for r in routes} == {
        "GET /search": ["2", "2", "1.0"],
        "GET /orders": ["3", str(3 * per_request), f"{per_request}.0"],
        "GET /orders/joined": ["2", "2", "1.0"],
    }
    assert routes[0][0] == "GET /search"
    assert float(routes[0][4]) >= 40  # DB ms: the 40 ms statement at least
    assert rows(out, "N+1: a statement run 10+ times in one request") == [
        [
            "GET /orders",
            db_shop.LINES_STATEMENT,
            str(db_shop.ORDERS),
            "3",
            db_shop.call_site("N+1-HERE"),
        ]
    ]
    slow = rows(out, "slow statements (over 20.0 ms), newest first")
    assert [(r[1], r[3], r[4]) for r in slow] == [
        ("GET /search", db_shop.SEARCH_STATEMENT, db_shop.call_site("SLOW-HERE"))
    ]
    assert float(slow[0][2]) >= 40
    # Spec 7: the values sent (ids, the 40 of ?ms=40) are nowhere.
    code, raw, _ = cli("db", url, "--json")
    assert "40)" not in raw and "pause(40" not in raw


@pytest.mark.slow
def test_a_real_app_one_route_and_its_statements(shop: Callable[..., str], cli: Run) -> None:
    url = shop(db=True)
    get(url, "/orders", 2)
    get(url, "/orders/joined")
    code, out, _ = cli("db", url, "--route", "GET /orders")
    assert code == 0
    assert [r[0] for r in rows(out, "routes by DB time")] == ["GET /orders"]
    top = rows(out, "GET /orders — top statements")
    assert {(r[0], r[1]) for r in top} == {
        ("SELECT id FROM orders WHERE user_id = ?", "2"),
        (db_shop.LINES_STATEMENT, str(2 * db_shop.ORDERS)),
    }
    # --limit 1: one statement, the one that took the most time (which one is timing).
    code, out, _ = cli("db", url, "--route", "GET /orders", "--limit", "1")
    assert code == 0
    assert len(rows(out, "GET /orders — top statements")) == 1


@pytest.mark.slow
def test_a_real_app_with_db_off(shop: Callable[..., str], cli: Run) -> None:
    url = shop()
    get(url, "/orders")
    code, out, err = cli("db", url)
    assert (code, out) == (1, "")
    assert assert_one_line_error(err) == f"asgi-perf: error: {DB_OFF}"


@pytest.mark.slow
def test_a_real_app_refuses_a_bad_limit_from_elsewhere(shop: Callable[..., str]) -> None:
    # The CLI checks --limit itself; the server's own 400 is what other clients get.
    url = shop(db=True)
    answer = httpx.get(f"{url}/_perf/db", params={"limit": "0"}, trust_env=False, timeout=30)
    assert answer.status_code == 400
    assert answer.json()["parameter"] == "limit"
