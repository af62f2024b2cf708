"""Database numbers of several workers answer as one (issue #14).

``uvicorn --workers 2`` serves an app whose requests each run three sqlite3
queries, with ``ASGI_PERF_DB=1`` from the environment; any worker's
``/_perf/stats`` and ``/_perf/db`` count every worker's queries.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
WORKERS = 2
REQUESTS = 300


def _client(url: str) -> httpx.Client:
    # No keep-alive: every request is a new connection, for any worker to take.
    return httpx.Client(
        base_url=url, trust_env=False, timeout=30, limits=httpx.Limits(max_keepalive_connections=0)
    )


def _get(url: str, path: str) -> dict[str, Any]:
    with _client(url) as c:
        response = c.get(path)
        response.raise_for_status()
        return dict(response.json())


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    db = tmp_path / "items.sqlite"
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
        conn.executemany("INSERT INTO items (name) VALUES (?)", [("a",), ("b",)])
        conn.commit()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{HERE}", ASGI_PERF_DB="1")
    env["DB_WORKERS_PATH"] = str(db)
    env.pop("ASGI_PERF_DIR", None)
    log = (tmp_path / "server.log").open("wb")
    cmd = [sys.executable, "-m", "uvicorn", "db_workers_app:app", "--workers", str(WORKERS)]
    proc = subprocess.Popen([*cmd, "--port", str(port)], cwd=HERE, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if sum(w["alive"] for w in _get(url, "/_perf/stats")["workers"]) >= WORKERS:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:  # pragma: no cover - reported by the kill
            proc.kill()
            proc.wait(5)
        log.close()


def test_every_answer_counts_every_workers_queries(server: str) -> None:
    def some(n: int) -> set[int]:
        with _client(server) as c:
            return {c.get(f"/items/{i % 2 + 1}").json()["pid"] for i in range(n)}

    with ThreadPoolExecutor(6) as pool:
        pids = set().union(*pool.map(some, [REQUESTS // 6] * 6))
    assert len(pids) == WORKERS  # both workers served some
    for _ in range(3):
        snap = _get(server, "/_perf/stats")
        (route,) = [r for r in snap["routes"] if r["route"] == "GET /items/{item_id}"]
        assert route["count"] == REQUESTS
        assert route["db"]["queries"] == {
            "total": 3 * REQUESTS, "mean": 3.0, "p50": 3.0, "p99": 3.0, "max": 3,
        }  # fmt: skip
        assert snap["db"]["queries"] == 3 * REQUESTS
        body = _get(server, "/_perf/db")
        (statement,) = body["routes"][0]["statements"]
        assert statement == statement | {
            "statement": "SELECT name FROM items WHERE id = ?",
            "count": 3 * REQUESTS,
        }
        assert body["routes"][0]["requests"] == REQUESTS
