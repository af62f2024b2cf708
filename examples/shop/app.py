"""The shop: the e-commerce API a load test is usually written for.

Run from the repository root::

    uvicorn examples.shop.app:app

Routes: ``POST /login``, ``GET /products?page=&size=``, ``GET /products/search?q=``,
``GET /products/categories``, ``GET /products/{product_id}``, ``GET /cart``,
``POST /cart/items``, ``POST /checkout``, ``GET /api/orders?limit=``. Cart,
checkout and orders need ``Authorization: Bearer <token>`` from ``/login``.
The catalog is SQLite, seeded with 50 000 products and 10 to 14 past orders
per account on first start (``SHOP_DB`` sets the file, ``SHOP_PRODUCTS`` the
count).

``GET /products/search`` is slow on purpose: ``LIKE '%q%'`` reads every
product on every call. ``perf-budgets.toml`` gives it a p99 budget it breaks,
and a yappi profile window shows the time in ``search_products``.
``GET /products/categories`` is the catalog's aggregation (a ``GROUP BY``
over every product).

The endpoints are plain ``def`` functions: sqlite3 blocks, and FastAPI runs
``def`` endpoints in its threadpool, as a real service built on a blocking
driver would.

``GET /api/orders`` is an N+1 on purpose: one query for the shopper's orders,
then one per order for its lines (``orders_n_plus_one``). The database
connection goes through ``asgi_perf.db.instrument`` and the middleware runs
with ``db=True``, so ``/_perf/db`` lists it with the line that runs the
per-order query, and its ``max_queries = 5`` budget breaks.
``SHOP_FIX_N_PLUS_ONE=1`` serves the same JSON from a single JOIN
(``orders_joined``).

``SHOP_LEAK=1`` switches on a memory leak on purpose, for the memory tools
to find: ``GET /products/{product_id}`` keeps a "recently viewed" entry of
every view (about 4 KB) in a list whose trim never runs. ``asgi-perf leaks``
names the line; ``/_perf/memory`` calls the timeline "growing".
"""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from asgi_perf import PerfMiddleware

from .db import Database, check_password, default_path, default_product_count, ensure_database

# uvicorn's own start-up logger: the seeding message follows its --log-level.
log = logging.getLogger("uvicorn.error")

MAX_PAGE_SIZE = 100
_NO_SALT = bytes(16)
RECENTLY_VIEWED_MAX = 10
_recently_viewed: list[dict[str, object]] = []


class Credentials(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class Token(BaseModel):
    token: str
    token_type: str = "bearer"
    username: str


class Product(BaseModel):
    id: int
    sku: str
    name: str
    description: str
    category: str
    price_cents: int


class ProductSummary(BaseModel):
    id: int
    name: str
    category: str
    price_cents: int


class ProductPage(BaseModel):
    page: int
    size: int
    total: int
    pages: int
    items: list[ProductSummary]


class CategoryStats(BaseModel):
    category: str
    products: int
    min_price_cents: int
    avg_price_cents: int
    max_price_cents: int


class Categories(BaseModel):
    categories: list[CategoryStats]


class SearchResult(BaseModel):
    q: str
    total: int
    items: list[ProductSummary]


class CartLine(BaseModel):
    product_id: int
    name: str
    quantity: int
    price_cents: int
    line_cents: int


class Cart(BaseModel):
    items: list[CartLine]
    total_cents: int


class AddToCart(BaseModel):
    product_id: int
    quantity: int = Field(default=1, ge=1, le=99)


class Order(BaseModel):
    order_id: int
    items: list[CartLine]
    total_cents: int


class PastOrder(Order):
    created_at: float


class OrderHistory(BaseModel):
    orders: list[PastOrder]


def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


DB = Annotated[Database, Depends(get_db)]
# auto_error=False: a missing header gets the same 401 as a bad token, where
# HTTPBearer would answer 403.
bearer = HTTPBearer(auto_error=False)


def current_user(
    db: DB, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> int:
    """The user id behind the bearer token; 401 without a valid one."""
    if credentials is not None:
        row = (
            db.connection()
            .execute("SELECT user_id FROM sessions WHERE token = ?", (credentials.credentials,))
            .fetchone()
        )
        if row is not None:
            user_id: int = row["user_id"]
            return user_id
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "missing or invalid bearer token; POST /login first",
        headers={"WWW-Authenticate": "Bearer"},
    )


User = Annotated[int, Depends(current_user)]
router = APIRouter()


@router.post("/login")
def login(body: Credentials, db: DB) -> Token:
    conn = db.connection()
    row = conn.execute(
        "SELECT id, salt, password_hash FROM users WHERE username = ?", (body.username,)
    ).fetchone()
    # An unknown name costs the same hash as a wrong password, so the answer
    # time does not tell which usernames exist.
    salt, expected = (row["salt"], row["password_hash"]) if row else (_NO_SALT, b"")
    if not check_password(body.password, salt, expected) or row is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "wrong username or password",
            headers={"WWW-Authenticate": "Bearer"},
        )
    token = secrets.token_urlsafe(32)
    with db.write() as tx:
        tx.execute("INSERT INTO sessions VALUES (?, ?, ?)", (token, row["id"], time.time()))
    return Token(token=token, username=body.username)


