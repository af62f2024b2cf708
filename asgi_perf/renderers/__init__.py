"""Every output format, one renderer each, found by name.

``RENDERERS`` maps a format name (as in ``/profiles/{id}.{format}``) to its
renderer. HTTP code takes ``file_extension`` and ``media_type`` from the
renderer and never looks at the name, so N engines and M formats are N + M
pieces of code.
"""

from __future__ import annotations

from asgi_perf.capture import Capture
from asgi_perf.renderers.base import NotRenderable, Renderer, UnknownFormat
from asgi_perf.renderers.capture_json import CaptureJSONRenderer
from asgi_perf.renderers.collapsed import CollapsedRenderer
from asgi_perf.renderers.flamegraph import FlameGraphRenderer
from asgi_perf.renderers.html import HTMLRenderer
from asgi_perf.renderers.pprof import PprofRenderer
from asgi_perf.renderers.pstats import PstatsRenderer
from asgi_perf.renderers.speedscope import SpeedscopeRenderer

__all__ = ["RENDERERS", "NotRenderable", "Renderer", "UnknownFormat", "render", "renderer_for"]

RENDERERS: dict[str, Renderer] = {
    r.format: r
    for r in (
        PstatsRenderer(),
        FlameGraphRenderer(),
        HTMLRenderer(),
        SpeedscopeRenderer(),
        CollapsedRenderer(),
        PprofRenderer(),
        CaptureJSONRenderer(),
    )
}


def renderer_for(fmt: str) -> Renderer:
    """The renderer of ``fmt``; :class:`UnknownFormat` names the formats there are."""
    try:
        return RENDERERS[fmt]
    except KeyError:
        known = ", ".join(RENDERERS)
        raise UnknownFormat(f"unknown profile format {fmt!r} (formats: {known})") from None


def render(capture: Capture, fmt: str) -> bytes:
    """``capture`` as a ``fmt`` file (:class:`NotRenderable` if it cannot be one)."""
    return renderer_for(fmt).render(capture)
