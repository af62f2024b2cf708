"""The dashboard's shell over HTTP: who gets it, what it carries, where it points.

In-process (the ASGI driver of conftest.py), so remote client addresses can be
played; what a person sees in the page is in test_dashboard.py (Chromium).
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from asgi_perf import PerfMiddleware
from asgi_perf.api.dashboard import ASSETS_PATH, CONTENT_SECURITY_POLICY

HTML = [(b"accept", b"text/html,application/xhtml+xml,*/*;q=0.8")]
REMOTE = ("203.0.113.5", 4000)
LOOPBACK = ("127.0.0.1", 4000)
STATIC = files("asgi_perf.api") / "static" / "dashboard"
ASSETS = sorted(p.name for p in STATIC.iterdir() if p.name != "index.html")


async def hello(request: Request) -> Response:
    return PlainTextResponse("hello")


def make_app(**perf: Any) -> PerfMiddleware:
    return PerfMiddleware(Starlette(routes=[Route("/hello/{name}", hello)]), **perf)


def assert_page_headers(result: Any) -> None:
    assert result.header("content-security-policy") == CONTENT_SECURITY_POLICY
    assert result.header("x-content-type-options") == "nosniff"
    assert result.header("cache-control") == "no-store"
    assert result.header("x-frame-options") == "DENY"
    assert not [h for h in result.header_names if h.startswith("access-control-")]


def test_the_policy_allows_only_the_pages_own_code():
    policy = dict(part.split(" ", 1) for part in CONTENT_SECURITY_POLICY.split("; "))
    assert policy["default-src"] == "'self'"
    assert policy["script-src"] == "'self'"  # no inline script, no eval
    assert policy["style-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY


async def test_a_browser_gets_the_shell_with_no_data_in_it(asgi):
    mw = make_app()
    await asgi(mw, "GET", "/hello/secret-name")
    result = await asgi(mw, "GET", "/_perf/", headers=HTML)
    assert result.status == 200
    assert result.header("content-type") == "text/html; charset=utf-8"
    assert_page_headers(result)
    page = result.body.decode()
    assert 'data-base="/_perf"' in page and 'data-auth="none"' in page
    assert '<script type="module" src="/_perf/dashboard/dashboard.js">' in page
    assert "{{" not in page
    # Nothing measured is in the page: it fetches it, through the gate.
    assert "hello" not in page and "secret-name" not in page
    assert "<script>" not in page and "style=" not in page  # nothing inline for the CSP to allow


async def test_json_clients_keep_the_json_index(asgi):
    mw = make_app()
    for headers in ([], [(b"accept", b"application/json")], [(b"accept", b"*/*")]):
        result = await asgi(mw, "GET", "/_perf/", headers=headers)
        assert result.header("content-type") == "application/json"
        assert result.json()["endpoints"]["stats"] == "GET /_perf/stats"


@pytest.mark.parametrize("name", ASSETS)
async def test_every_asset_is_served_with_its_type_and_the_policy(asgi, name):
    mw = make_app()
    result = await asgi(mw, "GET", f"/_perf{ASSETS_PATH}{name}")
    assert result.status == 200, name
    assert result.body == (STATIC / name).read_bytes()
    expected = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    assert (result.header("content-type") or "").startswith(expected[name[name.rindex(".") :]])
    assert_page_headers(result)


@pytest.mark.parametrize(
    "path",
    ["index.html", "nope.js", "..%2f..%2fconfig.py", "../api/app.py", "dashboard.js/x", ""],
)
async def test_only_the_assets_table_is_served(asgi, path):
    mw = make_app()
    result = await asgi(mw, "GET", f"/_perf{ASSETS_PATH}{path}")
    assert result.status == 404
    assert result.header("content-type") == "application/json"


async def test_the_page_weighs_under_300_kb():
    total = sum(len((STATIC / name).read_bytes()) for name in [*ASSETS, "index.html"])
    assert total <= 300 * 1024, total


async def test_the_prefix_and_root_path_are_injected(asgi):
    mw = make_app(prefix="/ops/perf")
    page = (await asgi(mw, "GET", "/ops/perf/", headers=HTML, root_path="/api")).body.decode()
    assert 'data-base="/api/ops/perf"' in page
    assert 'href="/api/ops/perf/dashboard/dashboard.css"' in page
    assert "/_perf" not in page
    asset = await asgi(mw, "GET", "/ops/perf/dashboard/dashboard.js")
    assert asset.status == 200


async def test_the_injected_base_is_escaped(asgi):
    mw = make_app()
    root = '/x"><script>alert(1)</script>'
    page = (await asgi(mw, "GET", "/_perf/", headers=HTML, root_path=root)).body.decode()
    assert "<script>alert" not in page
    assert 'data-base="/x&quot;&gt;&lt;script&gt;' in page


# --------------------------------------------------------------------------- who gets it


@pytest.mark.parametrize("path", ["/_perf/", f"/_perf{ASSETS_PATH}dashboard.js"])
async def test_without_a_token_the_shell_keeps_the_loopback_rule(asgi, path):
    mw = make_app()
    assert (await asgi(mw, "GET", path, headers=HTML, client=LOOPBACK)).status == 200
    refused = await asgi(mw, "GET", path, headers=HTML, client=REMOTE)
    assert refused.status == 403
    assert "loopback" in refused.json()["error"]


@pytest.mark.parametrize("client", [LOOPBACK, REMOTE], ids=["loopback", "remote"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_with_a_token_the_shell_loads_without_it(asgi, client, method):
    # A browser's first GET cannot carry the header: the page asks for the token.
    mw = make_app(token="s3cret")
    page = await asgi(mw, method, "/_perf/", headers=HTML, client=client)
    assert page.status == 200
    assert_page_headers(page)
    if method == "GET":
        assert b'data-auth="token"' in page.body
        assert b"s3cret" not in page.body
    for name in ASSETS:
        assert (await asgi(mw, method, f"/_perf{ASSETS_PATH}{name}", client=client)).status == 200


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/_perf/", []),  # the JSON index
        ("GET", "/_perf/", [(b"accept", b"application/json")]),
        ("GET", "/_perf", [(b"accept", b"application/json")]),
        ("GET", "/_perf/stats", HTML),
        ("GET", "/_perf/budgets", HTML),
        ("GET", "/_perf/profiles", HTML),
        ("GET", "/_perf/memory", HTML),
        ("GET", "/_perf/dashboard/", HTML),
        ("GET", "/_perf/dashboard/../stats", HTML),
        ("POST", "/_perf/", HTML),
        ("POST", "/_perf/reset", HTML),
        ("POST", f"/_perf{ASSETS_PATH}dashboard.js", []),
    ],
)
async def test_with_a_token_everything_else_still_needs_it(asgi, method, path, headers):
    mw = make_app(token="s3cret")
    await asgi(mw, "GET", "/hello/a")
    result = await asgi(mw, method, path, headers=headers, client=REMOTE)
    assert result.status == 401, (method, path)
    assert "routes" not in result.json() and "endpoints" not in result.json()
    assert mw.snapshot()["requests"] == 1  # a refused reset did not reset


async def test_with_the_token_the_json_index_answers(asgi):
    mw = make_app(token="s3cret")
    auth = [(b"authorization", b"Bearer s3cret")]
    result = await asgi(mw, "GET", "/_perf/", headers=auth, client=REMOTE)
    assert result.json()["endpoints"]["stats"] == "GET /_perf/stats"
    page = await asgi(mw, "GET", "/_perf/", headers=[*auth, *HTML], client=REMOTE)
    assert b'data-auth="token"' in page.body


@pytest.mark.parametrize("allowed", [False, True])
async def test_an_authorize_hook_decides_for_the_shell_too(asgi, allowed):
    seen: list[str] = []

    def decide(scope: dict[str, Any]) -> bool:
        seen.append(scope["path"])
        return allowed

    mw = make_app(token="s3cret", authorize=decide)
    for path in ("/_perf/", f"/_perf{ASSETS_PATH}dashboard.js"):
        result = await asgi(mw, "GET", path, headers=HTML, client=REMOTE)
        assert result.status == (200 if allowed else 403)
    assert seen == ["/_perf/", f"/_perf{ASSETS_PATH}dashboard.js"]
    if allowed:
        page = await asgi(mw, "GET", "/_perf/", headers=HTML, client=REMOTE)
        assert b'data-auth="none"' in page.body  # the hook, not a token, lets calls in


async def test_disabled_means_no_dashboard_either(asgi):
    mw = make_app(enabled=False)
    assert (await asgi(mw, "GET", "/_perf/", headers=HTML)).status == 404
