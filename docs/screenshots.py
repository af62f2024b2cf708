"""The dashboard's pictures for the README, and its numbers with 200 routes.

    python docs/screenshots.py            # docs/dashboard.png, docs/flamegraph.png
    python docs/screenshots.py --measure  # and the timings with 200 routes

Serves a small shop with uvicorn on 127.0.0.1, sends it traffic for a few
seconds (bounded), and drives Debian's Chromium with Playwright
(``ASGI_PERF_CHROMIUM`` names another binary). Nothing leaves this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from playwright.sync_api import Page, sync_playwright
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from asgi_perf import PerfMiddleware

DOCS = Path(__file__).resolve().parent
CHROMIUM = os.environ.get("ASGI_PERF_CHROMIUM", "/usr/bin/chromium")
WORDS = [
    "red",
    "blue",
    "green",
    "lamp",
    "chair",
    "table",
    "desk",
    "sofa",
    "rug",
    "shelf",
    "mirror",
    "clock",
]
CATALOGUE = [" ".join(random.Random(i).choices(WORDS, k=6)) for i in range(3000)]


def tokenize(text: str) -> list[str]:
    return text.lower().split()


def score(query: list[str], name: str) -> int:
    words = tokenize(name)
    return sum(words.count(q) for q in query)


def rank(query: str) -> list[str]:
    terms = tokenize(query)
    return sorted(CATALOGUE, key=lambda name: -score(terms, name))[:10]


async def search(request: Request) -> Response:
    return JSONResponse(rank(request.query_params.get("q", "red lamp")))


async def products(request: Request) -> Response:
    await asyncio.sleep(random.uniform(0.004, 0.012))
    return JSONResponse(CATALOGUE[:20])


async def product(request: Request) -> Response:
    return JSONResponse({"id": request.path_params["pid"]})


async def cart(request: Request) -> Response:
    await asyncio.sleep(0.002)
    return JSONResponse({"ok": True}, status_code=201)


async def report(request: Request) -> Response:
    time.sleep(0.12)  # a sync call in an async route: the loop panel shows it
    return JSONResponse({"rows": 0})


async def checkout(request: Request) -> Response:
    if random.random() < 0.1:
        return JSONResponse({"error": "payment declined"}, status_code=502)
    await asyncio.sleep(0.03)
    return JSONResponse({"order": 1})


def shop() -> PerfMiddleware:
    routes = [
        Route("/products", products),
        Route("/products/{pid}", product),
        Route("/search", search),
        Route("/cart", cart, methods=["POST"]),
        Route("/checkout", checkout, methods=["POST"]),
        Route("/report", report),
    ]
    budgets = {
        "GET /products*": {"p99_ms": "100 ms"},
        "GET /search": {"p50_ms": "10 ms", "p99_ms": "25 ms"},
        "POST /checkout": {"p99_ms": "80 ms", "error_rate": "5%"},
        "GET /report": {"p99_ms": "50 ms", "min_samples": 1000},
    }
    return PerfMiddleware(
        Starlette(routes=routes), budgets=budgets, sample_rate=0.05, memory_interval_s=1
    )


def many_routes(n: int) -> PerfMiddleware:
    async def hello(request: Request) -> Response:
        return JSONResponse({"ok": True})

    routes = [Route(f"/r{i:03d}/{{x}}", hello) for i in range(n)]
    return PerfMiddleware(Starlette(routes=routes), budgets={"GET /r0*": {"p99_ms": 50}})


@contextmanager
def serve(app: Any) -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def shop_traffic(url: str, seconds: float, stop: threading.Event) -> None:
    """A few thousand requests at most, for ``seconds`` at most."""
    end = time.monotonic() + seconds
    with httpx.Client(base_url=url, trust_env=False) as client:
        for i in range(5000):
            if stop.is_set() or time.monotonic() > end:
                return
            client.get("/products")
            client.get(f"/products/{i % 50}")
            client.get("/search", params={"q": random.choice(WORDS)})
            if i % 3 == 0:
                client.post("/cart")
                client.post("/checkout")
            if i % 40 == 0:
                client.get("/report")


def open_page(page: Page, url: str) -> None:
    page.goto(f"{url}/_perf/")
    page.wait_for_selector("body[data-ready]", timeout=15_000)


def screenshots(page: Page) -> None:
    with serve(shop()) as url:
        stop = threading.Event()
        sender = threading.Thread(target=shop_traffic, args=(url, 60, stop))
        sender.start()
        time.sleep(6)
        open_page(page, url)
        page.wait_for_timeout(20_000)  # ten refreshes: the lines have a history
        page.click("tr[data-route='GET /search'] button.route")
        page.wait_for_selector("#route img.flame", timeout=15_000)
        page.wait_for_timeout(500)
        page.screenshot(path=str(DOCS / "dashboard.png"), full_page=True)
        page.fill("#window-seconds", "3")
        page.click("#window-start")
        page.wait_for_selector("#viewer img.flame", timeout=20_000)
        page.wait_for_timeout(300)
        page.locator("#viewer").screenshot(path=str(DOCS / "flamegraph.png"))
        stop.set()
        sender.join()
    print(f"wrote {DOCS / 'dashboard.png'} and {DOCS / 'flamegraph.png'}")


def server_ms(app: Any, path: str, runs: int = 40) -> list[float]:
    """CPU milliseconds the app takes to answer ``path`` in-process: no socket, no client."""
    raw_path, _, query = path.partition("?")
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": raw_path, "raw_path": raw_path.encode(), "root_path": "",
        "query_string": query.encode(), "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 1), "server": ("bench", 80),
    }  # fmt: skip

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    async def run() -> list[float]:
        # CPU time of this thread: what the answer costs, whatever else the
        # machine is doing (wall time on a shared machine says more of that).
        out = []
        for _ in range(runs):
            t0 = time.thread_time()
            await app(dict(scope), receive, send)
            out.append((time.thread_time() - t0) * 1000)
        return out

    # Playwright's sync API holds this thread's event loop: time on another.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


def measure(page: Page, routes: int = 200) -> dict[str, Any]:
    app = many_routes(routes)
    with serve(app) as url:
        with httpx.Client(base_url=url, trust_env=False) as client:
            for k in range(10):
                for i in range(routes):
                    client.get(f"/r{i:03d}/{k}")
        open_page(page, url)
        page.wait_for_timeout(32_000)  # sixteen refreshes: /memory and /budgets come round
        timing = page.evaluate(
            """() => ({
              paint: performance.getEntriesByName('first-contentful-paint')[0]?.startTime,
              data: performance.getEntriesByName('asgi-perf:first-data')[0]?.startTime,
              stats: performance.getEntriesByType('resource')
                .filter(e => e.name.endsWith('/stats'))
                .map(e => e.responseStart - e.requestStart),
              calls: performance.getEntriesByType('resource')
                .filter(e => e.initiatorType === 'fetch')
                .map(e => e.name.slice(location.origin.length)),
              bytes: performance.getEntriesByType('resource')
                .filter(e => e.name.includes('/dashboard/'))
                .reduce((n, e) => n + e.encodedBodySize,
                        performance.getEntriesByType('navigation')[0].encodedBodySize),
            })"""
        )
        rows = page.locator("#routes-table tbody tr").count()
    result = {
        "routes": rows,
        "first_contentful_paint_ms": round(timing["paint"], 1),
        "first_data_ms": round(timing["data"], 1),
        "stats_ttfb_in_browser_ms": [round(t, 1) for t in timing["stats"]],
        "page_kb": round(timing["bytes"] / 1024, 1),
    }
    # What the page asked for, each call's CPU in-process: the server's share.
    calls = Counter(timing["calls"])
    per_refresh = 0.0
    for path, n in sorted(calls.items()):
        times = server_ms(app, path)
        median = statistics.median(times)
        per_refresh += n * median / calls["/_perf/stats"]
        result[f"server_cpu_ms {path}"] = {"calls": n, "median": round(median, 2)}
    result["server_cpu_ms_per_refresh"] = round(per_refresh, 1)
    result["load_average"] = os.getloadavg()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true", help="time the page with 200 routes")
    parser.add_argument("--no-screenshots", action="store_true")
    args = parser.parse_args()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        context = browser.new_context(color_scheme="light", viewport={"width": 1360, "height": 900})
        if not args.no_screenshots:
            screenshots(context.new_page())
        if args.measure:
            print(json.dumps(measure(context.new_page()), indent=1))
        browser.close()


if __name__ == "__main__":
    main()
