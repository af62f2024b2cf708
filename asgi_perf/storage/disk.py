"""Profiles on disk: how their files are named and written, and deleted.

Each retained profile becomes two files in ``profile_dir``: a ``.prof``
(pstats, for snakeviz and gprof2dot) and a ``.json`` beside it (the capture,
which every other format is rendered from), named
``{utc}-{METHOD}-{route-slug}-{ms}ms-{id}`` so a directory listing reads as a
list of requests. Writes are atomic; a disk error is reported, never raised.
"""

from __future__ import annotations

import contextlib
import json
import marshal
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from asgi_perf.capture import Capture, ProfileMeta
from asgi_perf.labels import view
from asgi_perf.storage.retention import REQUEST

_SLUG_RE = re.compile(r"[^a-z0-9]+")
_METHOD_RE = re.compile(r"[^A-Z0-9]+")
_SLUG_MAX = 60

Paths = tuple[Path, Path]


class ProfileDir:
    """Writes and deletes a store's files; ``on_error`` hears of every OSError."""

    def __init__(self, directory: Path, on_error: Callable[[OSError], None]) -> None:
        self.directory = directory
        self._on_error = on_error

    def write(self, capture: Capture) -> Paths | None:
        """Write the capture's files; their ``(.prof, .json)`` paths, or None on a disk error."""
        stem = file_stem(capture.meta)
        prof, data = self.directory / f"{stem}.prof", self.directory / f"{stem}.json"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            # The .json first: a .prof on disk always has its stacks beside it.
            atomic_write(data, capture_json(capture).encode())
            try:
                # What a download shows by default: the loop's idle left out.
                atomic_write(prof, marshal.dumps(view(capture).call_stats()))
            except BaseException:
                data.unlink(missing_ok=True)
                raise
        except OSError as exc:
            self._on_error(exc)
            return None
        return prof, data

    def delete(self, paths: Iterable[Path]) -> None:
        """Remove files (already gone is fine)."""
        for path in paths:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                self._on_error(exc)


def route_slug(route: str, method: str = "", *, fallback: str = "root") -> str:
    """``"GET /items/{item_id}"`` -> ``"items-item-id"``: safe in a file name.

    Lower case; every run of characters other than ``a-z0-9`` becomes one
    ``-``; no ``-`` at either end; at most 60 characters. A leading
    ``method`` word is dropped when ``method`` names it. ``fallback`` when
    nothing is left.
    """
    head, sep, rest = route.partition(" ")
    if sep and method and head.upper() == method.upper():
        route = rest
    slug = _SLUG_RE.sub("-", route.lower()).strip("-")[:_SLUG_MAX].rstrip("-")
    return slug or fallback


def file_stem(meta: ProfileMeta) -> str:
    """``{utc}-{METHOD}-{route-slug}-{ms}ms-{id}``."""
    start = meta.get("start")
    stamp = time.strftime(
        "%Y%m%dT%H%M%SZ", time.gmtime(meta["created"] if start is None else start)
    )
    route = meta.get("route")
    if meta["kind"] == REQUEST:
        # From the request line: only letters and digits may reach the file name.
        method = _METHOD_RE.sub("", str(meta.get("method") or "").upper())[:16] or "HTTP"
        slug = route_slug(str(route or ""), method)
    else:
        method = _METHOD_RE.sub("", str(meta["kind"]).upper())[:16] or "PROFILE"
        slug = route_slug(str(route)) if route else "process"
    return f"{stamp}-{method}-{slug}-{round(meta['duration_ms'])}ms-{meta['id']}"


def capture_json(capture: Capture) -> str:
    """The ``.json`` file's text: compact and ASCII-only, so its length is its size."""
    return json.dumps(capture.to_json(), separators=(",", ":"))


def atomic_write(path: Path, data: bytes) -> None:
    """Readers see the whole file or none: written aside, then renamed over."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with open(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
