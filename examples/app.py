"""A small shop API that explains its own performance through asgi_perf.

Run it from the repository root with ``uvicorn examples.app:app`` (or from
this directory with ``python -m uvicorn app:app``), send it some traffic,
then read ``http://127.0.0.1:8000/_perf/stats`` and ``/_perf/budgets``.

The routes cover the shapes a real service has: cheap async handlers, CPU
work on the event loop, a blocking ``def`` endpoint in the threadpool, a
streaming response, an included router with a prefix, and two routes that
break their budgets in ``perf-budgets.toml`` on purpose (``/slow``, ``/flaky``).
"""

from __future__ import annotations

import asyncio
import random
import statistics
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypedDict

from fastapi import APIRouter, FastAPI, HTTPException
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from asgi_perf import PerfMiddleware


class Product(TypedDict):
    id: int
    name: str
    price: float
    stock: int


# Seeded so that every run does the same CPU work per request.
_rng = random.Random(1234)
_WORDS = ("red", "blue", "green", "steel", "oak", "mini", "pro", "max", "lite", "eco")
CATALOG: list[Product] = [
    Product(
        id=i,
        name=f"{_rng.choice(_WORDS)} {_rng.choice(_WORDS)} widget {i}",
        price=round(_rng.uniform(1, 500), 2),
        stock=_rng.randint(0, 80),
    )
    for i in range(4_000)
]
USERS: dict[str, dict[str, str | int]] = {
    f"u{i}": {"id": f"u{i}", "name": f"user {i}", "orders": i % 17} for i in range(500)
}


class ItemIn(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    price: float = Field(gt=0)
    tags: list[str] = Field(default_factory=list, max_length=10)


class ItemOut(ItemIn):
    id: int


class Report(BaseModel):
    items: int
    mean: float
    median: float
    p90: float
    stdev: float


app = FastAPI(title="asgi_perf example shop")
app.add_middleware(PerfMiddleware, budgets=Path(__file__).with_name("perf-budgets.toml"))


@app.get("/")
async def index() -> dict[str, str]:
    return {"service": "shop", "perf": "/_perf/stats"}


@app.get("/items/{item_id}")
async def get_item(item_id: int) -> dict[str, object]:
    if not 0 <= item_id < len(CATALOG):
        raise HTTPException(status_code=404, detail="no such item")
    item = CATALOG[item_id]
    return {**item, "in_stock": bool(item["stock"])}


@app.post("/items", status_code=201)
async def create_item(item: ItemIn) -> ItemOut:
    # Not stored: the catalog stays the same size however long the load runs.
    return ItemOut(id=len(CATALOG), **item.model_dump())


@app.get("/search")
async def search(q: str = "", limit: int = 20) -> dict[str, object]:
    # Deliberately CPU-bound on the event loop, as naive search code often is:
    # it delays every other request while it runs, and the stats show it.
    needle = q.lower()
    hits = [item for item in CATALOG if needle in item["name"]]
    hits.sort(key=lambda item: (-item["stock"], item["price"]))
    return {"q": q, "total": len(hits), "items": hits[: max(1, min(limit, 100))]}


@app.get("/slow")
async def slow() -> dict[str, float]:
    # Stands for a slow upstream call; 120 ms breaks the 100 ms p99 budget.
    await asyncio.sleep(0.12)
    return {"waited_s": 0.12}


@app.get("/report")
def report() -> Report:
    # A blocking `def` endpoint: FastAPI runs it in the threadpool, so its
    # CPU time competes with the event loop for the GIL, not for the loop.
    prices = sorted(item["price"] * (1 + i % 7 / 100) for i, item in enumerate(CATALOG))
    return Report(
        items=len(prices),
        mean=round(statistics.fmean(prices), 2),
        median=round(statistics.median(prices), 2),
        p90=round(prices[int(len(prices) * 0.9)], 2),
        stdev=round(statistics.pstdev(prices), 2),
    )


async def _chunks(count: int) -> AsyncIterator[bytes]:
    for i in range(count):
        yield f"chunk {i}\n".encode() * 64
        await asyncio.sleep(0.01)


@app.get("/stream")
async def stream() -> StreamingResponse:
    # asgi_perf times a streaming response to its last chunk, not its headers.
    return StreamingResponse(_chunks(5), media_type="text/plain")


@app.get("/flaky")
async def flaky() -> dict[str, bool]:
    # Module-level random, not the seeded one: failures should look like a real
    # flaky dependency, about one request in ten.
    if random.random() < 0.1:
        raise HTTPException(status_code=500, detail="upstream hiccup")
    return {"ok": True}


api = APIRouter(prefix="/api/v1")


@api.get("/users/{user_id}")
async def get_user(user_id: str) -> dict[str, str | int]:
    user = USERS.get(user_id)
    if user is None:
        raise HTTPException(status_code=404, detail="no such user")
    return user


app.include_router(api)
