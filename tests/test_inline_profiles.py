"""Issue #12, item 2: profiles open in place; snakeviz and speedscope from the app.

Real uvicorn servers (``live_server``), real httpx clients, real profilers.
Documents a browser shows (``.svg``, ``.html``) come inline under a policy
that runs only their own scripts; every other format, and any with
``?download=1``, is an attachment. The speedscope page carries its profile
and loads every file from the app, under the prefix, behind the gate.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
from cpu_work import CHUNKS, alpha_work
from fastapi import FastAPI

from asgi_perf import PerfMiddleware
from asgi_perf.renderers import RENDERERS

# The spec's list: shown in the browser by default.
INLINE = {"svg", "html"}
ATTACHED = sorted(set(RENDERERS) - INLINE)
PROFILE = {"X-Perf-Profile": "1"}
TOKEN = "s3cret-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
HASH_SOURCE = re.compile(r"^'sha256-([A-Za-z0-9+/]{43}=)'$")
CHROMIUM = "/usr/bin/chromium"


def build_app(**perf: Any) -> PerfMiddleware:
    app = FastAPI()

    @app.get("/alpha")
    async def alpha() -> dict[str, int]:
        return {"alpha": sum(alpha_work() for _ in range(CHUNKS))}

    return PerfMiddleware(app, engine="pyinstrument", **perf)


async def served(live_server: Any, **perf: Any) -> tuple[str, str]:
    """A live server and the id of one profiled ``GET /alpha``."""
    server = live_server(build_app(**perf))
    headers = {**PROFILE, **(BEARER if "token" in perf else {})}
    async with httpx.AsyncClient(base_url=server.url, trust_env=False) as client:
        response = await client.get("/alpha", headers=headers)
    assert response.status_code == 200, response.text
    return server.url, response.headers["x-perf-profile-id"]


def client(url: str, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, trust_env=False, timeout=30.0, **kwargs)


class Page(HTMLParser):
    """What a browser would load from an HTML page, and its inline scripts."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.loads: list[str] = []  # URLs of scripts, style sheets, icons, images
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self._script: dict[str, str | None] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "script":
            self._script = found
            self.scripts.append((found, ""))
        url = found.get("src") if tag in ("script", "img") else None
        if tag == "link" and found.get("rel") in ("stylesheet", "icon"):
            url = found.get("href")
        if url:
            self.loads.append(url)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._script = None

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            attrs, body = self.scripts[-1]
            self.scripts[-1] = (attrs, body + data)

    def inline_scripts(self) -> list[str]:
        return [body for attrs, body in self.scripts if "src" not in attrs]


