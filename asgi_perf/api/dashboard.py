"""The dashboard at ``{prefix}/``: one page of plain HTML, JS and CSS from the package.

The page is a *shell*: markup, scripts and styles, with no number in it.
Everything it shows it fetches from the JSON endpoints, with the token when
one is configured, so the gate decides about every piece of data exactly as
it does for curl.

Who may load the shell, and why (spec section 7):

- No token and no ``authorize`` hook: the gate's loopback rule holds for the
  shell as for everything else. A remote browser gets the same 403 as curl;
  serving it a page whose every call would be refused helps nobody.
- An ``authorize`` hook: the hook decides for the shell too. It sees what a
  browser sends on its own (cookies, a session), so a hook that lets the
  browser in lets it in; one that wants a header can let the shell's paths
  through itself.
- A token (and no hook): a browser's first GET of ``{prefix}/`` cannot carry
  an ``Authorization`` header, so the shell and its assets are answered
  without one, to anyone: they are the package's own static files plus the
  prefix the visitor just typed, and the 401 of any data call already tells
  that asgi_perf is there. The page asks for the token once, keeps it in
  ``sessionStorage`` (never a URL, never a cookie: a cookie would ride along
  on every request of the app and make the gate open to cross-site forms),
  and sends it as ``Authorization: Bearer`` on every fetch. Every other path
  under the prefix still needs the token. Only ``GET``/``HEAD`` of ``/`` with
  ``Accept: text/html`` and of the fixed asset names pass: the JSON index
  stays behind the token.

The page's own Content-Security-Policy allows only its own scripts and
styles (no inline code), ``frame-ancestors 'none'`` keeps it out of other
sites' frames (no clickjacking of the reset button), and flame graphs are
shown from ``blob:`` images, fetched with the token.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from functools import cache
from importlib.resources import files

from starlette.requests import Request
from starlette.responses import Response

from asgi_perf._types import Scope
from asgi_perf.api._http import SECURITY_HEADERS, AddRoute, BadRequest
from asgi_perf.config import PerfConfig

ASSETS_PATH = "/dashboard/"
# Every file the page loads, by name: a request picks from this table, so
# nothing a client sends becomes a filesystem path.
_ASSETS: Mapping[str, str] = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "dom.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "routes.js": "text/javascript; charset=utf-8",
    "profiles.js": "text/javascript; charset=utf-8",
    "panels.js": "text/javascript; charset=utf-8",
    "db.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
_SHELL = "index.html"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        # Flame graphs come from fetch() (it carries the token) as blob: images.
        "img-src 'self' blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "frame-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
PAGE_HEADERS: Mapping[str, str] = {
    **SECURITY_HEADERS,
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}

BeforeGate = Callable[[Scope, str], Response | None]


@cache  # only names of the table (and the shell) reach it: bounded
def _read(name: str) -> bytes:
    return (files("asgi_perf.api") / "static" / "dashboard" / name).read_bytes()


def wants_html(scope: Scope) -> bool:
    """A browser navigating: the one case the index answers with the page."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"accept":
            return b"text/html" in value.lower()
    return False


def shell(scope: Scope, prefix: str, *, asks_token: bool) -> Response:
    """The page, told where the API is (``root_path`` + prefix) and whether to ask
    for a token before its first call (which spares a refused request)."""
    base = str(scope.get("root_path", "")) + prefix
    page = (
        _read(_SHELL)
        .decode()
        .replace("{{base}}", html.escape(base, quote=True))
        .replace("{{auth}}", "token" if asks_token else "none")
    )
    return Response(page, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


def asset(name: str) -> Response:
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise BadRequest(404, f"no dashboard file {name!r}")
    return Response(_read(name), media_type=media_type, headers=PAGE_HEADERS)


def open_shell(config: PerfConfig) -> BeforeGate | None:
    """What the app answers before the gate: the shell, only with a token and no
    hook (see the module's docstring). None: the gate decides everything; an
    answer of None sends that request on to the gate."""
    if config.token is None or config.authorize is not None:
        return None
    prefix = config.prefix

    def answer(scope: Scope, sub: str) -> Response | None:
        if scope["method"] not in ("GET", "HEAD"):
            return None
        if sub == "/":
            return shell(scope, prefix, asks_token=True) if wants_html(scope) else None
        if sub.startswith(ASSETS_PATH) and sub[len(ASSETS_PATH) :] in _ASSETS:
            return asset(sub[len(ASSETS_PATH) :])
        return None

    return answer


def add_dashboard_routes(add: AddRoute) -> None:
    """The page's assets behind the gate (without a token the gate lets the
    shell's visitors through by the same rule as its data)."""

    async def static(request: Request) -> Response:
        return asset(request.path_params["name"])

    add(ASSETS_PATH.rstrip("/") + r"/(?P<name>[^/]+)", {"GET": static})


def index_page(request: Request, config: PerfConfig) -> Response:
    """The index's answer to a browser."""
    asks = config.token is not None and config.authorize is None
    return shell(request.scope, config.prefix, asks_token=asks)
