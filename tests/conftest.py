"""Shared fixtures: real uvicorn servers, small real apps, a raw ASGI driver.

Everything here runs real code: uvicorn serves real sockets on 127.0.0.1,
the apps are real FastAPI / Starlette apps, and the raw ASGI driver is the
smallest possible ASGI server (it builds a scope and collects what the app
sends). Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from asgi_perf import PerfMiddleware
from asgi_perf.cli import main

# The pytest plugin of asgi_perf is tested by running pytest on small test files;
# tests/postgres.py gives the session a private PostgreSQL server (postgres_dsn).
pytest_plugins = ("pytester", "postgres")

# Only a guard against a server that never starts (a crash ends the wait at
# once): the shop example seeds 50 000 rows at start-up, slowly under coverage.
STARTUP_TIMEOUT_S = 60.0
SHUTDOWN_TIMEOUT_S = 10.0
# Idle connections outlive the clients' own keep-alive (httpx: 5 s). With
# uvicorn's default, also 5 s, a client could reuse a connection just as the
# server closed it: "Server disconnected without sending a response" under
# load, when the client reads its responses long after the server sent them.
KEEP_ALIVE_S = 60


# --------------------------------------------------------------------------- uvicorn


@dataclass
class LiveServer:
    """One uvicorn server on 127.0.0.1, serving ``app`` from a background thread."""

    app: Any
    lifespan: str = "auto"
    root_path: str = ""
    timeout_keep_alive: int = KEEP_ALIVE_S
    url: str = ""
    server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None
    _sock: socket.socket | None = None

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        # The socket is bound here and handed to uvicorn: the port is free and
        # known before the server starts, with no bind race.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._sock = sock
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            lifespan=self.lifespan,  # type: ignore[arg-type]
            root_path=self.root_path,
            log_level="warning",
            access_log=False,
            timeout_keep_alive=self.timeout_keep_alive,
            timeout_graceful_shutdown=5,
        )
        self.server = server = uvicorn.Server(config)
        self._thread = thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("uvicorn stopped before it started (see the log above)")
            if time.monotonic() > deadline:
                server.should_exit = True
                raise TimeoutError(f"uvicorn did not start within {timeout} s")
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{port}"

    def stop(self, timeout: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Ask uvicorn to exit (lifespan shutdown runs) and wait for its thread."""
        if self.server is not None:
            self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            alive = self._thread.is_alive()
            self._thread = None
            if alive:
                raise TimeoutError(f"uvicorn did not stop within {timeout} s")
        if self._sock is not None:
            self._sock.close()
            self._sock = None


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """``cli("stats", url)`` -> (exit code, stdout, stderr) of ``asgi-perf``, run in-process."""

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def live_server() -> Iterator[Callable[..., LiveServer]]:
    """Factory: ``live_server(app, lifespan="auto")`` -> a started ``LiveServer``.

    ``.url`` is its base URL; every server is stopped at teardown.
    ``timeout_keep_alive``: seconds uvicorn keeps an idle connection open.
    """
    servers: list[LiveServer] = []

    def start(
        app: Any,
        *,
        lifespan: str = "auto",
        root_path: str = "",
        timeout_keep_alive: int = KEEP_ALIVE_S,
    ) -> LiveServer:
        live = LiveServer(
            app, lifespan=lifespan, root_path=root_path, timeout_keep_alive=timeout_keep_alive
        )
        servers.append(live)
        live.start()
        return live

    yield start
    errors = []
    for live in servers:
        try:
            live.stop()
        except TimeoutError as exc:  # pragma: no cover - reported below
            errors.append(exc)
    if errors:
        raise errors[0]


def http_client(base_url: str, **kwargs: Any) -> httpx.AsyncClient:
    """An httpx client for a live server: no proxies from the environment."""
    kwargs.setdefault("timeout", 30.0)
    return httpx.AsyncClient(base_url=base_url, trust_env=False, **kwargs)


@pytest.fixture
def client_for() -> Callable[..., httpx.AsyncClient]:
    """Factory: ``client_for(url_or_app)``; an app is called in-process via ASGITransport."""

    def make(target: Any, **kwargs: Any) -> httpx.AsyncClient:
        if isinstance(target, str):
            return http_client(target, **kwargs)
        transport = httpx.ASGITransport(
            app=target,
            raise_app_exceptions=kwargs.pop("raise_app_exceptions", True),
            client=kwargs.pop("client", ("127.0.0.1", 50000)),
            root_path=kwargs.pop("root_path", ""),
        )
        return httpx.AsyncClient(transport=transport, base_url="http://testserver", **kwargs)

    return make