def csp_of(response: httpx.Response) -> dict[str, list[str]]:
    """The policy as directive -> sources; fails on anything malformed."""
    header = response.headers["content-security-policy"]
    assert "\n" not in header and "," not in header, header
    policy: dict[str, list[str]] = {}
    for part in header.split(";"):
        name, *sources = part.split()
        assert re.fullmatch(r"[a-z-]+", name), name
        assert name not in policy, f"{name} twice in {header}"
        policy[name] = sources
    for sources in policy.values():
        for source in sources:
            quoted = source.startswith("'")
            assert not quoted or re.fullmatch(r"'[a-z-]+'|'sha256-[A-Za-z0-9+/=]+'", source), source
    assert policy["default-src"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"] and policy["form-action"] == ["'none'"]
    return policy


def sha256_source(script: str) -> str:
    digest = hashlib.sha256(script.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def assert_hashes(sources: list[str], scripts: list[str]) -> None:
    hashes = [s for s in sources if s.startswith("'sha256-")]
    for source in hashes:
        match = HASH_SOURCE.match(source)
        assert match and len(base64.b64decode(match.group(1))) == 32, source
    assert scripts, "a viewer without a script"
    assert set(hashes) == {sha256_source(s) for s in scripts}


def assert_inline(response: httpx.Response, filename: str) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"] == f'inline; filename="{filename}"'
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"


def assert_attachment(response: httpx.Response, extension: str) -> None:
    assert response.status_code == 200, response.text
    disposition = response.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="get-alpha-'), disposition
    assert disposition.endswith(f'{extension}"'), disposition
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "content-security-policy" not in response.headers


def assert_json_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["error"]
    return body


# --------------------------------------------------------------------------- formats


async def test_documents_open_in_place_and_other_formats_download(live_server):
    url, pid = await served(live_server)
    async with client(url) as c:
        for fmt, r in RENDERERS.items():
            response = await c.get(f"/_perf/profiles/{pid}.{fmt}")
            if fmt in INLINE:
                assert_inline(response, f"get-alpha-{pid}{r.file_extension}")
                assert response.headers["content-type"].startswith(r.media_type.split(";")[0])
                csp_of(response)
            else:
                assert_attachment(response, r.file_extension)


@pytest.mark.parametrize("value", ["1", "true", "yes", ""])
async def test_download_gives_the_attachment_for_every_format(live_server, value):
    url, pid = await served(live_server)
    async with client(url) as c:
        for fmt, r in RENDERERS.items():
            response = await c.get(f"/_perf/profiles/{pid}.{fmt}", params={"download": value})
            assert_attachment(response, r.file_extension)
            inline = await c.get(f"/_perf/profiles/{pid}.{fmt}", params={"download": "0"})
            # The same bytes either way: only the headers differ.
            assert inline.content == response.content, fmt
            assert inline.headers["content-disposition"].startswith(
                "inline" if fmt in INLINE else "attachment"
            )


async def test_download_must_be_a_yes_or_a_no(live_server):
    url, pid = await served(live_server)
    async with client(url) as c:
        for fmt in ("svg", "prof"):
            response = await c.get(f"/_perf/profiles/{pid}.{fmt}", params={"download": "maybe"})
            assert assert_json_error(response, 400)["parameter"] == "download"


async def test_a_merged_profile_opens_in_place_too(live_server):
    url, pid = await served(live_server)
    async with client(url) as c:
        page = await c.get("/_perf/profiles/merged.svg", params={"ids": pid})
        saved = await c.get("/_perf/profiles/merged.svg", params={"ids": pid, "download": "1"})
    assert_inline(page, "merged-ids.svg")
    assert saved.headers["content-disposition"] == 'attachment; filename="merged-ids.svg"'


async def test_the_flame_graph_policy_runs_its_own_script_and_nothing_else(live_server):
    url, pid = await served(live_server)
    async with client(url) as c:
        response = await c.get(f"/_perf/profiles/{pid}.svg")
    policy = csp_of(response)
    # What a browser hashes: the script element's text, CDATA markers gone.
    root = ET.fromstring(response.content)
    scripts = ["".join(el.itertext()) for el in root.iter("{http://www.w3.org/2000/svg}script")]
    assert_hashes(policy["script-src"], scripts)
    assert "'unsafe-inline'" not in policy["script-src"]
    assert policy["connect-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'self'"]


async def test_the_pyinstrument_page_policy_hashes_each_of_its_scripts(live_server):
    url, pid = await served(live_server)
    async with client(url) as c:
        response = await c.get(f"/_perf/profiles/{pid}.html")
    policy = csp_of(response)
    page = Page(response.text)
    assert len(page.inline_scripts()) >= 2  # the viewer, then the session it shows
    assert_hashes(policy["script-src"], page.inline_scripts())
    assert not {"'unsafe-inline'", "'unsafe-eval'"} & set(policy["script-src"])
    assert policy["connect-src"] == ["'none'"]
    assert page.loads == []  # self-contained


# --------------------------------------------------------------------------- snakeviz


async def test_the_snakeviz_page_opens_in_place_with_every_asset_from_the_app(live_server):
    url, pid = await served(live_server, prefix="/ops/perf")
    async with client(url) as c:
        response = await c.get(f"/ops/perf/profiles/{pid}/snakeviz")
        assert_inline(response, f"get-alpha-{pid}-snakeviz.html")
        page = Page(response.text)
        assert page.loads
        for src in page.loads:
            assert src.startswith("/ops/perf/snakeviz-static/"), src
            asset = await c.get(src)
            assert asset.status_code == 200, src
            assert asset.headers["x-content-type-options"] == "nosniff"
    # Its call-tree worker asked a CDN first; now only the app's copies.
    assert "cdnjs" not in response.text and "https://" not in "".join(page.inline_scripts())
    assert "/ops/perf/snakeviz-static/vendor/immutable.min.js" in response.text
    policy = csp_of(response)
    assert_hashes(policy["script-src"], page.inline_scripts())
    assert {"'self'", "'unsafe-eval'"} <= set(policy["script-src"])
    assert policy["worker-src"] == ["blob:"]
    assert policy["connect-src"] == ["'none'"]


# --------------------------------------------------------------------------- speedscope


async def speedscope_page(c: httpx.AsyncClient, path: str) -> tuple[httpx.Response, Page]:
    response = await c.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    return response, Page(response.text)


def embedded_profile(page: Page) -> dict[str, Any]:
    (data,) = [body for attrs, body in page.scripts if attrs.get("type") == "application/json"]
    assert "<" not in data  # escaped: the block cannot end early
    profile: dict[str, Any] = json.loads(data)
    return profile


async def test_speedscope_is_served_from_the_app_with_the_profile_in_the_page(live_server):
    url, pid = await served(live_server, prefix="/ops/perf")
    async with client(url) as c:
        response, page = await speedscope_page(c, f"/ops/perf/profiles/{pid}/speedscope")
        assert_inline(response, f"get-alpha-{pid}-speedscope.html")
        styles = []
        for src in page.loads:
            # Every asset from the app, under the prefix: none from elsewhere.
            assert src.startswith("/ops/perf/speedscope-static/"), src
            asset = await c.get(src)
            assert asset.status_code == 200, src
            assert asset.headers["x-content-type-options"] == "nosniff"
            if src.endswith(".js"):
                assert asset.headers["content-type"].startswith("text/javascript")
            if src.endswith(".css"):
                assert asset.headers["content-type"].startswith("text/css")
                styles.append((src, asset.text))
        assert styles
        for src, text in styles:
            for ref in re.findall(r"url\(\"?([^\")]+)\"?\)", text):
                font = await c.get(urljoin(src, ref))
                assert font.status_code == 200, ref
                assert font.headers["content-type"] == "font/woff2"
        # The loader runs before speedscope, which reads the hash as it starts.
        names = [(attrs.get("src") or "").rsplit("/", 1)[-1] for attrs, _ in page.scripts]
        loader = names.index("asgi-perf-loader.js")
        viewer = next(i for i, name in enumerate(names) if name.startswith("speedscope-"))
        assert loader < viewer
        download = await c.get(f"/ops/perf/profiles/{pid}.speedscope.json")

    profile = embedded_profile(page)
    assert profile == download.json()
    assert "speedscope" in profile["$schema"]
    (sampled,) = profile["profiles"]
    assert sampled["type"] == "sampled" and sampled["unit"] == "seconds"
    assert len(sampled["samples"]) == len(sampled["weights"]) > 0
    frames = profile["shared"]["frames"]
    assert all(0 <= i < len(frames) for stack in sampled["samples"] for i in stack)
    assert any(f["name"] == "alpha_work" for f in frames)

    policy = csp_of(response)
    assert policy["script-src"] == ["'self'", "'wasm-unsafe-eval'"]
    assert policy["connect-src"] == ["blob:"]
    assert not {s for v in policy.values() for s in v if s.startswith("http")}


async def test_speedscope_answers_for_latest_and_lists_its_link(live_server):
    url, pid = await served(live_server)
    async with client(url) as c:
        _, page = await speedscope_page(c, "/_perf/profiles/latest/speedscope")
        meta = (await c.get(f"/_perf/profiles/{pid}")).json()
    assert embedded_profile(page)["name"] == "GET /alpha (pyinstrument)"
    assert meta["links"]["speedscope"] == f"/_perf/profiles/{pid}/speedscope"
    assert meta["links"]["snakeviz"] == f"/_perf/profiles/{pid}/snakeviz"


async def test_speedscope_static_serves_its_files_and_nothing_else(live_server):
    url, _ = await served(live_server)
    async with client(url) as c:
        licence = await c.get("/_perf/speedscope-static/LICENSE")
        assert licence.status_code == 200 and "Jamie Wong" in licence.text
        for name in ("index.html", "README.md", "nope.js", "..%2FLICENSE", "%2e%2e"):
            response = await c.get(f"/_perf/speedscope-static/{name}")
            assert_json_error(response, 404)
        for path in ("/_perf/speedscope-static/../speedscope.py", "/_perf/speedscope-static/a/b"):
            assert_json_error(await c.get(path), 404)


# --------------------------------------------------------------------------- the gate


async def test_with_a_token_every_viewer_path_needs_it(live_server):
    url, pid = await served(live_server, token=TOKEN)
    paths = [
        f"/_perf/profiles/{pid}.svg",
        f"/_perf/profiles/{pid}.html",
        f"/_perf/profiles/{pid}/snakeviz",
        f"/_perf/profiles/{pid}/speedscope",
        "/_perf/speedscope-static/asgi-perf-loader.js",
        "/_perf/snakeviz-static/snakeviz.js",
    ]
    async with client(url) as c:
        for path in paths:
            denied = await c.get(path)
            assert_json_error(denied, 401)
            assert denied.headers["www-authenticate"].startswith("Bearer")
            wrong = await c.get(path, headers={"Authorization": "Bearer nope"})
            assert_json_error(wrong, 401)
            assert (await c.get(path, headers=BEARER)).status_code == 200, path


async def test_with_a_token_the_speedscope_page_needs_no_second_request(live_server):
    url, pid = await served(live_server, token=TOKEN)
    async with client(url, headers=BEARER) as c:
        response, page = await speedscope_page(c, f"/_perf/profiles/{pid}/speedscope")
    # The profile is in the page: speedscope never fetches /_perf, so its
    # fetch needs no header, and no token is ever put in a URL.
    assert any(f["name"] == "alpha_work" for f in embedded_profile(page)["shared"]["frames"])
    assert TOKEN not in response.text
    assert ".speedscope.json" not in response.text
    assert "'self'" not in csp_of(response)["connect-src"]


async def test_remote_clients_get_403_on_the_new_paths(asgi):
    app = build_app()
    for path in ("/_perf/profiles/latest/speedscope", "/_perf/speedscope-static/LICENSE"):
        result = await asgi(app, "GET", path, client=("203.0.113.5", 1234))
        assert result.status == 403, result.body


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/_perf/profiles/zzz/speedscope", 400),
        ("/_perf/profiles/0123456789abcdef/speedscope", 404),
        ("/_perf/profiles/zzz/snakeviz", 400),
        ("/_perf/profiles/0123456789abcdef/snakeviz", 404),
        ("/_perf/profiles/zzz.svg", 400),
        ("/_perf/profiles/0123456789abcdef.html", 404),
        ("/_perf/profiles/0123456789abcdef.svg?download=1", 404),
        ("/_perf/profiles/{pid}/speedscope?download=1", 400),
        ("/_perf/profiles/{pid}/speedscope?route=GET+%2Fnope", 400),  # not attributed
        ("/_perf/profiles/{pid}.nope?download=1", 400),
    ],
)
async def test_bad_requests_are_json_errors(live_server, path, status):
    url, pid = await served(live_server)
    async with client(url) as c:
        assert_json_error(await c.get(path.format(pid=pid)), status)


