"""End to end: the shop example (examples/shop/) under real uvicorn, over real SQLite."""

from __future__ import annotations

import contextlib
import importlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

# The shop example, its database and its scripts: outside the quick loop (-m "not slow").
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# examples/ is not part of the installed package: import the shop the way
# uvicorn does (examples.shop.app), from the repository root.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
shop_app: Any = importlib.import_module("examples.shop.app")
shop_db: Any = importlib.import_module("examples.shop.db")

SMALL_CATALOG = 2_000
ROUTES = {
    "POST /login",
    "GET /products",
    "GET /products/search",
    "GET /products/categories",
    "GET /products/{product_id}",
    "GET /cart",
    "POST /cart/items",
    "POST /checkout",
    "GET /api/orders",
}


@pytest.fixture(scope="module")
def small_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 000-product shop database, seeded once for the module.

    Tests that write (carts, orders) log in as different accounts from 401 up,
    so they see neither each other's carts nor those of the Locust run, whose
    shoppers are accounts 1 to 100.
    """
    path = tmp_path_factory.mktemp("shop") / "shop.sqlite3"
    shop_db.ensure_database(path, SMALL_CATALOG)
    return path


@pytest.fixture
def shop(live_server: Callable[..., Any], small_db: Path) -> str:
    """The base URL of a fresh shop app (empty /_perf stats) on the small database."""
    server = live_server(shop_app.create_app(db_path=small_db, products=SMALL_CATALOG))
    url: str = server.url
    return url


def client(base_url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url, trust_env=False, timeout=30.0)


def account(n: int) -> dict[str, str]:
    name = shop_db.username(n)
    return {"username": name, "password": shop_db.password_for(name)}


async def login(http: httpx.AsyncClient, n: int) -> dict[str, str]:
    """Log in as the n-th seeded account; returns the Authorization header."""
    response = await http.post("/login", json=account(n))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["username"] == shop_db.username(n)
    assert body["token_type"] == "bearer"
    return {"Authorization": f"Bearer {body['token']}"}


async def test_login_gives_a_token_and_bad_credentials_are_401(shop: str) -> None:
    async with client(shop) as http:
        auth = await login(http, 401)
        assert (await http.get("/cart", headers=auth)).status_code == 200

        wrong_password = {**account(401), "password": "not-it"}
        unknown_user = {"username": "nobody", "password": "x"}
        for credentials in (wrong_password, unknown_user):
            response = await http.post("/login", json=credentials)
            assert response.status_code == 401, credentials
            assert response.headers["www-authenticate"] == "Bearer"
        missing_field = await http.post("/login", json={"username": "shopper401"})
        assert missing_field.status_code == 422


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer not-a-session"}, {"Authorization": "Basic dXNlcjpwdw=="}],
    ids=["no header", "unknown token", "not bearer"],
)
async def test_cart_and_checkout_need_a_session(shop: str, headers: dict[str, str]) -> None:
    async with client(shop) as http:
        responses = [
            await http.get("/cart", headers=headers),
            await http.post("/cart/items", json={"product_id": 1}, headers=headers),
            await http.post("/checkout", headers=headers),
        ]
    assert [r.status_code for r in responses] == [401, 401, 401]
    assert all(r.headers["www-authenticate"] == "Bearer" for r in responses)


async def test_products_are_paginated_by_id(shop: str) -> None:
    async with client(shop) as http:
        first = (await http.get("/products", params={"size": 5})).json()
        second = (await http.get("/products", params={"page": 2, "size": 5})).json()
        last = (await http.get("/products", params={"page": 100, "size": 20})).json()
        beyond = (await http.get("/products", params={"page": 101, "size": 20})).json()
        too_big = await http.get("/products", params={"size": 101})
        page_zero = await http.get("/products", params={"page": 0})

    assert (first["page"], first["size"], first["total"], first["pages"]) == (1, 5, 2000, 400)
    assert [p["id"] for p in first["items"]] == [1, 2, 3, 4, 5]
    assert [p["id"] for p in second["items"]] == [6, 7, 8, 9, 10]
    assert set(first["items"][0]) == {"id", "name", "category", "price_cents"}
    assert [p["id"] for p in last["items"]] == list(range(1981, 2001))
    assert beyond["items"] == []
    assert (too_big.status_code, page_zero.status_code) == (422, 422)


async def test_search_finds_every_match_cheapest_first(shop: str, small_db: Path) -> None:
    async with client(shop) as http:
        oak = (await http.get("/products/search", params={"q": "OAK", "limit": 100})).json()
        nothing = (await http.get("/products/search", params={"q": "espresso"})).json()
        too_short = await http.get("/products/search", params={"q": "a"})
        missing = await http.get("/products/search")

    with contextlib.closing(sqlite3.connect(small_db)) as conn:
        matching = {
            pid
            for (pid,) in conn.execute(
                "SELECT id FROM products WHERE instr(lower(name || ' ' || description), 'oak')"
            )
        }
    # LIKE is case-insensitive for ASCII: "OAK" finds "oak".
    assert oak["total"] == len(matching) > 100
    assert len(oak["items"]) == 100
    assert {p["id"] for p in oak["items"]} <= matching
    prices = [p["price_cents"] for p in oak["items"]]
    assert prices == sorted(prices)
    assert nothing == {"q": "espresso", "total": 0, "items": []}
    assert (too_short.status_code, missing.status_code) == (422, 422)


async def test_categories_aggregate_the_whole_catalog(shop: str, small_db: Path) -> None:
    async with client(shop) as http:
        body = (await http.get("/products/categories")).json()

    rows = body["categories"]
    assert [r["category"] for r in rows] == sorted(shop_db.CATEGORIES)
    assert sum(r["products"] for r in rows) == SMALL_CATALOG
    with contextlib.closing(sqlite3.connect(small_db)) as conn:
        kitchen = conn.execute(
            "SELECT COUNT(*), MIN(price_cents), AVG(price_cents), MAX(price_cents) FROM products"
            " WHERE category = 'kitchen'"
        ).fetchone()
    [ours] = [r for r in rows if r["category"] == "kitchen"]
    assert (ours["products"], ours["min_price_cents"], ours["max_price_cents"]) == (
        kitchen[0],
        kitchen[1],
        kitchen[3],
    )
    assert abs(ours["avg_price_cents"] - kitchen[2]) <= 0.5


async def test_product_detail_and_unknown_ids(shop: str) -> None:
    async with client(shop) as http:
        product = await http.get("/products/42")
        unknown = await http.get("/products/2001")
        not_a_number = await http.get("/products/forty-two")

    assert product.status_code == 200
    body = product.json()
    assert body["id"] == 42
    assert body["sku"] == "SKU-000042"
    assert set(body) == {"id", "sku", "name", "description", "category", "price_cents"}
    assert body["price_cents"] > 0
    assert unknown.status_code == 404
    assert unknown.json() == {"detail": "no product 2001"}
    assert not_a_number.status_code == 422


async def test_cart_then_checkout_creates_an_order_and_empties_the_cart(
    shop: str, small_db: Path
) -> None:
    async with client(shop) as http:
        auth = await login(http, 402)
        assert (await http.get("/cart", headers=auth)).json() == {"items": [], "total_cents": 0}
        seven = (await http.get("/products/7")).json()
        nine = (await http.get("/products/9")).json()

        for product_id, quantity in ((7, 2), (9, 1), (7, 1)):
            added = await http.post(
                "/cart/items", json={"product_id": product_id, "quantity": quantity}, headers=auth
            )
            assert added.status_code == 201, added.text
        cart = (await http.get("/cart", headers=auth)).json()
        unknown = await http.post("/cart/items", json={"product_id": 99_999}, headers=auth)
        zero = await http.post("/cart/items", json={"product_id": 7, "quantity": 0}, headers=auth)

        order = await http.post("/checkout", headers=auth)
        after = (await http.get("/cart", headers=auth)).json()
        again = await http.post("/checkout", headers=auth)

    # Adding the same product twice adds up the quantities.
    assert [(line["product_id"], line["quantity"]) for line in cart["items"]] == [(7, 3), (9, 1)]
    total = 3 * seven["price_cents"] + nine["price_cents"]
    assert cart["total_cents"] == total
    assert (unknown.status_code, zero.status_code) == (404, 422)

    assert order.status_code == 201, order.text
    placed = order.json()
    assert placed["total_cents"] == total
    assert placed["items"] == cart["items"]
    assert after == {"items": [], "total_cents": 0}
    assert again.status_code == 409
    assert again.json() == {"detail": "the cart is empty"}

    with contextlib.closing(sqlite3.connect(small_db)) as conn:
        stored = conn.execute(
            "SELECT o.total_cents, u.username FROM orders o JOIN users u ON u.id = o.user_id"
            " WHERE o.id = ?",
            (placed["order_id"],),
        ).fetchone()
        lines = conn.execute(
            "SELECT product_id, quantity FROM order_items WHERE order_id = ? ORDER BY product_id",
            (placed["order_id"],),
        ).fetchall()
    assert stored == (total, shop_db.username(402))
    assert lines == [(7, 3), (9, 1)]


async def test_perf_stats_key_every_route_by_its_template(shop: str) -> None:
    async with client(shop) as http:
        auth = await login(http, 403)
        for path in (
            "/products?page=3",
            "/products/search?q=lamp",
            "/products/categories",
            "/products/1",
            "/products/2",
        ):
            assert (await http.get(path)).status_code == 200, path
        assert (await http.get("/products/99999")).status_code == 404
        await http.post("/cart/items", json={"product_id": 5}, headers=auth)
        await http.get("/cart", headers=auth)
        await http.post("/checkout", headers=auth)
        await http.get("/api/orders", headers=auth)
        stats = (await http.get("/_perf/stats")).json()
        budgets = (await http.get("/_perf/budgets")).json()

    counts = {r["route"]: r["count"] for r in stats["routes"]}
    assert set(counts) == ROUTES
    assert counts["GET /products/{product_id}"] == 3
    assert Path(budgets["source"]) == ROOT / "examples" / "shop" / "perf-budgets.toml"
    budgeted = {v["route"] for v in budgets["verdicts"]}
    assert budgeted >= ROUTES
    search_limit = {
        v["metric"]: v["limit"] for v in budgets["verdicts"] if v["route"] == "GET /products/search"
    }
    # The budget the demo's search breaks on purpose.
    assert search_limit["p99_ms"] == 20.0


def test_the_database_is_reused_and_rebuilt_when_the_catalog_size_changes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cache" / "shop.sqlite3"
    assert shop_db.ensure_database(path, 100) > 0
    assert shop_db.ensure_database(path, 100) == 0.0
    assert shop_db.ensure_database(path, 200) > 0
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM products").fetchone() == (200,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    # Built under a temporary name and renamed: only the lock file stays.
    assert sorted(p.name for p in path.parent.iterdir()) == ["shop.sqlite3", "shop.sqlite3.lock"]


def test_concurrent_starts_seed_the_database_once(tmp_path: Path) -> None:
    """Like uvicorn --workers: the first seeds, the others wait and reuse its file."""
    path = tmp_path / "shop.sqlite3"
    with ThreadPoolExecutor(3) as pool:
        seconds = list(pool.map(lambda _: shop_db.ensure_database(path, 300), range(3)))
    assert sorted(s > 0 for s in seconds) == [False, False, True]


async def test_the_default_catalog_has_50000_products(
    live_server: Callable[..., Any],
    small_db: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The environment the README documents, not create_app's arguments.
    db_path = tmp_path / "default.sqlite3"
    monkeypatch.setenv("SHOP_DB", str(db_path))
    monkeypatch.delenv("SHOP_PRODUCTS", raising=False)
    # Seeded during start-up: the server answers once the rows are there (how
    # long that takes is not checked: under coverage on a busy machine, 10+ s).
    server = live_server(shop_app.create_app())

    async with client(server.url) as http:
        page = (await http.get("/products")).json()
        last = await http.get("/products/50000")
        past = await http.get("/products/50001")
        search = (await http.get("/products/search", params={"q": "walnut"})).json()
    assert page["total"] == 50_000
    assert (last.status_code, past.status_code) == (200, 404)
    assert search["total"] > 1000

    # Deterministic: the same seed gives the small catalog's products first.
    query = "SELECT * FROM products WHERE id <= ? ORDER BY id"
    with (
        contextlib.closing(sqlite3.connect(db_path)) as big,
        contextlib.closing(sqlite3.connect(small_db)) as small,
    ):
        assert (
            big.execute(query, (SMALL_CATALOG,)).fetchall()
            == small.execute(query, (SMALL_CATALOG,)).fetchall()
        )


def test_a_bad_catalog_size_in_the_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_PRODUCTS", "lots")
    with pytest.raises(ValueError, match="SHOP_PRODUCTS must be a positive integer, got 'lots'"):
        shop_app.create_app()


def test_the_locustfile_drives_every_route_without_failures(
    live_server: Callable[..., Any], small_db: Path, tmp_path: Path
) -> None:
    """A real, short Locust run of examples/shop/locustfile.py (about 3 s of load)."""
    server = live_server(shop_app.create_app(db_path=small_db, products=SMALL_CATALOG))
    env = {**os.environ, "SHOP_LOAD_SCALE": "0.1"}
    command = [
        sys.executable, "-m", "locust", "-f", "examples/shop/locustfile.py", "--headless",
        "--host", server.url, "--only-summary", "--perf-results", str(tmp_path / "results"),
        "--no-perf-window", "--csv", str(tmp_path / "locust"),
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=120
    )
    output = done.stdout.decode() + done.stderr.decode()
    with httpx.Client(base_url=server.url, trust_env=False, timeout=10) as http:
        stats = http.get("/_perf/stats").json()

    routes = {r["route"]: r for r in stats["routes"]}
    assert set(routes) == ROUTES, output
    for name, route in routes.items():
        assert route["count"] >= 5, (name, route["count"])
        # No 401 (every step after login had its token), no 409 (no two
        # simulated shoppers shared a cart), no 5xx.
        assert route["status"]["2xx"] == route["count"], (name, route["status"])
    failures = (tmp_path / "locust_failures.csv").read_text().splitlines()
    assert failures[1:] == [], output
    # 0, or 1 if the plugin found a budget broken: over 2 000 products the
    # search is fast, but a few seconds of load on a busy machine can still
    # push a route past its limit.
    assert done.returncode in (0, 1), output


async def test_the_shop_leak_is_named_by_the_leak_finder(shop, monkeypatch):
    """SHOP_LEAK=1: the README's walkthrough finds the line that keeps every view."""
    monkeypatch.setenv("SHOP_LEAK", "1")
    source = Path(shop_app.__file__).read_text().splitlines()
    leaking = next(i for i, text in enumerate(source, 1) if "_recently_viewed.append(" in text)
    try:
        async with client(shop) as http:
            started = await http.post("/_perf/memory/tracemalloc/start", params={"frames": 1})
            assert started.status_code == 200, started.text
            assert (await http.post("/_perf/memory/snapshot")).status_code == 200
            for i in range(300):
                assert (await http.get(f"/products/{i % SMALL_CATALOG + 1}")).status_code == 200
            diff = (await http.get("/_perf/memory/diff", params={"top": 5})).json()
            await http.post("/_perf/memory/tracemalloc/stop")
    finally:
        shop_app._recently_viewed.clear()
    first = diff["stats"][0]
    assert first["file"].endswith(os.path.join("examples", "shop", "app.py"))
    assert first["line"] == leaking
    assert first["count_diff"] >= 300
