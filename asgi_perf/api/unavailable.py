"""``/_perf`` when asgi_perf could not start: 503, with the error that stopped it.

A configuration error must not take the app down (spec 7), so the middleware
steps aside and this small app answers under its prefix instead, for
whoever looks at ``/_perf`` to see why it is empty. The gate still decides
who may read the error: it can name files and settings.
"""

from __future__ import annotations

from asgi_perf._types import ASGIApp, Receive, Scope, Send
from asgi_perf.api._http import error_response
from asgi_perf.api.gate import Gate


def make_unavailable_app(error: str, option: str | None, gate: Gate) -> ASGIApp:
    """An ASGI app answering every request with 503 JSON naming ``error``.

    ``error`` is the configuration error's message, ``option`` the option it
    names (``None`` when it names none).
    """

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        response = await gate.check(scope)
        if response is None:
            response = error_response(
                503,
                f"asgi_perf is not running: {error}",
                option=option,
                reason=error,
                # What the operator can do about it, where they look.
                fix=(
                    "correct the option and restart; strict=True (or "
                    "ASGI_PERF_STRICT=1) makes such an error stop the app at start-up"
                ),
            )
        await response(scope, receive, send)

    return app
