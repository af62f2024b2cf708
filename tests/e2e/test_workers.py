"""End to end: one answer from several workers of a real server.

``uvicorn --workers 3`` and gunicorn with uvicorn's worker class run as
subprocesses on a loopback port; requests open a new connection each, so
the kernel hands them to every worker; whichever worker answers
``/_perf/stats`` must count them all.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
WORKERS = 3
COMMANDS = {
    "uvicorn": ["-m", "uvicorn", "workers_app:app", "--workers", str(WORKERS)],
    "gunicorn": [
        "-m", "gunicorn", "workers_app:app", "-w", str(WORKERS),
        "-k", "uvicorn.workers.UvicornWorker",
    ],
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def client(url: str) -> httpx.Client:
    # No keep-alive: every request is a new connection, for any worker to take.
    return httpx.Client(
        base_url=url,
        trust_env=False,
        timeout=30,
        limits=httpx.Limits(max_keepalive_connections=0),
    )


def stats(url: str) -> dict[str, Any]:
    with client(url) as c:
        response = c.get("/_perf/stats")
        response.raise_for_status()
        return dict(response.json())


def wait_for_workers(url: str, n: int, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = stats(url)
            if sum(1 for w in last["workers"] if w["alive"]) >= n:
                return last
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"{n} workers did not answer within {timeout} s: {last}")


def send(url: str, n: int, threads: int = 8) -> None:
    def some(count: int) -> None:
        with client(url) as c:
            for _ in range(count):
                c.get("/work").raise_for_status()

    share = [n // threads + (1 if i < n % threads else 0) for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(some, share))


@pytest.fixture(params=sorted(COMMANDS))
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    kind = request.param
    port = free_port()
    bind = ["--port", str(port)] if kind == "uvicorn" else ["-b", f"127.0.0.1:{port}"]
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{HERE}")
    env.pop("ASGI_PERF_DIR", None)
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, *COMMANDS[kind], *bind], cwd=HERE, env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_workers(url, WORKERS)
        yield kind, url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:  # pragma: no cover - reported by the kill
            proc.kill()
            proc.wait(5)
        log.close()


def test_every_answer_counts_every_workers_requests(server: tuple[str, str]) -> None:
    _, url = server
    send(url, 3000)
    answers = [stats(url) for _ in range(6)]
    assert {a["requests"] for a in answers} == {3000}
    for answer in answers:
        assert answer["scope"] == "server"
        assert len(answer["workers"]) == WORKERS
        assert all(w["alive"] for w in answer["workers"])
        assert sum(w["requests"] for w in answer["workers"]) == 3000
        (route,) = [r for r in answer["routes"] if r["route"] == "GET /work"]
        assert route["count"] == 3000
    # More than one worker served: a real merge.
    served = [w["requests"] for w in answers[-1]["workers"]]
    assert sum(1 for n in served if n > 0) >= 2, served


def test_reset_clears_every_worker(server: tuple[str, str]) -> None:
    _, url = server
    send(url, 300)
    with client(url) as c:
        cleared = c.post("/_perf/reset").json()
    assert cleared["requests"] == 300
    after = stats(url)
    assert after["requests"] == 0
    assert all(w["requests"] == 0 for w in after["workers"])
    send(url, 90)
    assert stats(url)["requests"] == 90


def test_a_killed_workers_requests_stay_until_a_reset(server: tuple[str, str]) -> None:
    kind, url = server
    send(url, 600)
    before = stats(url)
    victim = max(before["workers"], key=lambda w: w["requests"])
    assert victim["requests"] > 0
    os.kill(victim["pid"], signal.SIGKILL)
    # The server starts a new worker; the dead one's numbers stay counted.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = stats(url)
        dead = [w for w in now["workers"] if w["pid"] == victim["pid"]]
        if dead and not dead[0]["alive"]:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"{kind}: the killed worker is not shown as dead: {now['workers']}")
    assert now["requests"] == 600
    assert dead[0]["requests"] == victim["requests"]
    with client(url) as c:
        c.post("/_perf/reset").raise_for_status()
    after = stats(url)
    assert after["requests"] == 0
    assert victim["pid"] not in {w["pid"] for w in after["workers"]}


def busy_clients(url: str, stop: threading.Event, n: int = 4) -> list[threading.Thread]:
    def loop() -> None:
        with client(url) as c:
            while not stop.is_set():
                c.get("/work")

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


def test_a_window_holds_every_workers_work(server: tuple[str, str]) -> None:
    _, url = server
    stop = threading.Event()
    threads = busy_clients(url, stop)
    try:
        with client(url) as c:
            started = time.monotonic()
            window = c.get("/_perf/profile", params={"seconds": 2, "format": "collapsed"})
            took = time.monotonic() - started
            window_id = window.headers["x-perf-profile-id"]
            metas = [c.get(f"/_perf/profiles/{window_id}").json() for _ in range(4)]
            files = [c.get(f"/_perf/profiles/{window_id}.collapsed") for _ in range(3)]
            listed = c.get("/_perf/profiles", params={"kind": "window"}).json()["profiles"]
            one = stats(url)["workers"][0]["pid"]
            single = c.get("/_perf/profile", params={"seconds": 1, "pid": one})
            unknown = c.get("/_perf/profile", params={"seconds": 1, "pid": 1})
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert window.status_code == 200, window.text
    assert took < 2 + 2.5
    assert "worker_work" in window.text
    # Every answer, from whichever worker, knows the window and its parts.
    for meta in metas:
        assert meta["id"] == window_id and len(meta["workers"]) == WORKERS
    for f in files:
        assert f.status_code == 200 and "worker_work" in f.text
    assert window_id in {p["id"] for p in listed}
    assert single.status_code == 200
    single_id = single.headers["x-perf-profile-id"]
    with client(url) as c:
        assert c.get(f"/_perf/profiles/{single_id}").json()["workers"] == [one]
    assert unknown.status_code == 404 and unknown.json()["parameter"] == "pid"


def test_windows_started_and_stopped_on_any_worker_are_one_server_wide(
    server: tuple[str, str],
) -> None:
    _, url = server
    stop = threading.Event()
    threads = busy_clients(url, stop)
    try:
        with client(url) as c:
            started = c.post("/_perf/windows", params={"seconds": 30, "tag": "run-1"})
            second = c.post("/_perf/windows", params={"seconds": 30})
            busy_get = c.get("/_perf/profile", params={"seconds": 1})
            time.sleep(1.5)
            stopped = c.post(f"/_perf/windows/{started.json()['id']}/stop")
            after = c.post("/_perf/windows", params={"seconds": 1})
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert started.status_code == 201, started.text
    assert sorted(started.json()["workers"]) == sorted(w["pid"] for w in stats(url)["workers"])
    assert second.status_code == 409 and busy_get.status_code == 409
    assert stopped.status_code == 200, stopped.text
    body = stopped.json()
    assert body["tag"] == "run-1" and len(body["workers"]) == WORKERS
    assert after.status_code == 201  # the server-wide lock was released
