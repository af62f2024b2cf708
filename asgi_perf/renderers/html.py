"""``.html``: pyinstrument's own interactive viewer, one self-contained page."""

from __future__ import annotations

import sys
import time
from typing import Any

from asgi_perf.capture import Capture
from asgi_perf.renderers._tree import merge
from asgi_perf.renderers.base import NotRenderable

# pyinstrument's viewer asks Google Fonts for its typefaces when it opens; a
# profile of a private app should not call out, and system fonts do.
_FONTS_URL = (
    "https://fonts.googleapis.com/css?family=Source+Code+Pro:400,600|Source+Sans+Pro:400,600"
    "&display=swap"
)
_MIN_SHARE = 0.001
# pyinstrument's frame identifiers: NUL between fields, \x01 before markers.
_SEPARATORS = str.maketrans({"\x00": " ", "\x01": " "})
_DATA_START = "const sessionData = "
_DATA_END = "pyinstrumentHTMLRenderer.render("


class HTMLRenderer:
    """pyinstrument's viewer: the engine's own session when the capture has one.

    Any other capture (cProfile, yappi, a window, a merge) is rebuilt as a
    session from its stacks, so the call tree is the same; only the
    timeline's sample order is not kept.
    """

    format = "html"
    file_extension = ".html"
    media_type = "text/html; charset=utf-8"

    def render(self, capture: Capture) -> bytes:
        try:
            from pyinstrument.renderers import HTMLRenderer as ViewerRenderer
            from pyinstrument.session import Session
        except ImportError:
            raise NotRenderable(
                "the html format is pyinstrument's viewer: pip install pyinstrument"
            ) from None
        data = capture.session if capture.session is not None else _session_json(capture)
        try:
            session = Session.from_json(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise NotRenderable(f"unreadable pyinstrument session: {exc}") from None
        page = ViewerRenderer().render(session)
        return _harden(page).encode("utf-8", "replace")


def _session_json(capture: Capture) -> dict[str, Any]:
    """What ``Session.to_json()`` would hold for these stacks."""
    # pyinstrument makes an object per tree node and the page carries them
    # all: a busy window's 20 000 stacks took 13 s and 71 MB. Paths under
    # 0.1 % are cut, which is what the viewer's call-stack view hides by
    # default anyway ("remove irrelevant", threshold 0.001).
    tree = merge(capture.stacks)
    stacks = tree.pruned_stacks(tree.total * _MIN_SHARE)
    # Sorted so stacks sharing a prefix are neighbours: pyinstrument builds
    # its tree by extending the previous record's path.
    records = sorted(
        ([_identifier(f.function, f.file, f.line) for f in stack], seconds)
        for stack, seconds in stacks.items()
    )
    meta = capture.meta
    interval = float(meta.get("interval_s") or 0.001)
    return {
        "frame_records": records,
        "start_time": float(meta.get("start") or meta.get("created") or time.time()),
        "duration": capture.duration_s,
        "min_interval": interval,
        "max_interval": interval,
        "sample_count": int(meta.get("samples") or len(records)),
        # Matches nothing, so pyinstrument keeps the tree's stem as it is.
        "start_call_stack": ["asgi_perf"],
        "target_description": _description(capture),
        "cpu_time": 0.0,
        "sys_path": sys.path,
        "sys_prefixes": [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix],
    }


def _identifier(function: str, file: str, line: int) -> str:
    return f"{function.translate(_SEPARATORS)}\x00{file.translate(_SEPARATORS)}\x00{line}"


def _description(capture: Capture) -> str:
    meta = capture.meta
    parts = [str(meta.get("route") or meta.get("kind") or "profile"), capture.engine]
    if not capture.exact_stacks:
        parts.append("stacks inferred from call counts")
    return " · ".join(parts)


def _harden(page: str) -> str:
    """Keep the page offline and its embedded data from closing the script.

    The session JSON goes into an inline ``<script>`` as is, and a function
    or file name holding ``</script>`` would end it early; JSON lets ``<``
    be written ``\\u003c`` inside strings, the only place it can occur.
    """
    page = page.replace(_FONTS_URL, "data:text/css,")
    start = page.find(_DATA_START)
    end = page.rfind(_DATA_END)
    if start < 0 or end < start:
        return page
    start += len(_DATA_START)
    return page[:start] + page[start:end].replace("<", "\\u003c") + page[end:]
