"""The shop's order history (GET /api/orders): the N+1 on purpose, found and fixed (issue #14).

Real uvicorn, real SQLite through ``asgi_perf.db.instrument``, the app's own
``/_perf/db``: the N+1 version and ``SHOP_FIX_N_PLUS_ONE=1`` give the same
JSON; only the first is an N+1, and its call site is the line of
examples/shop/app.py that runs the per-order query.
"""

from __future__ import annotations

import contextlib
import importlib
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
shop_app: Any = importlib.import_module("examples.shop.app")
shop_db: Any = importlib.import_module("examples.shop.db")

SMALL_CATALOG = 2_000
ROUTE = "GET /api/orders"
# The line that runs one query per order, found by its text so that an edit
# above it does not break the test.
N_PLUS_ONE_LINE = next(
    i
    for i, text in enumerate(Path(shop_app.__file__).read_text().splitlines(), 1)
    if "conn.execute(LINES_OF_ORDER" in text
)
# An account of its own per test, apart from test_shop_example's (401 up) and
# the Locust run's (1 to 100).
EMPTY_ORDER_ACCOUNT = 470


@pytest.fixture(scope="module")
def small_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("shop-orders") / "shop.sqlite3"
    shop_db.ensure_database(path, SMALL_CATALOG)
    # An order without lines (no checkout makes one): both versions must show it.
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "INSERT INTO orders (user_id, created_at, total_cents) VALUES (?, ?, 0)",
            (EMPTY_ORDER_ACCOUNT, shop_db.SEEDED_AT),
        )
    return path


@pytest.fixture
def shop(live_server: Callable[..., Any], small_db: Path) -> str:
    server = live_server(shop_app.create_app(db_path=small_db, products=SMALL_CATALOG))
    url: str = server.url
    return url


def client(base_url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url, trust_env=False, timeout=30.0)


async def login(http: httpx.AsyncClient, n: int) -> dict[str, str]:
    name = shop_db.username(n)
    response = await http.post(
        "/login", json={"username": name, "password": shop_db.password_for(name)}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


def orders_in_db(path: Path, n: int) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        (count,) = conn.execute("SELECT COUNT(*) FROM orders WHERE user_id = ?", (n,)).fetchone()
    return int(count)


async def history(http: httpx.AsyncClient, auth: dict[str, str], **params: Any) -> Any:
    response = await http.get("/api/orders", headers=auth, params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def test_the_same_json_either_way(
    shop: str, small_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    accounts = (461, 462, EMPTY_ORDER_ACCOUNT)
    async with client(shop) as http:
        auths = {n: await login(http, n) for n in accounts}
        assert (await http.get("/api/orders")).status_code == 401
        loop = {n: await history(http, auth) for n, auth in auths.items()}
        loop_3 = await history(http, auths[461], limit=3)
        monkeypatch.setenv("SHOP_FIX_N_PLUS_ONE", "1")
        joined = {n: await history(http, auth) for n, auth in auths.items()}
        joined_3 = await history(http, auths[461], limit=3)

    assert joined == loop
    assert joined_3 == loop_3 == {"orders": loop[461]["orders"][:3]}
    for n, body in loop.items():
        orders = body["orders"]
        assert len(orders) == orders_in_db(small_db, n)
        assert 10 <= len(orders) <= 15
        stamps = [o["created_at"] for o in orders]
        assert stamps == sorted(stamps, reverse=True)
        for order in orders:
            assert order["total_cents"] == sum(line["line_cents"] for line in order["items"])
    # The order without lines is there, empty, in both.
    assert [o["items"] for o in loop[EMPTY_ORDER_ACCOUNT]["orders"]].count([]) == 1
    first_line = loop[461]["orders"][0]["items"][0]
    assert set(first_line) == {"product_id", "name", "quantity", "price_cents", "line_cents"}


async def db_report(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/_perf/db", params={"route": ROUTE})
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    return report


def route_db(stats: dict[str, Any]) -> dict[str, Any]:
    route = next(r for r in stats["routes"] if r["route"] == ROUTE)
    db: dict[str, Any] = route["db"]
    return db


async def test_the_n_plus_one_is_reported_with_its_line(shop: str, small_db: Path) -> None:
    n = 463
    orders = orders_in_db(small_db, n)
    async with client(shop) as http:
        auth = await login(http, n)
        for _ in range(3):
            await history(http, auth)
        report = await db_report(http)
        stats = (await http.get("/_perf/stats")).json()

    # The session lookup, the orders, then one query per order.
    per_request = orders + 2
    db = route_db(stats)
    assert db["queries"]["total"] == 3 * per_request
    assert db["queries"]["max"] == per_request
    assert db["n_plus_one"] == 3

    [found] = [f for f in report["n_plus_one"] if f["route"] == ROUTE]
    assert found["per_request"] == orders
    assert found["requests"] == 3
    assert "FROM order_items" in found["statement"]
    assert "?" in found["statement"]
    path, _, line = found["call_site"].rpartition(":")
    assert Path(path).as_posix().endswith("examples/shop/app.py"), found
    assert int(line) == N_PLUS_ONE_LINE, found

    [route] = report["routes"]
    counts = {s["statement"]: s["count"] for s in route["statements"]}
    assert counts[found["statement"]] == 3 * orders
    assert sum(counts.values()) == route["queries"] == 3 * per_request
    # The tokens the shopper sent are parameters: never in the report.
    token = auth["Authorization"].removeprefix("Bearer ")
    assert token not in str(report)
    assert token not in str(stats)
    assert shop_db.username(n) not in str(report)


async def test_the_fixed_version_is_no_n_plus_one(
    shop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOP_FIX_N_PLUS_ONE", "1")
    async with client(shop) as http:
        auth = await login(http, 464)
        for _ in range(3):
            await history(http, auth)
        report = await db_report(http)
        stats = (await http.get("/_perf/stats")).json()

    db = route_db(stats)
    # The session lookup and the one JOIN.
    assert (db["queries"]["total"], db["queries"]["max"]) == (6, 2)
    assert db["n_plus_one"] == 0
    assert [f for f in report["n_plus_one"] if f["route"] == ROUTE] == []
    [route] = report["routes"]
    assert any("JOIN order_items" in s["statement"] for s in route["statements"])


@pytest.mark.parametrize(("fixed", "verdict"), [("0", "fail"), ("1", "pass")])
async def test_the_max_queries_budget(
    shop: str, small_db: Path, monkeypatch: pytest.MonkeyPatch, fixed: str, verdict: str
) -> None:
    monkeypatch.setenv("SHOP_FIX_N_PLUS_ONE", fixed)
    async with client(shop) as http:
        auth = await login(http, 465)
        # The shop's budgets judge a route from min_samples = 20 requests on.
        for _ in range(20):
            await history(http, auth)
        budgets = (await http.get("/_perf/budgets")).json()

    [budget] = [
        v for v in budgets["verdicts"] if v["route"] == ROUTE and v["metric"] == "max_queries"
    ]
    assert budget["limit"] == 5
    assert budget["verdict"] == verdict, budget
    assert budget["measured"] == (2 if fixed == "1" else 2 + orders_in_db(small_db, 465))
