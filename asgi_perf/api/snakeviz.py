"""snakeviz's own viewer, rendered from the installed snakeviz package.

snakeviz normally runs its own tornado server; here its template is filled
in with the same helpers it uses (``snakeviz.stats``) and its static files
are served under the prefix, so a profile opens in the browser from the
app itself, behind the same gate. The page opens in place, under a policy
that runs its files and its own inline scripts only (see ``_csp``).
"""

from __future__ import annotations

import mimetypes
import pstats
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from starlette.responses import HTMLResponse, Response

from asgi_perf.api._csp import html_script_hashes, policy
from asgi_perf.api._http import SECURITY_HEADERS, BadRequest
from asgi_perf.capture import Capture, PstatsDict

# Its call-tree worker tries a CDN first ("in case snakeviz server is off"):
# a profile's page must not call out, and the CSP would refuse it anyway.
_CDN_SCRIPT = re.compile(r'"https://cdnjs\.cloudflare\.com/ajax/libs/[^"]*/([\w.-]+\.js)"')


class _RawStats:
    """What ``pstats.Stats`` accepts besides a file: an object with stats."""

    def __init__(self, stats: PstatsDict) -> None:
        self.stats = stats

    def create_stats(self) -> None:
        return None


@lru_cache(maxsize=1)
def _package_dir() -> Path:
    import snakeviz  # type: ignore[import-untyped]

    return Path(snakeviz.__file__).resolve().parent


def snakeviz_page(capture: Capture, profile_id: str, static_url: str, name: str) -> Response:
    """snakeviz's ``viz.html`` for one capture, its assets under ``static_url``.

    ``name``: the file name a browser saves the page as (``.html`` added).
    """
    try:
        from snakeviz.stats import json_stats, table_rows  # type: ignore[import-untyped]
        from tornado.template import Loader
    except ImportError:
        raise BadRequest(
            501, "the snakeviz package is not installed: pip install snakeviz"
        ) from None
    stats = pstats.Stats(_RawStats(capture.call_stats()))  # type: ignore[arg-type]
    loader = Loader(str(_package_dir() / "templates"))
    html: Any = loader.load("viz.html").generate(
        profile_name=f"{profile_id}.prof",
        table_rows=table_rows(stats),
        callees=json_stats(stats),
    )
    text = html.decode() if isinstance(html, bytes) else str(html)
    # Its template links its assets at the root of its own server.
    for quote in ('"', "'"):
        text = text.replace(f"{quote}/static/", f"{quote}{static_url}/")
    # Its own server answers /favicon.ico; here that would ask the app.
    text = text.replace("</head>", f'<link rel="icon" href="{static_url}/favicon.ico">\n</head>', 1)
    # Local copies instead, at the address its own fallback builds.
    text = _CDN_SCRIPT.sub(
        lambda m: f"event.data['url'] + \"{static_url}/vendor/{m.group(1)}\"", text
    )
    csp = policy(
        # snakeviz compiles its lodash templates (_.template) at load: eval.
        f"script-src 'self' 'unsafe-eval' {' '.join(html_script_hashes(text))}",
        # The call tree is built in a worker made from a blob: of the page's text.
        "worker-src blob:",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'none'",
    )
    headers = {
        **SECURITY_HEADERS,
        "Content-Disposition": f'inline; filename="{name}-snakeviz.html"',
        "Content-Security-Policy": csp,
    }
    return HTMLResponse(text, headers=headers)


@lru_cache(maxsize=1)
def _static_files() -> dict[str, Path]:
    """Every file snakeviz ships, by relative path: requests pick from this
    table, so nothing a client sends is ever turned into a filesystem path."""
    root = _package_dir() / "static"
    return {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}


def snakeviz_static(relative: str) -> Response:
    """One of snakeviz's static files."""
    target = _static_files().get(relative)
    if target is None:
        raise BadRequest(404, f"no snakeviz asset {relative!r}")
    media_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    return Response(
        target.read_bytes(),
        media_type=media_type,
        headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"},
    )
