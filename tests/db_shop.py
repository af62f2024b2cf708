"""A small shop over sqlite3 through ``asgi_perf.db.instrument``, for the DB surfaces' tests.

``GET /orders`` has a deliberate N+1 (one query for the orders, then one
per order for its lines: ``1 + ORDERS`` queries); ``GET /orders/joined``
asks once; ``GET /search?ms=N`` runs one statement that takes N ms (a
sqlite function that sleeps), to make slow statements on demand.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import asgi_perf.db
from asgi_perf import PerfMiddleware

ORDERS = 12
LINES_STATEMENT = "SELECT sku, qty FROM lines WHERE order_id = ?"
SEARCH_STATEMENT = "SELECT pause(?)"


def connect() -> sqlite3.Connection:
    """A seeded in-memory database; its queries run on the server's thread."""
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    conn.create_function("pause", 1, lambda ms: time.sleep(ms / 1000) or ms)
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER)")
    conn.execute("CREATE TABLE lines (order_id INTEGER, sku TEXT, qty INTEGER)")
    conn.executemany("INSERT INTO orders (user_id) VALUES (1)", [()] * ORDERS)
    conn.executemany("INSERT INTO lines VALUES (?, 'sku', 1)", [(i,) for i in range(1, ORDERS + 1)])
    return conn


def make_app(conn: sqlite3.Connection, **perf: Any) -> PerfMiddleware:
    db = asgi_perf.db.instrument(conn)

    async def orders(request: Request) -> Response:
        found = db.execute("SELECT id FROM orders WHERE user_id = ?", (1,)).fetchall()
        lines = []
        for (order_id,) in found:
            lines.append(db.execute(LINES_STATEMENT, (order_id,)).fetchall())  # N+1-HERE
        return JSONResponse({"orders": len(found), "lines": sum(map(len, lines))})

    async def joined(request: Request) -> Response:
        rows = db.execute(
            "SELECT o.id, l.sku FROM orders o JOIN lines l ON l.order_id = o.id "
            "WHERE o.user_id = ?",
            (1,),
        ).fetchall()
        return JSONResponse({"lines": len(rows)})

    async def search(request: Request) -> Response:
        ms = int(request.query_params.get("ms", "0"))
        db.execute(SEARCH_STATEMENT, (ms,)).fetchall()  # SLOW-HERE
        return JSONResponse({"ms": ms})

    routes = [
        Route("/orders", orders),
        Route("/orders/joined", joined),
        Route("/search", search),
    ]
    return PerfMiddleware(Starlette(routes=routes), **perf)


def call_site(marker: str) -> str:
    """``tests/db_shop.py:LINE`` of the line carrying ``marker``, as the server reports it."""
    path = Path(__file__)
    lines = path.read_text(encoding="utf-8").splitlines()
    line = next(i for i, text in enumerate(lines, 1) if text.endswith(f"# {marker}"))
    try:
        shown = path.relative_to(Path.cwd())
    except ValueError:
        shown = path
    return f"{shown}:{line}"
