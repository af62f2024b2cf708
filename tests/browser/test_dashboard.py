"""The dashboard in a real browser: Debian's Chromium driven by Playwright.

Each test serves a real app with uvicorn (``live_server``), sends it real
traffic, and reads the page as a person would: the text shown, the colours
computed, the pictures decoded. Every test also checks that the page asked
nothing of any other host and logged no error.

Playwright's own browser download is not used: the tests launch the
system's Chromium (``/usr/bin/chromium``, or ``ASGI_PERF_CHROMIUM``) and skip,
saying so, where there is none.
"""

from __future__ import annotations

import asyncio
import os
import pstats
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from asgi_perf import PerfMiddleware

CHROMIUM = os.environ.get("ASGI_PERF_CHROMIUM", "/usr/bin/chromium")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM),
        reason=f"no Chromium at {CHROMIUM}: apt-get install chromium (make does, as root)",
    ),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (dev extra)")

# The page's colours for verdicts (dashboard.css, light scheme).
GREEN, RED, AMBER = "rgb(26, 127, 55)", "rgb(207, 34, 46)", "rgb(125, 78, 0)"
WAIT_MS = 15_000


# --------------------------------------------------------------------------- the app


async def fast(request: Request) -> Response:
    return PlainTextResponse("fast")


async def slow(request: Request) -> Response:
    await asyncio.sleep(0.02)
    return PlainTextResponse("slow")


async def burn(request: Request) -> Response:
    # Busy on the loop thread: what a window's sampler sees.
    deadline = time.perf_counter() + 0.01
    n = 0
    while time.perf_counter() < deadline:
        n += 1
    return PlainTextResponse(str(n))


async def block(request: Request) -> Response:
    time.sleep(0.15)  # a sync call inside an async route: the loop stops
    return PlainTextResponse("blocked")


BUDGETS = {
    "GET /fast": {"p99_ms": 1000},
    "GET /slow/*": {"p99_ms": 5},
    "GET /rare": {"p99_ms": 1000, "min_samples": 1000},
}


def shop(**perf: Any) -> PerfMiddleware:
    routes = [
        Route("/fast", fast),
        Route("/slow/{n}", slow),
        Route("/rare", fast),
        Route("/burn", burn),
        Route("/block", block),
    ]
    return PerfMiddleware(Starlette(routes=routes), **perf)


def traffic(url: str, **counts: int) -> None:
    with httpx.Client(base_url=url, trust_env=False, timeout=30) as client:
        for path, n in counts.items():
            for i in range(n):
                target = f"/slow/{i}" if path == "slow" else f"/{path}"
                assert client.get(target).status_code == 200


# --------------------------------------------------------------------------- the browser


