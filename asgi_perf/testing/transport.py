"""An httpx transport that runs an ASGI app, lifespan included, on a loop of its own.

Used by ``asgi_perf.testing.PerfTestClient``. Starlette's ``TestClient`` does
much the same, but its client address (``/_perf`` answers loopback clients
only) and its HTTP client library differ across the Starlette releases
asgi_perf supports; this one is the same everywhere.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import Future
from typing import Any

import anyio
import httpx
from anyio.abc import TaskStatus
from anyio.from_thread import BlockingPortal

from asgi_perf._types import ASGIApp, Message

LOOPBACK = ("127.0.0.1", 50000)


class LoopTransport(httpx.BaseTransport):
    """Runs httpx's ``ASGITransport`` on one event loop in a daemon thread.

    One loop for all requests (not one per request) keeps what the app binds
    to its loop, locks and pools, valid from one request to the next. The
    thread is a daemon so that a client nobody closed cannot hold the
    interpreter open at exit.
    """

    def __init__(self, app: ASGIApp, raise_app_exceptions: bool) -> None:
        self.state: dict[str, Any] = {}
        self._app = app
        self._asgi = httpx.ASGITransport(
            app=app, raise_app_exceptions=raise_app_exceptions, client=LOOPBACK
        )
        self._lock = threading.Lock()
        self._portal: BlockingPortal | None = None
        self._thread: threading.Thread | None = None
        self._lifespan: tuple[Future[None], anyio.Event] | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        # A sync client may hold a sync-only body stream; the loop gets bytes.
        request.read()
        status, headers, body, extensions = self._start().call(self._round_trip, request)
        return httpx.Response(
            status, headers=headers, stream=httpx.ByteStream(body), extensions=extensions
        )

    async def _round_trip(
        self, request: httpx.Request
    ) -> tuple[int, httpx.Headers, bytes, dict[str, Any]]:
        response = await self._asgi.handle_async_request(request)
        body = await response.aread()
        return response.status_code, response.headers, body, dict(response.extensions)

    def __enter__(self) -> LoopTransport:
        portal = self._start()
        stop = portal.call(anyio.Event)
        try:
            future, _ = portal.start_task(_run_lifespan, self._app, self.state, stop)
        except BaseException:
            self.close()  # the with block never starts: nothing else would stop the loop
            raise
        self._lifespan = (future, stop)
        return self

    def close(self) -> None:
        with self._lock:
            portal, thread, lifespan = self._portal, self._thread, self._lifespan
            self._portal = self._thread = self._lifespan = None
        if portal is None or thread is None:
            return
        try:
            if lifespan is not None:
                future, stop = lifespan
                portal.call(stop.set)
                future.result()  # a failed shutdown raises here
        finally:
            portal.call(portal.stop, True)
            thread.join()

    def _start(self) -> BlockingPortal:
        with self._lock:
            if self._portal is None:
                ready: Future[BlockingPortal] = Future()
                self._thread = threading.Thread(
                    target=_run_portal, args=(ready,), name="asgi_perf-test-client", daemon=True
                )
                self._thread.start()
                self._portal = ready.result()
            return self._portal


def _run_portal(ready: Future[BlockingPortal]) -> None:
    async def serve() -> None:
        async with BlockingPortal() as portal:
            ready.set_result(portal)
            await portal.sleep_until_stopped()

    try:
        anyio.run(serve)
    except BaseException as exc:
        if not ready.done():
            ready.set_exception(exc)
        else:
            raise


async def _run_lifespan(
    app: ASGIApp,
    state: dict[str, Any],
    stop: anyio.Event,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Drive the ASGI lifespan protocol the way uvicorn's ``--lifespan auto`` does:
    an app that raises before answering the startup has no lifespan and is
    served without one; a ``startup.failed`` answer raises."""
    to_app, app_inbox = anyio.create_memory_object_stream[Message](math.inf)
    app_outbox, from_app = anyio.create_memory_object_stream[Message](math.inf)
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": state}
    raised: list[Exception] = []
    shutdown: Message | None = None

    async def run_app() -> None:
        # Caught here, not raised into the task group: the caller gets one plain
        # exception (from _lifespan_error), not an ExceptionGroup.
        try:
            await app(scope, app_inbox.receive, app_outbox.send)
        except Exception as exc:
            raised.append(exc)
        finally:
            app_outbox.close()

    async def answer() -> Message | None:
        try:
            return await from_app.receive()
        except anyio.EndOfStream:
            return None

    async with to_app, app_inbox, app_outbox, from_app, anyio.create_task_group() as tg:
        tg.start_soon(run_app)
        await to_app.send({"type": "lifespan.startup"})
        startup = await answer()
        if startup is not None and startup["type"] == "lifespan.startup.complete":
            task_status.started()
            await stop.wait()
            await to_app.send({"type": "lifespan.shutdown"})
            shutdown = await answer()
    if startup is None:
        task_status.started()  # no lifespan support: serve without one
    elif startup["type"] != "lifespan.startup.complete":
        raise _lifespan_error("startup", startup, raised)
    elif shutdown is None or shutdown["type"] != "lifespan.shutdown.complete" or raised:
        raise _lifespan_error("shutdown", shutdown, raised)


def _lifespan_error(phase: str, reply: Message | None, raised: list[Exception]) -> RuntimeError:
    # Starlette puts a whole traceback in the message: the chained exception says it better.
    if raised:
        error = RuntimeError(f"lifespan {phase} failed: {raised[0]!r}")
        error.__cause__ = raised[0]
        return error
    message = (reply or {}).get("message") or "the app sent no answer"
    return RuntimeError(f"lifespan {phase} failed: {message}")
