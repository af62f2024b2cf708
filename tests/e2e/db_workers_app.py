"""The app served by several workers in test_db_workers.py: three sqlite3 queries a request."""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing

from fastapi import FastAPI

import asgi_perf.db
from asgi_perf import PerfMiddleware

app = FastAPI()
DB = os.environ["DB_WORKERS_PATH"]


@app.get("/items/{item_id}")
async def item(item_id: int) -> dict[str, int]:
    with closing(asgi_perf.db.instrument(sqlite3.connect(DB))) as conn:
        for _ in range(3):
            conn.execute("SELECT name FROM items WHERE id = ?", (item_id,)).fetchall()
    return {"pid": os.getpid()}


# db is turned on by ASGI_PERF_DB=1 in the environment.
app.add_middleware(PerfMiddleware)
