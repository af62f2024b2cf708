"""What the profile and window endpoints share: finding a profile, sending a file.

Formats come from ``asgi_perf.renderers``: headers are derived from each
renderer's attributes, never from the format's name. A document a browser
shows (HTML, SVG) opens in place, under a policy that runs only its own
scripts; every other file, and any with ``?download=1``, is an attachment.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from asgi_perf.api._csp import document_policy
from asgi_perf.api._http import SECURITY_HEADERS, BadRequest, query_bool
from asgi_perf.capture import Capture, ProfileMeta
from asgi_perf.labels import NotAttributed, view
from asgi_perf.renderers import RENDERERS, NotRenderable, Renderer
from asgi_perf.storage import ProfileStore, is_profile_id, route_slug

_ALIASES = ("latest", "slowest")
# Media types a browser displays rather than saves: these open in place.
_VIEWABLE = frozenset({"text/html", "image/svg+xml"})


class Downloads:
    """Profiles of one store, as JSON descriptions and rendered files."""

    def __init__(self, store: ProfileStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix

    def links(self, profile_id: str) -> dict[str, str]:
        base = f"{self.prefix}/profiles/{profile_id}"
        out = {fmt: f"{base}{r.file_extension}" for fmt, r in RENDERERS.items()}
        out["snakeviz"] = f"{base}/snakeviz"
        out["speedscope"] = f"{base}/speedscope"
        out["routes"] = f"{base}/routes"
        return out

    def described(self, meta: ProfileMeta) -> dict[str, Any]:
        return {"schema": 1, **meta, "links": self.links(meta["id"])}

    def resolve(self, request: Request, ref: str) -> str:
        """A profile id from an id, ``latest`` or ``slowest`` (``?route=``)."""
        store = self.store
        route = request.query_params.get("route")
        if ref in _ALIASES:
            found = store.latest(route) if ref == "latest" else store.slowest(route)
            if found is None:
                where = f" for route {route!r}" if route else ""
                raise BadRequest(404, f"no profiles{where} yet")
            return found
        if not is_profile_id(ref):
            raise BadRequest(400, f"{ref!r} is not a profile id (16 hex digits, latest or slowest)")
        try:
            store.meta(ref)
        except KeyError:
            raise BadRequest(404, f"no profile {ref} (evicted, or never stored)") from None
        return ref

    async def render(self, capture: Capture, r: Renderer, cached: str | None) -> bytes:
        """``capture`` as ``r``'s bytes; ``cached``: the stored profile it is, rendered once."""
        # A long window takes a while to render: not on the event loop.
        try:
            if cached:
                return await run_in_threadpool(self.store.rendered, cached, r.format, r.render)
            return await run_in_threadpool(r.render, capture)
        except NotRenderable as exc:
            raise BadRequest(400, str(exc), parameter="format") from None

    async def send(
        self,
        capture: Capture,
        r: Renderer,
        name: str,
        cached: str | None,
        *,
        profile_id: str | None = None,
        inline: bool = False,
    ) -> Response:
        """``capture`` rendered by ``r``, as a file called ``name``.

        ``cached``: the id of the stored profile ``capture`` is, whose render
        the store caches; ``profile_id`` names a view of one in the headers.
        ``inline``: shown in the browser (see :func:`opens_in_place`), not saved.
        """
        profile_id = cached or profile_id
        body = await self.render(capture, r, cached)
        filename = f"{name}{r.file_extension}"
        headers = {**SECURITY_HEADERS}
        if inline:
            headers["Content-Disposition"] = f'inline; filename="{filename}"'
            # Hashing a multi-megabyte page is not work for the event loop either.
            headers["Content-Security-Policy"] = await run_in_threadpool(
                document_policy, body, r.media_type
            )
        else:
            headers["Content-Disposition"] = f'attachment; filename="{filename}"'
        if profile_id:
            headers["X-Perf-Profile-Id"] = profile_id
        return Response(body, media_type=r.media_type, headers=headers)

    async def send_stored(
        self, profile_id: str, r: Renderer, request: Request, *, inline: bool = False
    ) -> Response:
        """A stored profile, or the view of it ``route=`` and ``idle=`` ask for."""
        meta = self.store.meta(profile_id)
        capture = self.store.get(profile_id)
        viewed = view_of(capture, request, profile_id)
        name = download_name(meta)
        if viewed is capture:
            # The whole profile: rendered once, then served from the cache.
            return await self.send(capture, r, name, profile_id, inline=inline)
        return await self.send(viewed, r, name, None, profile_id=profile_id, inline=inline)


def opens_in_place(request: Request, r: Renderer) -> bool:
    """Whether ``r``'s file is shown in the browser: a document, and no ``?download=1``."""
    # Checked for every format, so download=maybe is a 400 wherever it is sent.
    download = query_bool(request, "download")
    essence = r.media_type.partition(";")[0].strip().lower()
    return essence in _VIEWABLE and not download


def view_of(capture: Capture, request: Request, what: str) -> Capture:
    """``capture`` as ``?route=`` and ``?idle=1`` ask: one route's samples, idle in."""
    route = request.query_params.get("route")
    try:
        return view(capture, route=route, idle=query_bool(request, "idle"))
    except NotAttributed as exc:
        raise BadRequest(400, f"{what}: {exc}", parameter="route") from None
    except KeyError:
        raise BadRequest(404, f"{what} has no samples of route {route!r}") from None


def renderer(fmt: str) -> Renderer:
    found = RENDERERS.get(fmt)
    if found is None:
        known = ", ".join(sorted(RENDERERS))
        raise BadRequest(400, f"unknown format {fmt!r} (formats: {known})", parameter="format")
    return found


def download_name(meta: ProfileMeta) -> str:
    """The download name of a profile: its route's slug and its id."""
    return f"{route_slug(str(meta.get('route') or 'profile'))}-{meta['id']}"
