"""Route keys: ``METHOD template`` from what the framework matched.

The only module that knows framework internals. Starlette's router writes the
matched route object into ``scope["route"]`` and grows ``scope["root_path"]``
for every ``Mount`` it enters; newer FastAPI keeps routes of included routers
unprefixed and records the effective (prefixed) one in ``scope["fastapi"]``.
Raw paths never become keys: what cannot be resolved to a template is
``<unmatched>``, and a mount prefix that matches no known mount becomes
``{mount}``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from asgi_perf._types import Scope

UNMATCHED = "<unmatched>"
OTHER = "<other>"
FASTAPI_CONTEXT_KEY = "effective_route_context"
HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}
)
_PARAM_RE = re.compile(r"{([^{}:]+)(?::[^{}]*)?}")
# Distinct concrete mount prefixes remembered; templated mounts could
# otherwise grow this without bound.
_MAX_PREFIX_CACHE = 4096


def route_template(scope: Scope, entry_root_path: str, mounts: MountIndex) -> str | None:
    """The matched template (with mount prefixes), or None when nothing matched."""
    route = scope.get("route")
    if route is None:
        return None
    fastapi_scope = scope.get("fastapi")
    template: str | None = None
    if fastapi_scope is not None:
        context = fastapi_scope.get(FASTAPI_CONTEXT_KEY)
        if context is not None and context.original_route is route:
            template = context.path_format
    if template is None:
        found = getattr(route, "path_format", None)
        if not isinstance(found, str):
            return None
        template = found
    root_path = scope.get("root_path", "")
    if root_path == entry_root_path:
        return template
    # Inside one or more mounts. A Mount left as the route means the mounted
    # app was a router that matched nothing (a 404 in the sub-app), unless the
    # mount wraps a plain ASGI app (StaticFiles): then the mount is the route.
    is_mount = hasattr(route, "routes") and hasattr(route, "app")
    if is_mount:
        if route.routes:
            return None
        return mounts.resolve(root_path[len(entry_root_path) :], scope) + "/{path}"
    return mounts.resolve(root_path[len(entry_root_path) :], scope) + template


def route_path(scope: Scope) -> str:
    """The path without the server's root path (``uvicorn --root-path``)."""
    path: str = scope["path"]
    root_path = scope.get("root_path")
    if root_path and path.startswith(root_path):
        return path[len(root_path) :]
    return path


class RouteKeys:
    """``METHOD template`` of a finished request, memoised per matched route.

    The memo is keyed by the identity of what the framework matched (the
    FastAPI effective route, else the route), the method and the root path,
    which together fix the template; it stops growing at a bound, after
    which keys are still right, only not memoised. ``key`` is the one
    function that names a request; with a ``route_key`` option it is that
    callable (guarded) instead, chosen once here.
    """

    def __init__(
        self,
        route_key: Callable[[Scope], str] | None = None,
        on_error: Callable[[str, BaseException], None] | None = None,
        max_entries: int = 10_000,
    ) -> None:
        self._memo: dict[tuple[int, str, str], str] = {}
        self._memo_get = self._memo.get
        # The objects behind the memo's ids, kept so that no id is reused.
        self._held: list[object] = []
        self._max = max_entries
        self._mounts = MountIndex()
        self._custom = route_key
        self._on_error = on_error
        if route_key is not None:
            self.key = self._custom_key  # type: ignore[method-assign]

    def key(self, scope: Scope) -> str:
        """The key of a request the app has handled (routing wrote the scope)."""
        route = scope.get("route")
        if route is None:
            return UNMATCHED
        fastapi_scope = scope.get("fastapi")
        if fastapi_scope:
            context = fastapi_scope.get(FASTAPI_CONTEXT_KEY)
            if context is not None and context.original_route is route:
                route = context  # what names the route under FastAPI
        hit = self._memo_get((id(route), scope["method"], scope.get("root_path", "")))
        if hit is not None:
            return hit
        # Starlette's mounts keep the root path they started from; without a
        # mount the root path is still the one the middleware saw.
        return self._resolve(scope, route, scope.get("app_root_path", scope.get("root_path", "")))

    def _custom_key(self, scope: Scope) -> str:
        try:
            return str(self._custom(scope)) or UNMATCHED  # type: ignore[misc]
        except Exception as exc:
            if self._on_error is not None:
                self._on_error("route_key", exc)
            return UNMATCHED

    def _resolve(self, scope: Scope, ident: object, entry_root_path: str) -> str:
        """Compute and memoise the key of ``scope`` (the slow path)."""
        template = route_template(scope, entry_root_path, self._mounts)
        method = scope["method"]
        # A client may send any token as a method (a 405 still matches the
        # path); only the registered ones may each name a route.
        if template is None or method not in HTTP_METHODS:
            key = UNMATCHED
        else:
            key = f"{method} {template}"
        if len(self._memo) < self._max:
            self._memo[(id(ident), method, scope.get("root_path", ""))] = key
            self._held.append(ident)
        return key


class MountIndex:
    """Maps a concrete mount prefix (``/tenants/acme``) to its template."""

    def __init__(self) -> None:
        self._cache: dict[str, str] = {}
        self._patterns: list[tuple[re.Pattern[str], str]] | None = None
        self._router: object = None

    def resolve(self, concrete: str, scope: Scope) -> str:
        cached = self._cache.get(concrete)
        if cached is not None:
            return cached
        router = scope.get("router")
        if self._patterns is None or router is not self._router:
            self._router = router
            self._patterns = list(_walk_mounts(getattr(router, "routes", ()), ""))
        template = "{mount}"
        for pattern, tmpl in self._patterns:
            if pattern.fullmatch(concrete):
                template = tmpl
                break
        if len(self._cache) < _MAX_PREFIX_CACHE:
            self._cache[concrete] = template
        return template


def _walk_mounts(routes: Any, prefix: str) -> Any:
    """Every Mount under ``routes`` as (regex of its concrete prefix, template)."""
    for route in routes:
        if not (hasattr(route, "routes") and hasattr(route, "app")):
            continue
        path = getattr(route, "path", None)
        if not isinstance(path, str):
            # A Host (or another router-like route) adds no path of its own.
            yield from _walk_mounts(route.routes, prefix)
            continue
        template = prefix + _PARAM_RE.sub(r"{\1}", path)
        yield _template_regex(template), template
        yield from _walk_mounts(route.routes, template)


def _template_regex(template: str) -> re.Pattern[str]:
    parts = _PARAM_RE.split(template)
    # split() alternates literal text and parameter names.
    return re.compile("".join(re.escape(p) if i % 2 == 0 else "[^/]+" for i, p in enumerate(parts)))