@router.get("/products")
def list_products(
    db: DB,
    request: Request,
    page: Annotated[int, Query(ge=1)] = 1,
    size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 20,
) -> ProductPage:
    # Walks the primary key: cheap for the first pages, a little dearer deep
    # into the catalog (OFFSET still steps over the skipped rows).
    rows = (
        db.connection()
        .execute(
            "SELECT id, name, category, price_cents FROM products ORDER BY id LIMIT ? OFFSET ?",
            (size, (page - 1) * size),
        )
        .fetchall()
    )
    # The catalog is read-only, so its size is counted once at start-up.
    total: int = request.app.state.product_count
    return ProductPage(
        page=page,
        size=size,
        total=total,
        pages=-(-total // size),
        items=[ProductSummary(**row) for row in rows],
    )


def search_products(conn: sqlite3.Connection, q: str, limit: int) -> tuple[int, list[sqlite3.Row]]:
    """The deliberately slow query: a full scan of every name and description.

    A leading ``%`` defeats any b-tree index, and ``COUNT(*) OVER ()`` plus the
    sort by price need every match before the first row comes back.
    """
    pattern = f"%{q}%"
    rows = conn.execute(
        "SELECT id, name, category, price_cents, COUNT(*) OVER () AS total FROM products"
        " WHERE name LIKE ? OR description LIKE ? ORDER BY price_cents, id LIMIT ?",
        (pattern, pattern, limit),
    ).fetchall()
    return (rows[0]["total"] if rows else 0), rows


# Declared (like /products/categories) before /products/{product_id}, which
# would otherwise take "search" as an id and answer 422.
@router.get("/products/search")
def search(
    db: DB,
    q: Annotated[str, Query(min_length=2, max_length=64)],
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 20,
) -> SearchResult:
    total, rows = search_products(db.connection(), q, limit)
    items = [
        ProductSummary(
            id=r["id"], name=r["name"], category=r["category"], price_cents=r["price_cents"]
        )
        for r in rows
    ]
    return SearchResult(q=q, total=total, items=items)


@router.get("/products/categories")
def categories(db: DB) -> Categories:
    """The aggregation: products and prices per category, over the whole catalog.

    Every call reads all 50 000 entries of the covering index
    ``products_by_category`` (about 10 ms); without it SQLite would read the
    whole table and group it in a temporary b-tree (about 50 ms).
    """
    rows = (
        db.connection()
        .execute(
            "SELECT category, COUNT(*) AS products, MIN(price_cents) AS min_price_cents,"
            " CAST(ROUND(AVG(price_cents)) AS INTEGER) AS avg_price_cents,"
            " MAX(price_cents) AS max_price_cents FROM products GROUP BY category ORDER BY category"
        )
        .fetchall()
    )
    return Categories(categories=[CategoryStats(**row) for row in rows])


@router.get("/products/{product_id}")
def get_product(product_id: int, db: DB) -> Product:
    row = db.connection().execute("SELECT * FROM products WHERE id = ?", (product_id,)).fetchone()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no product {product_id}")
    product = Product(**row)
    if os.environ.get("SHOP_LEAK") == "1":  # read per request: a test can switch it
        _remember_view(product)
    return product


def _remember_view(product: Product) -> None:
    """The bug SHOP_LEAK=1 switches on: the list is meant to keep the last
    RECENTLY_VIEWED_MAX views, but the trim compares with the wrong bound."""
    page = f"<article><h1>{product.name}</h1><p>{product.description}</p></article>"
    _recently_viewed.append({"id": product.id, "at": time.time(), "page": page * 16})
    if len(_recently_viewed) > RECENTLY_VIEWED_MAX * 1_000_000:
        del _recently_viewed[:-RECENTLY_VIEWED_MAX]


def _cart_lines(conn: sqlite3.Connection, user_id: int) -> list[CartLine]:
    rows = conn.execute(
        "SELECT c.product_id, p.name, c.quantity, p.price_cents FROM cart_items c"
        " JOIN products p ON p.id = c.product_id WHERE c.user_id = ? ORDER BY c.product_id",
        (user_id,),
    ).fetchall()
    return [CartLine(**row, line_cents=row["quantity"] * row["price_cents"]) for row in rows]


def _cart(lines: list[CartLine]) -> Cart:
    return Cart(items=lines, total_cents=sum(line.line_cents for line in lines))


@router.get("/cart")
def get_cart(db: DB, user_id: User) -> Cart:
    return _cart(_cart_lines(db.connection(), user_id))


@router.post("/cart/items", status_code=status.HTTP_201_CREATED)
def add_to_cart(body: AddToCart, db: DB, user_id: User) -> Cart:
    with db.write() as tx:
        if tx.execute("SELECT 1 FROM products WHERE id = ?", (body.product_id,)).fetchone() is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no product {body.product_id}")
        tx.execute(
            "INSERT INTO cart_items VALUES (?, ?, ?) ON CONFLICT (user_id, product_id)"
            " DO UPDATE SET quantity = min(quantity + excluded.quantity, 99)",
            (user_id, body.product_id, body.quantity),
        )
        lines = _cart_lines(tx, user_id)
    return _cart(lines)


@router.post("/checkout", status_code=status.HTTP_201_CREATED)
def checkout(db: DB, user_id: User) -> Order:
    # Reading the cart inside the write transaction: a concurrent "add to cart"
    # of the same user either lands in this order or in the next cart.
    with db.write() as tx:
        lines = _cart_lines(tx, user_id)
        if not lines:
            raise HTTPException(status.HTTP_409_CONFLICT, "the cart is empty")
        total = sum(line.line_cents for line in lines)
        order_id = tx.execute(
            "INSERT INTO orders (user_id, created_at, total_cents) VALUES (?, ?, ?)",
            (user_id, time.time(), total),
        ).lastrowid
        tx.executemany(
            "INSERT INTO order_items VALUES (?, ?, ?, ?)",
            [(order_id, line.product_id, line.quantity, line.price_cents) for line in lines],
        )
        tx.execute("DELETE FROM cart_items WHERE user_id = ?", (user_id,))
    assert order_id is not None  # an INSERT into a rowid table always sets it
    return Order(order_id=order_id, items=lines, total_cents=total)


ORDERS_OF_USER = (
    "SELECT id, created_at, total_cents FROM orders WHERE user_id = ?"
    " ORDER BY created_at DESC, id DESC LIMIT ?"
)
LINES_OF_ORDER = (
    "SELECT i.product_id, p.name, i.quantity, i.price_cents FROM order_items i"
    " JOIN products p ON p.id = i.product_id WHERE i.order_id = ? ORDER BY i.product_id"
)
# The same orders and lines in one statement. LEFT JOIN: an order without
# lines still comes back (with none), as it does from the loop.
ORDERS_WITH_LINES = (
    "SELECT o.id, o.created_at, o.total_cents, i.product_id, p.name, i.quantity, i.price_cents"
    f" FROM ({ORDERS_OF_USER}) o"
    " LEFT JOIN order_items i ON i.order_id = o.id LEFT JOIN products p ON p.id = i.product_id"
    " ORDER BY o.created_at DESC, o.id DESC, i.product_id"
)


def _line(row: sqlite3.Row) -> CartLine:
    return CartLine(
        product_id=row["product_id"],
        name=row["name"],
        quantity=row["quantity"],
        price_cents=row["price_cents"],
        line_cents=row["quantity"] * row["price_cents"],
    )


def orders_n_plus_one(conn: sqlite3.Connection, user_id: int, limit: int) -> list[PastOrder]:
    """The deliberate N+1: one query for the orders, then one more per order for its lines.

    Each query is quick (both go through an index), but a shopper with 12
    orders costs 13 queries, and ``limit=100`` up to 101: against a database
    server, as many network round trips.
    """
    history = []
    for order in conn.execute(ORDERS_OF_USER, (user_id, limit)).fetchall():
        rows = conn.execute(LINES_OF_ORDER, (order["id"],)).fetchall()  # the N+1
        history.append(
            PastOrder(
                order_id=order["id"],
                created_at=order["created_at"],
                total_cents=order["total_cents"],
                items=[_line(row) for row in rows],
            )
        )
    return history


def orders_joined(conn: sqlite3.Connection, user_id: int, limit: int) -> list[PastOrder]:
    """The fix: the same history from one JOIN, whatever the number of orders."""
    history: list[PastOrder] = []
    for row in conn.execute(ORDERS_WITH_LINES, (user_id, limit)).fetchall():
        if not history or history[-1].order_id != row["id"]:
            history.append(
                PastOrder(
                    order_id=row["id"],
                    created_at=row["created_at"],
                    total_cents=row["total_cents"],
                    items=[],
                )
            )
        if row["product_id"] is not None:
            history[-1].items.append(_line(row))
    return history


@router.get("/api/orders")
def order_history(
    db: DB, user_id: User, limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 20
) -> OrderHistory:
    """The shopper's past orders, newest first, with their lines."""
    # Read per request, so a test (or a demo) can switch between the two.
    fixed = os.environ.get("SHOP_FIX_N_PLUS_ONE") == "1"
    load = orders_joined if fixed else orders_n_plus_one
    return OrderHistory(orders=load(db.connection(), user_id, limit))


def create_app(db_path: Path | None = None, products: int | None = None) -> FastAPI:
    """A new shop app; the database is created (or reused) at start-up.

    ``db_path`` and ``products`` default to ``$SHOP_DB`` / ``$SHOP_PRODUCTS``.
    """
    path = db_path if db_path is not None else default_path()
    count = products if products is not None else default_product_count()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Seeding takes about a second; off the event loop it does not hold
        # up anything else uvicorn does at start-up.
        seconds = await run_in_threadpool(ensure_database, path, count)
        if seconds:
            log.info("seeded %s with %d products in %.2f s", path, count, seconds)
        app.state.db = database = Database(path)
        app.state.product_count = count
        try:
            yield
        finally:
            database.close()

    app = FastAPI(title="shop", lifespan=lifespan)
    app.include_router(router)
    app.add_middleware(
        PerfMiddleware, budgets=Path(__file__).with_name("perf-budgets.toml"), db=True
    )
    return app


app = create_app()