# --------------------------------------------------------------------------- raw ASGI


@dataclass
class ASGIResult:
    """What an app sent for one request."""

    status: int
    raw_headers: list[tuple[bytes, bytes]]
    body: bytes
    messages: list[dict[str, Any]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode("latin-1")
        for key, value in self.raw_headers:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return None

    @property
    def header_names(self) -> list[str]:
        return [k.decode("latin-1").lower() for k, _ in self.raw_headers]

    def json(self) -> Any:
        return json.loads(self.body)


def http_scope(
    method: str = "GET",
    path: str = "/",
    *,
    query: bytes = b"",
    headers: Sequence[tuple[bytes, bytes]] = (),
    client: tuple[str, int] | None = ("127.0.0.1", 50000),
    root_path: str = "",
    extensions: dict[str, Any] | None = None,
) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": root_path + path,
        "raw_path": (root_path + path).encode(),
        "root_path": root_path,
        "query_string": query,
        "headers": [
            *([] if any(k.lower() == b"host" for k, _ in headers) else [(b"host", b"testserver")]),
            *headers,
        ],
        "server": ("testserver", 80),
        "client": client,
        "state": {},
    }
    if extensions is not None:
        scope["extensions"] = extensions
    return scope


async def call_asgi(
    app: Any,
    method: str = "GET",
    path: str = "/",
    *,
    body: bytes = b"",
    scope: dict[str, Any] | None = None,
    **scope_kwargs: Any,
) -> ASGIResult:
    """Drive one HTTP request through ``app`` like a server would."""
    if scope is None:
        scope = http_scope(method, path, **scope_kwargs)
    messages: list[dict[str, Any]] = []
    done = asyncio.Event()
    request_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal request_sent
        if not request_sent:
            request_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)
        if message["type"] == "http.response.pathsend" or (
            message["type"] == "http.response.body" and not message.get("more_body", False)
        ):
            done.set()

    try:
        await app(scope, receive, send)
    finally:
        done.set()
    start = next((m for m in messages if m["type"] == "http.response.start"), None)
    assert start is not None, f"the app sent no response start: {messages}"
    payload = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return ASGIResult(start["status"], list(start.get("headers", [])), payload, messages)


@pytest.fixture
def asgi() -> Callable[..., Awaitable[ASGIResult]]:
    """``await asgi(app, "GET", "/path", client=(...), headers=[...], query=b"...")``."""
    return call_asgi


# --------------------------------------------------------------------------- apps


async def _stream_chunks(chunks: int, ms: int, size: int) -> AsyncIterator[bytes]:
    for i in range(chunks):
        if i:
            await asyncio.sleep(ms / 1000)
        yield b"x" * size


def build_fastapi_app(perf: dict[str, Any] | None = None) -> FastAPI:
    """A small FastAPI app; ``perf`` (options) adds PerfMiddleware via add_middleware.

    Routes: ``GET /``, ``GET /items/{item_id}``, ``POST /items``, ``GET /slow?ms``,
    ``GET /sync?ms`` (a ``def`` endpoint), ``GET /stream?chunks&ms&size``,
    ``GET /users/{user_id}``, ``GET /api/health``, ``GET /api/v1/users/{user_id}``
    (nested routers with prefixes), ``GET /admin/reports/{day}`` (prefix given to
    ``include_router``).
    """
    app = FastAPI()

    @app.get("/")
    async def root() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/items/{item_id}")
    async def get_item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @app.post("/items", status_code=201)
    async def create_item() -> dict[str, bool]:
        return {"created": True}

    @app.get("/slow")
    async def slow(ms: int = 200) -> dict[str, int]:
        await asyncio.sleep(ms / 1000)
        return {"slept_ms": ms}

    @app.get("/sync")
    def sync_endpoint(ms: int = 50) -> dict[str, int]:
        time.sleep(ms / 1000)  # a blocking endpoint, run in the threadpool
        return {"slept_ms": ms}

    @app.get("/stream")
    async def stream(chunks: int = 5, ms: int = 50, size: int = 100) -> StreamingResponse:
        return StreamingResponse(_stream_chunks(chunks, ms, size), media_type="text/plain")

    @app.get("/users/{user_id}")
    async def get_user(user_id: str) -> dict[str, str]:
        return {"user": user_id}

    api = APIRouter(prefix="/api")
    v1 = APIRouter(prefix="/v1")
    users = APIRouter(prefix="/users")

    @users.get("/{user_id}")
    async def api_user(user_id: str) -> dict[str, str]:
        return {"user": user_id}

    @api.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    v1.include_router(users)
    api.include_router(v1)
    app.include_router(api)

    admin = APIRouter()

    @admin.get("/reports/{day}")
    async def report(day: str) -> dict[str, str]:
        return {"day": day}

    app.include_router(admin, prefix="/admin")

    if perf is not None:
        app.add_middleware(PerfMiddleware, **perf)
    return app