# --------------------------------------------------------------------------- a browser


def browser() -> Any:
    """Playwright's sync API, when it and Debian's Chromium are installed."""
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    return pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (the dev extra)"
    )


@pytest.mark.slow
def test_the_viewers_run_in_chromium_without_errors_or_outside_requests(live_server):
    sync_api = browser()
    server = live_server(build_app(token=TOKEN))
    with httpx.Client(base_url=server.url, trust_env=False) as c:
        pid = c.get("/alpha", headers={**PROFILE, **BEARER}).headers["x-perf-profile-id"]
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM)
        # Something must send the token with every request (as a proxy or a
        # header extension would): the page's own files are behind the gate.
        context = chromium.new_context(extra_http_headers=BEARER)
        page = context.new_page()
        errors: list[str] = []
        requests: list[str] = []
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.on("response", lambda r: r.status >= 400 and errors.append(f"{r.status} {r.url}"))

        page.goto(f"{server.url}/_perf/profiles/{pid}/speedscope")
        # speedscope names the tab after the profile it imported.
        page.wait_for_function("document.title === 'GET /alpha (pyinstrument) - speedscope'")
        assert page.locator("canvas").count() > 0
        # The loader put the address back as it was.
        assert page.url == f"{server.url}/_perf/profiles/{pid}/speedscope"

        # The other documents: their scripts run under their policies.
        page.goto(f"{server.url}/_perf/profiles/{pid}.svg")
        page.hover("#f g rect")
        assert "ms" in page.evaluate("document.getElementById('s').textContent")
        page.goto(f"{server.url}/_perf/profiles/{pid}.html")
        page.wait_for_function("document.getElementById('app').children.length > 0")
        page.goto(f"{server.url}/_perf/profiles/{pid}/snakeviz")
        page.wait_for_function("document.querySelectorAll('#chart svg rect').length > 1")
        context.close()
        chromium.close()

    assert errors == []
    outside = [u for u in requests if not u.startswith((server.url, "blob:", "data:"))]
    assert outside == []
    assert not [u for u in requests if u.endswith(".speedscope.json")]
