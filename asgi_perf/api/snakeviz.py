"""snakeviz's own viewer, rendered from the installed snakeviz package.

snakeviz normally runs its own tornado server; here its template is filled
in with the same helpers it uses (``snakeviz.stats``) and its static files
are served under the prefix, so a profile opens in the browser from the
app itself, behind the same gate.
"""

from __future__ import annotations

import mimetypes
import pstats
from functools import lru_cache
from pathlib import Path
from typing import Any

from starlette.responses import HTMLResponse, Response

from asgi_perf.api._http import SECURITY_HEADERS, BadRequest
from asgi_perf.capture import Capture, PstatsDict


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


def snakeviz_page(capture: Capture, profile_id: str, static_url: str) -> Response:
    """snakeviz's ``viz.html`` for one capture, its assets under ``static_url``."""
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
    return HTMLResponse(text, headers=SECURITY_HEADERS)


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