@dataclass
class Dashboard:
    """One page on one server, with everything it asked for and logged."""

    page: Any
    url: str
    requests: list[Any] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def assert_clean(self, allowed_errors: tuple[str, ...] = ()) -> None:
        origin = urlsplit(self.url).netloc
        foreign = [
            r.url
            for r in self.requests
            if urlsplit(r.url.removeprefix("blob:")).netloc != origin
            and not r.url.startswith("data:")
        ]
        assert not foreign, foreign
        errors = [e for e in self.errors if not any(a in e for a in allowed_errors)]
        assert not errors, errors

    def wait_ready(self) -> None:
        self.page.wait_for_selector("body[data-ready]", timeout=WAIT_MS)

    def color(self, selector: str) -> str:
        return str(self.page.eval_on_selector(selector, "n => getComputedStyle(n).color"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM)
        yield launched
        launched.close()


@pytest.fixture
def dashboard(browser: Any, live_server: Callable[..., Any]) -> Iterator[Callable[..., Dashboard]]:
    """Factory: ``dashboard(app, send=lambda url: ...)`` -> a page open on its /_perf/."""
    contexts: list[Any] = []

    def open_page(app: Any, *, path: str = "/_perf/", send: Callable[[str], None] | None = None):
        server = live_server(app)
        if send is not None:
            send(server.url)
        context = browser.new_context(
            color_scheme="light", viewport={"width": 1400, "height": 1000}
        )
        contexts.append(context)
        page = context.new_page()
        seen = Dashboard(page, server.url)
        page.on("request", lambda r: seen.requests.append(r))
        page.on("console", lambda m: m.type == "error" and seen.errors.append(m.text))
        page.on("pageerror", lambda exc: seen.errors.append(f"pageerror: {exc}"))
        page.goto(server.url + path)
        return seen

    yield open_page
    for context in contexts:
        context.close()


# --------------------------------------------------------------------------- tests


def test_routes_sorted_by_p99_with_verdicts_in_colour(dashboard):
    dash = dashboard(
        shop(budgets=BUDGETS), send=lambda url: traffic(url, fast=30, slow=25, rare=3, block=1)
    )
    dash.wait_ready()
    page = dash.page
    rows = page.locator("#routes-table tbody tr")
    routes = rows.evaluate_all("rows => rows.map(r => r.dataset.route)")
    assert set(routes) == {"GET /fast", "GET /slow/{n}", "GET /rare", "GET /block"}
    assert routes[0] == "GET /block"  # 150 ms, then /slow at 20 ms
    assert routes[1] == "GET /slow/{n}"
    slow_row = "tr[data-route='GET /slow/{n}']"
    assert page.inner_text(f"{slow_row} td.c-count") == "25"
    # Each verdict in its colour, with its limit; too few samples said so.
    page.wait_for_selector(f"{slow_row} .verdict-fail", timeout=WAIT_MS)
    assert dash.color(f"{slow_row} .verdict") == RED
    assert page.inner_text(f"{slow_row} .verdict") == "fail p99 ≤ 5 ms"
    assert dash.color("tr[data-route='GET /fast'] .verdict") == GREEN
    assert page.inner_text("tr[data-route='GET /fast'] .verdict") == "pass p99 ≤ 1 s"
    rare = "tr[data-route='GET /rare'] .verdict"
    assert dash.color(rare) == AMBER
    assert page.inner_text(rare) == "insufficient p99 ≤ 1 s (3 samples)"
    assert page.inner_text("tr[data-route='GET /block'] td.budget") == ""
    assert "budgets broken" in page.inner_text("#summary")
    # The loop panel names the route that blocked it and the line.
    page.wait_for_selector("#loop .blocks li b", timeout=WAIT_MS)
    blocks = page.inner_text("#loop .blocks")
    assert "GET /block — block (" in blocks
    assert page.is_visible("#memory") and "RSS" in page.inner_text("#memory .now")
    assert page.is_hidden("#workers")  # one process
    dash.assert_clean()


def test_a_route_clicked_shows_its_histogram_profiles_and_flame_graph(dashboard):
    dash = dashboard(
        shop(budgets=BUDGETS, sample_rate=1.0), send=lambda url: traffic(url, fast=10, slow=12)
    )
    dash.wait_ready()
    page = dash.page
    assert page.is_hidden("#route")
    page.click("tr[data-route='GET /slow/{n}'] button.route")
    assert page.is_visible("#route")
    assert page.inner_text("#route h2") == "GET /slow/{n}"
    assert "tr.selected" in page.eval_on_selector(
        "tr[data-route='GET /slow/{n}']", "n => 'tr.' + n.className"
    )
    page.wait_for_selector("#route svg.histogram .hist-bars rect", timeout=WAIT_MS)
    assert "12 requests since start or reset" in page.inner_text("#route .hist-note")
    bars = page.locator("#route svg.histogram .hist-bars rect").count()
    assert 1 <= bars <= 48
    assert page.locator("#route .mark-p99").count() == 1
    # Its slowest kept profiles, with every link, and the slowest one's flame graph.
    page.wait_for_selector("#route .slowest li[data-profile]", timeout=WAIT_MS)
    first = page.locator("#route .slowest li").first
    assert [a.inner_text() for a in first.locator("a, button").all()] == [
        "flame graph",
        "snakeviz",
        "speedscope",
        "html",
        ".prof",
    ]
    pid = first.get_attribute("data-profile")
    assert first.locator("a", has_text="speedscope").get_attribute("href") == (
        f"/_perf/profiles/{pid}/speedscope"
    )
    assert first.locator("a", has_text=".prof").get_attribute("href") == (
        f"/_perf/profiles/{pid}.prof?download=1"
    )
    flame = page.locator(f"#route img.flame[data-profile='{pid}']")
    flame.wait_for(timeout=WAIT_MS)
    assert flame.evaluate("img => img.naturalWidth") == 1200
    # Closing it hides it again.
    page.click("#route .close")
    assert page.is_hidden("#route")
    dash.assert_clean()


def test_the_window_button_profiles_and_opens_its_flame_graph(dashboard):
    dash = dashboard(shop(), send=lambda url: traffic(url, fast=3))
    dash.wait_ready()
    page = dash.page
    page.fill("#window-seconds", "2")
    assert page.inner_text("#window-start") == "Profile 2 s"
    page.click("#window-start")
    page.wait_for_selector("#window-stop:visible", timeout=WAIT_MS)
    # The process works while the window runs: the sampler has something to see.
    busy = threading.Thread(target=traffic, args=(dash.url,), kwargs={"burn": 60})
    busy.start()
    flame = page.locator("#viewer img.flame")
    flame.wait_for(timeout=WAIT_MS)
    busy.join()
    assert flame.evaluate("img => img.naturalWidth") == 1200
    assert page.inner_text("#viewer-title").startswith("Flame graph: window")
    assert page.inner_text("#window-state").startswith("done: window")
    assert page.is_hidden("#window-stop") and page.is_enabled("#window-start")
    kept = httpx.get(f"{dash.url}/_perf/profiles?kind=window", trust_env=False).json()
    assert [p["id"] for p in kept["profiles"]] == [flame.get_attribute("data-profile")]
    # The profile list shows it at the next refresh.
    page.wait_for_selector("#profiles-table tr[data-profile] >> text=window", timeout=WAIT_MS)
    dash.assert_clean()


def test_with_a_token_the_page_asks_once_and_sends_it_on_every_call(dashboard):
    def send(url: str) -> None:
        traffic(url, fast=4)
        asked = {"X-Perf-Profile": "1", "Authorization": "Bearer s3cret"}
        profiled = httpx.get(f"{url}/slow/1", headers=asked, trust_env=False)
        assert profiled.headers["x-perf-profile-id"]

    dash = dashboard(shop(token="s3cret"), send=send)
    page = dash.page
    page.wait_for_selector("#token-box:visible", timeout=WAIT_MS)
    assert "needs its asgi_perf token" in page.inner_text("#token-message")
    assert not [r for r in dash.requests if "/_perf/stats" in r.url]  # asked before calling
    page.fill("#token-input", "wrong")
    page.click("#token-form button")
    page.wait_for_selector("#token-box:visible", timeout=WAIT_MS)
    page.wait_for_function(
        "document.getElementById('token-message').textContent.includes('refused')"
    )
    page.fill("#token-input", "s3cret")
    page.click("#token-form button")
    dash.wait_ready()
    assert page.is_hidden("#token-box")
    assert page.inner_text("tr[data-route='GET /fast'] td.c-count") == "4"
    calls = [r for r in dash.requests if r.resource_type == "fetch"]
    sent = [r.all_headers().get("authorization") for r in calls]
    right = sent.index("Bearer s3cret")
    assert set(sent[:right]) == {"Bearer wrong"} and set(sent[right:]) == {"Bearer s3cret"}
    assert not [r.url for r in dash.requests if "s3cret" in r.url]
    assert page.context.cookies() == []
    # Kept for the tab: a reload does not ask again.
    page.reload()
    dash.wait_ready()
    assert page.is_hidden("#token-box")
    # A tab could not send the token: a profile's files come down through
    # fetch() instead of links, and its flame graph shows from a blob.
    row = page.locator("#profiles-table tr[data-profile]").first
    row.wait_for(timeout=WAIT_MS)
    buttons = [b.inner_text() for b in row.locator("td:last-child button").all()]
    assert buttons == ["flame graph", ".prof", "speedscope.json", ".html"]
    assert row.locator("a").count() == 0
    with page.expect_download() as got:
        row.locator("button", has_text=".prof").click()
    assert got.value.suggested_filename == f"{row.get_attribute('data-profile')}.prof"
    assert pstats.Stats(str(got.value.path())).total_tt > 0
    row.locator("button", has_text="flame graph").click()
    flame = page.locator("#viewer img.flame")
    flame.wait_for(timeout=WAIT_MS)
    assert flame.evaluate("img => img.naturalWidth") == 1200
    assert page.is_hidden("#viewer a.open")
    dash.assert_clean(allowed_errors=("status of 401",))


def test_reset_asks_first_then_clears(dashboard):
    dash = dashboard(shop(), send=lambda url: traffic(url, fast=5))
    dash.wait_ready()
    page = dash.page
    answers = iter([False, True])
    page.on("dialog", lambda d: d.accept() if next(answers) else d.dismiss())
    page.click("#reset")
    page.wait_for_timeout(300)
    assert httpx.get(f"{dash.url}/_perf/stats", trust_env=False).json()["requests"] == 5
    page.click("#reset")
    page.wait_for_selector("#routes-empty:visible", timeout=WAIT_MS)
    assert page.locator("#routes-table tbody tr").count() == 0
    assert "0 requests since reset" in page.inner_text("#summary")
    dash.assert_clean()


def test_features_off_and_nothing_yet_show_empty_states(dashboard):
    dash = dashboard(shop(loop_monitor=False, memory_interval_s=0))
    dash.wait_ready()
    page = dash.page
    assert page.is_visible("#routes-empty")
    assert page.inner_text("#profiles-table tbody").startswith("no profiles yet")
    assert "X-Perf-Profile: 1" in page.inner_text("#profiles-table tbody")
    assert page.is_hidden("#loop")
    page.wait_for_function("document.querySelector('#memory .reason').textContent !== ''")
    assert "timeline is off" in page.inner_text("#memory .reason")
    assert page.is_hidden("#memory figure")
    assert page.is_hidden("#route") and page.is_hidden("#viewer")
    dash.assert_clean()  # no 409 asked for: the snapshot said what is off


def test_a_custom_prefix_is_used_for_every_call(dashboard):
    dash = dashboard(
        shop(prefix="/ops/perf"), path="/ops/perf/", send=lambda url: traffic(url, fast=2)
    )
    dash.wait_ready()
    assert dash.page.inner_text("tr[data-route='GET /fast'] td.c-count") == "2"
    paths = {urlsplit(r.url).path for r in dash.requests}
    assert all(p.startswith("/ops/perf/") for p in paths), paths
    dash.assert_clean()


def test_a_refresh_updates_the_rows_in_place(dashboard):
    dash = dashboard(shop(), send=lambda url: traffic(url, fast=3, slow=2))
    dash.wait_ready()
    page = dash.page
    row = page.query_selector("tr[data-route='GET /fast']")
    cell = page.query_selector("tr[data-route='GET /fast'] td.c-count")
    assert cell.inner_text() == "3"
    traffic(dash.url, fast=4)
    page.wait_for_function("c => c.textContent === '7'", arg=cell, timeout=WAIT_MS)
    # The same nodes, changed in place: nothing was rebuilt.
    assert row.evaluate(
        "r => r.isConnected && r === document.querySelector(\"tr[data-route='GET /fast']\")"
    )
    assert page.locator("#traffic svg.spark").count() == 2
    dash.assert_clean()


def test_an_older_server_without_the_newer_fields_still_shows_routes(dashboard):
    """Answers stripped to the oldest snapshot's fields; the optional calls refused."""
    dash = dashboard(shop(budgets=BUDGETS), path="/", send=lambda url: traffic(url, fast=3))
    page = dash.page

    def older(route: Any) -> None:
        answer = route.fetch()
        body = answer.json()
        for key in ("loop", "process", "profiling", "budgets"):
            body.pop(key, None)
        body["workers"] = [
            {"pid": 1, "alive": True, "requests": 2, "last_flush_s": 0.2},
            {"pid": 2, "alive": False, "requests": 1, "last_flush_s": None},
        ]
        for r in body["routes"]:
            for key in ("recent", "memory_mb", "budget", "histograms", "ttfb_ms"):
                r.pop(key, None)
        route.fulfill(response=answer, json=body)

    page.route("**/_perf/stats*", older)
    page.route("**/_perf/profiles*", lambda route: route.fulfill(status=404, json={}))
    page.goto(dash.url + "/_perf/")
    dash.wait_ready()
    assert page.inner_text("tr[data-route='GET /fast'] td.c-count") == "3"
    assert page.inner_text("tr[data-route='GET /fast'] td.c-rps") == "—"
    assert page.is_hidden("#loop") and page.is_hidden("#memory")
    assert page.locator("#workers tbody tr").count() == 2
    assert "gone" in page.inner_text("#workers tbody")
    page.click("tr[data-route='GET /fast'] button.route")
    page.wait_for_selector("#route .hist-note >> text=no histograms", timeout=WAIT_MS)
    dash.assert_clean(allowed_errors=("status of 404",))
