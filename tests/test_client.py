"""``PerfClient`` against servers that close idle connections (issue #13.8).

A pooled connection the server has just closed fails the next request with
"Server disconnected without sending a response". The client opens a
connection per request, so there is none to reuse.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from asgi_perf import PerfMiddleware
from asgi_perf.client import PerfClient, PerfClientError

_BODY = b'{"schema": 1}'
_ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
    len(_BODY),
    _BODY,
)


class OneAnswerServer:
    """Answers the first request of each connection and keeps it open, then
    closes it, unanswered, when a second request comes on it: the moment a
    server's keep-alive timeout ends, made certain."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.connections = 0
        self.dropped = 0
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            self.connections += 1
            self._open.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        with conn:
            try:
                if not _read_request(conn):
                    return
                conn.sendall(_ANSWER)
                if _read_request(conn):
                    self.dropped += 1
            except OSError:
                pass

    def close(self) -> None:
        self._sock.close()
        for conn in self._open:
            conn.close()


def _read_request(conn: socket.socket) -> bool:
    """Read one request head (the client sends GETs); False when the client left."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return False
        data += chunk
    return True


@pytest.fixture
def one_answer_server() -> Iterator[OneAnswerServer]:
    server = OneAnswerServer()
    yield server
    server.close()


def test_a_connection_the_server_closed_is_never_reused(one_answer_server):
    with PerfClient(one_answer_server.url) as client:
        for _ in range(5):
            assert client.stats() == {"schema": 1}
    assert one_answer_server.connections == 5
    assert one_answer_server.dropped == 0


async def client_port(request: Request) -> Response:
    client = request.client
    return PlainTextResponse(str(client.port if client else 0))


async def boom(request: Request) -> Response:
    raise RuntimeError("the app fails")


def app(**perf: Any) -> PerfMiddleware:
    routes = [Route("/port", client_port), Route("/boom", boom)]
    return PerfMiddleware(Starlette(routes=routes), strict=True, **perf)


def test_every_request_has_its_own_connection(live_server):
    server = live_server(app())
    with PerfClient(server.url) as client:
        ports = {client.download_link("/port") for _ in range(4)}
    assert len(ports) == 4


def test_requests_spaced_across_the_keep_alive_timeout(live_server):
    # uvicorn closes an idle connection after timeout_keep_alive; a request
    # sent as it does so found a dead pooled connection. Also after a request
    # whose handler raised (uvicorn answers 500 and closes).
    server = live_server(app(), timeout_keep_alive=1)
    with PerfClient(server.url) as client:
        for i in range(3):
            assert client.stats()["schema"] == 1
            if i == 1:
                with pytest.raises(PerfClientError, match="500"):
                    client.download_link("/boom")
            time.sleep(1.0)
        assert client.stats()["schema"] == 1
