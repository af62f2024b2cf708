"""Spec section 7: the one gate in front of ``/_perf`` and ``X-Perf-Profile``."""

from __future__ import annotations

import hmac
import inspect
import ipaddress
from collections.abc import Callable
from typing import Any

from starlette.responses import Response

from asgi_perf._types import Scope
from asgi_perf.api._http import error_response

# Headers a proxy adds with the address (or host) it forwards for. A proxy on
# the same host connects from loopback, and may be set to send only one of
# them: any one of them means the request came from elsewhere.
_FORWARDED = frozenset(
    {
        b"forwarded",
        b"x-real-ip",
        b"true-client-ip",
        b"x-client-ip",
        b"cf-connecting-ip",
        b"x-cluster-client-ip",
        b"fastly-client-ip",
        b"x-original-forwarded-for",
        b"via",
    }
)
# X-Forwarded, X-Forwarded-For, -Host, -Proto, -Port, -Server...
_FORWARDED_PREFIX = b"x-forwarded"


def is_forwarded(scope: Scope) -> bool:
    """Whether a header says a proxy forwarded the request."""
    for name, _ in scope.get("headers", ()):
        low = name.lower()
        if low in _FORWARDED or low.startswith(_FORWARDED_PREFIX):
            return True
    return False


def is_loopback(scope: Scope) -> bool:
    """A direct loopback client; a forwarding header means a proxy is in between."""
    client = scope.get("client")
    if not client or is_forwarded(scope):
        return False
    try:
        addr = ipaddress.ip_address(str(client[0]).split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def bearer_token(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


class Gate:
    """Who may read ``/_perf`` (and ask for profiles by header)."""

    def __init__(
        self,
        token: str | None,
        authorize: Callable[[Scope], Any] | None,
        on_error: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self._token = token.encode() if token else None
        self._authorize = authorize
        self._on_error = on_error

    async def allows(self, scope: Scope) -> bool:
        return await self.check(scope) is None

    async def check(self, scope: Scope) -> Response | None:
        """None when allowed, else the response to send."""
        if self._authorize is not None:
            try:
                allowed = self._authorize(scope)
                if inspect.isawaitable(allowed):
                    allowed = await allowed
            except Exception as exc:
                # A broken hook must fail closed, and not as a 500 page.
                if self._on_error is not None:
                    self._on_error("authorize", exc)
                return error_response(403, "forbidden: the authorize hook raised an error")
            return None if allowed else error_response(403, "forbidden by the authorize hook")
        if self._token is not None:
            given = bearer_token(scope)
            # latin-1 gives back the header's own bytes; the token is ASCII (config).
            if given is not None and hmac.compare_digest(given.encode("latin-1"), self._token):
                return None
            return error_response(
                401,
                "a valid 'Authorization: Bearer <token>' header is required",
                headers={"WWW-Authenticate": 'Bearer realm="asgi_perf"'},
            )
        if is_loopback(scope):
            return None
        return error_response(
            403, "asgi_perf answers loopback clients only; configure a token for remote access"
        )
