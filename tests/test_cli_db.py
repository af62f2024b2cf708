"""``asgi-perf db``: tables from ``GET /_perf/db``, and its errors, over real sockets.

Two kinds of server: one that answers with a recorded ``/_perf/db``
(``tests/data/db.json``), so every column is checked against known numbers,
and a real app wrapped by ``PerfMiddleware(db=True)`` whose sqlite3
connection goes through ``asgi_perf.db.instrument``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