def build_starlette_app(static_dir: Path, perf: dict[str, Any] | None = None) -> Starlette:
    """A small Starlette app with mounts.

    Routes: ``GET /``, ``GET /items/{item_id:int}``, ``GET /slow?ms``,
    ``/tenants/{tenant}`` mount with ``/orders/{order_id:int}`` and ``/profile``,
    nested ``/admin`` -> ``/reports`` -> ``/{year:int}``, ``/static`` StaticFiles
    (``hello.txt`` is there), websocket ``/ws`` (echo).
    """

    async def home(request: Request) -> Response:
        return PlainTextResponse("home")

    async def item(request: Request) -> Response:
        return JSONResponse({"id": request.path_params["item_id"]})

    async def slow(request: Request) -> Response:
        ms = int(request.query_params.get("ms", "200"))
        await asyncio.sleep(ms / 1000)
        return JSONResponse({"slept_ms": ms})

    async def order(request: Request) -> Response:
        return JSONResponse(dict(request.path_params))

    async def profile(request: Request) -> Response:
        return JSONResponse({"tenant": request.path_params["tenant"]})

    async def year_report(request: Request) -> Response:
        return JSONResponse({"year": request.path_params["year"]})

    async def echo(ws: WebSocket) -> None:
        await ws.accept()
        text = await ws.receive_text()
        await ws.send_text(f"echo:{text}")
        await ws.close()

    static_dir.mkdir(parents=True, exist_ok=True)
    (static_dir / "hello.txt").write_text("hello, static\n")
    app = Starlette(
        routes=[
            Route("/", home),
            Route("/items/{item_id:int}", item),
            Route("/slow", slow),
            Mount(
                "/tenants/{tenant}",
                routes=[Route("/orders/{order_id:int}", order), Route("/profile", profile)],
            ),
            Mount("/admin", routes=[Mount("/reports", routes=[Route("/{year:int}", year_report)])]),
            Mount("/static", app=StaticFiles(directory=static_dir), name="static"),
            WebSocketRoute("/ws", echo),
        ]
    )
    if perf is not None:
        app.add_middleware(PerfMiddleware, **perf)
    return app


@pytest.fixture
def fastapi_app() -> Callable[..., FastAPI]:
    """Factory: ``fastapi_app(perf={...})``; ``perf=None`` leaves the middleware out."""

    def build(perf: dict[str, Any] | None = None) -> FastAPI:
        return build_fastapi_app(perf)

    return build


@pytest.fixture
def starlette_app(tmp_path: Path) -> Callable[..., Starlette]:
    """Factory: ``starlette_app(perf={...})``; StaticFiles serve a temp directory."""

    def build(perf: dict[str, Any] | None = None) -> Starlette:
        return build_starlette_app(tmp_path / "static", perf)

    return build


async def hello_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The smallest ASGI app: HTTP only, raises on anything else (no lifespan)."""
    if scope["type"] != "http":
        raise RuntimeError(f"this app does not support {scope['type']!r}")
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": b"hello"})


@pytest.fixture
def raw_app() -> Callable[..., Awaitable[None]]:
    """A raw ASGI function (no router, no lifespan support)."""
    return hello_asgi


# --------------------------------------------------------------------------- stats helpers


def route_map(snapshot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The routes of a snapshot by key."""
    return {r["route"]: r for r in snapshot["routes"]}


@pytest.fixture
def routes_of() -> Callable[[dict[str, Any]], dict[str, dict[str, Any]]]:
    return route_map


async def wait_for(
    predicate: Callable[[], Awaitable[bool]], timeout: float = 5.0, interval: float = 0.02
) -> None:
    """Await ``predicate()`` until true; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


@pytest.fixture
def eventually() -> Callable[..., Awaitable[None]]:
    return wait_for


@pytest.fixture
def stop_tracemalloc() -> Iterator[None]:
    """Stop tracemalloc after a test that made the middleware start it."""
    was_tracing = tracemalloc.is_tracing()
    yield
    if not was_tracing and tracemalloc.is_tracing():
        tracemalloc.stop()
