"""A small shop app for the profiling benchmarks: nested calls, some CPU work.

The trivial app of ``apps.py`` spends its time in the framework, so a profile
of it is a handful of identical stacks and says nothing about how big a
flame graph of a real service gets. These endpoints call a few levels of
plain functions and do a few hundred microseconds of Python work each,
with an ``await`` and a sync endpoint in the threadpool, so that a window
under load collects many distinct stacks. Everything is deterministic (no
I/O, seeded data), so every run profiles the same work.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

# What the wrk script of the benchmarks rotates through, one path per request.
SHOP_PATHS = (
    "/shop/products?q=blue",
    "/shop/orders/17",
    "/shop/checkout/3",
    "/shop/report",
    "/shop/products?q=steel",
    "/shop/orders/42",
)

_COLOURS = ("blue", "red", "green", "black", "white", "steel", "oak", "linen")
_THINGS = ("chair", "table", "lamp", "shelf", "rug", "mug", "vase", "clock", "desk", "bed")


@dataclass(frozen=True)
class Product:
    sku: int
    name: str
    price_cents: int
    weight_g: int


@dataclass(frozen=True)
class Line:
    product: Product
    quantity: int


def _catalog(size: int = 300) -> tuple[Product, ...]:
    rng = random.Random(7)
    return tuple(
        Product(
            sku=i,
            name=f"{rng.choice(_COLOURS)} {rng.choice(_COLOURS)} {rng.choice(_THINGS)} {i}",
            price_cents=rng.randrange(199, 49_999),
            weight_g=rng.randrange(50, 20_000),
        )
        for i in range(size)
    )


CATALOG = _catalog()


# ---------------------------------------------------------------- search


def _score(product: Product, terms: list[str]) -> float:
    words = product.name.split()
    hits = sum(1 for term in terms for word in words if word.startswith(term))
    return hits + 1 / (1 + product.price_cents / 10_000)


def _rank(terms: list[str]) -> list[tuple[float, Product]]:
    scored = [(_score(p, terms), p) for p in CATALOG]
    scored.sort(key=lambda pair: (-pair[0], pair[1].sku))
    return scored


def search_products(query: str, limit: int = 20) -> list[dict[str, Any]]:
    ranked = _rank(query.lower().split())
    return [{"sku": p.sku, "name": p.name, "score": round(s, 3)} for s, p in ranked[:limit]]


# ---------------------------------------------------------------- orders


def load_order(order_id: int) -> list[Line]:
    # Seeded by the id: the same order is the same work every time.
    rng = random.Random(order_id)
    return [Line(rng.choice(CATALOG), rng.randrange(1, 5)) for _ in range(12)]


def _line_total(line: Line) -> int:
    return line.product.price_cents * line.quantity


def _discount(lines: list[Line], subtotal: int) -> int:
    bulky = sum(1 for line in lines if line.product.weight_g > 10_000)
    return subtotal // 20 if bulky >= 3 else 0


def _shipping(lines: list[Line]) -> int:
    grams = sum(line.product.weight_g * line.quantity for line in lines)
    return 499 + grams // 1000 * 35


def price_order(lines: list[Line]) -> dict[str, int]:
    subtotal = sum(_line_total(line) for line in lines)
    discount = _discount(lines, subtotal)
    shipping = _shipping(lines)
    tax = (subtotal - discount + shipping) * 19 // 100
    return {
        "subtotal": subtotal,
        "discount": discount,
        "shipping": shipping,
        "tax": tax,
        "total": subtotal - discount + shipping + tax,
    }


def render_receipt(order_id: int, lines: list[Line], totals: dict[str, int]) -> str:
    rows = [
        f"{line.quantity:>3} x {line.product.name:<40} {_line_total(line) / 100:>10.2f}"
        for line in lines
    ]
    rows += [f"{key:<46} {value / 100:>10.2f}" for key, value in totals.items()]
    return f"order {order_id}\n" + "\n".join(rows)


# -------------------------------------------------------------- checkout


def _validate(lines: list[Line]) -> None:
    for line in lines:
        if line.quantity <= 0 or line.product.price_cents <= 0:
            raise ValueError(f"bad line {line}")


def _sign(payload: dict[str, Any]) -> str:
    body = json.dumps(payload, sort_keys=True).encode()
    digest = b""
    # A few rounds, as a key-derivation step would: measurable CPU in C code.
    for _ in range(50):
        digest = hashlib.sha256(digest + body).digest()
    return digest.hex()


async def checkout(cart_id: int) -> dict[str, Any]:
    lines = load_order(1000 + cart_id)
    _validate(lines)
    # Stands for a call to a payment service: the request yields to the loop.
    await asyncio.sleep(0)
    totals = price_order(lines)
    return {"cart": cart_id, **totals, "signature": _sign(totals)}


# ---------------------------------------------------------------- report


def _monthly(sales: list[int]) -> list[int]:
    return [sum(sales[i : i + 30]) for i in range(0, len(sales), 30)]


def _percentiles(values: list[int]) -> dict[str, int]:
    ordered = sorted(values)
    n = len(ordered)
    return {f"p{p}": ordered[min(n - 1, n * p // 100)] for p in (50, 90, 99)}


def sales_report() -> dict[str, Any]:
    rng = random.Random(11)
    sales = [rng.randrange(0, 5_000) for _ in range(720)]
    return {"months": _monthly(sales), **_percentiles(sales)}


def shop_app() -> FastAPI:
    """Four endpoints, async and sync, each a few nested calls deep."""
    app = FastAPI()

    @app.get("/shop/products")
    async def products(q: str = "") -> list[dict[str, Any]]:
        return search_products(q)

    @app.get("/shop/orders/{order_id}")
    async def order(order_id: int) -> dict[str, Any]:
        lines = load_order(order_id)
        totals = price_order(lines)
        return {"id": order_id, **totals, "receipt": render_receipt(order_id, lines, totals)}

    @app.get("/shop/checkout/{cart_id}")
    async def checkout_cart(cart_id: int) -> dict[str, Any]:
        return await checkout(cart_id)

    # A sync endpoint: Starlette runs it in its threadpool, which only yappi
    # sees into (README, Profiling); keeps that difference in the figures.
    @app.get("/shop/report")
    def report() -> dict[str, Any]:
        return sales_report()

    return app
