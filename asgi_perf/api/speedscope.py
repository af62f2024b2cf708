"""speedscope's viewer, from the copy vendored in ``static/speedscope/``.

speedscope loads a profile from ``#profileURL=``, which it fetches; a
browser sends no ``Authorization`` header with that fetch, so behind a token
it would get a 401. Instead the profile travels in the page itself, as a
JSON data block, and a small loader of ours (``asgi-perf-loader.js``) hands
it to speedscope as a ``blob:`` URL: one request, which the gate has already
let through, and no token in any URL. The viewer's own files are served
under the prefix, behind the same gate; nothing comes from elsewhere.
"""

from __future__ import annotations

import html
import re
from functools import lru_cache
from pathlib import Path

from starlette.responses import HTMLResponse, Response

from asgi_perf.api._csp import policy
from asgi_perf.api._http import SECURITY_HEADERS, BadRequest

_DIR = Path(__file__).resolve().parent / "static" / "speedscope"
# The page is rendered from index.html; README.md is ours, for people.
_NOT_SERVED = frozenset({"index.html", "README.md"})
_LOADER = "asgi-perf-loader.js"
_DATA_ID = "asgi-perf-profile"
_ASSET_ATTR = re.compile(r'\b(src|href)="([^"/:?#]+)"')
_SCRIPT_TAG = re.compile(r"<script\b[^>]*\bsrc=")
# Named here, not guessed: with nosniff a script or style sheet served under
# another type (the system's table may say text/plain) is refused.
_MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".woff2": "font/woff2",
    ".png": "image/png",
    ".ico": "image/x-icon",
}

# Its scripts and styles are files under the prefix ('self'); it reads the
# profile from a blob: URL made in the page; aphrodite injects <style> tags.
CSP = policy(
    # Its C++ demangler is WebAssembly, compiled from the script at start-up;
    # this allows compiling WebAssembly, not eval() of strings.
    "script-src 'self' 'wasm-unsafe-eval'",
    "style-src 'self' 'unsafe-inline'",
    "font-src 'self'",
    "img-src 'self'",
    "connect-src blob:",
)


@lru_cache(maxsize=1)
def _assets() -> dict[str, Path]:
    """Every file the viewer may ask for, by name: requests pick from this
    table, so nothing a client sends is ever turned into a filesystem path."""
    return {p.name: p for p in _DIR.iterdir() if p.is_file() and p.name not in _NOT_SERVED}


@lru_cache(maxsize=1)
def _template() -> str:
    return (_DIR / "index.html").read_text("utf-8")


def speedscope_page(profile_json: bytes, title: str, static_url: str, name: str) -> Response:
    """speedscope's ``index.html`` with ``profile_json`` (speedscope's format) in it.

    ``name``: the file name a browser saves the page as (``.html`` added).
    """
    assets = _assets()

    def relocate(match: re.Match[str]) -> str:
        attr, file = match.groups()
        # Only the files vendored here; anything else is left as it is (and
        # fails, which the tests would see).
        return f'{attr}="{static_url}/{file}"' if file in assets else match.group(0)

    text = _ASSET_ATTR.sub(relocate, _template())
    text = text.replace("<title>speedscope</title>", f"<title>{html.escape(title)}</title>", 1)
    # JSON has "<" only inside strings, where \u003c means the same: the data
    # block can then never hold "</script" and end early.
    data = profile_json.decode("utf-8", "replace").replace("<", "\\u003c")
    ours = (
        f'<script type="application/json" id="{_DATA_ID}">{data}</script>\n'
        f'    <script src="{static_url}/{_LOADER}"></script>\n    '
    )
    # Before speedscope's own script: it reads the URL's hash as it starts.
    found = _SCRIPT_TAG.search(text)
    if found is None:
        raise RuntimeError("the vendored speedscope index.html has no <script src>")
    text = text[: found.start()] + ours + text[found.start() :]
    headers = {
        **SECURITY_HEADERS,
        "Content-Disposition": f'inline; filename="{name}-speedscope.html"',
        "Content-Security-Policy": CSP,
    }
    return HTMLResponse(text, headers=headers)


def speedscope_static(name: str) -> Response:
    """One of the viewer's files."""
    target = _assets().get(name)
    if target is None:
        raise BadRequest(404, f"no speedscope asset {name!r}")
    media_type = _MEDIA_TYPES.get(target.suffix, "text/plain; charset=utf-8")
    return Response(
        target.read_bytes(),
        media_type=media_type,
        headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"},
    )
