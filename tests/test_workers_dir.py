"""The shared directory of a server's workers, in one process.

The end-to-end tests run real uvicorn and gunicorn workers (subprocesses,
which coverage does not follow); these drive the same code in this process:
a worker's own state, another worker's file as a real file written by a
real process that has since exited, windows and exports through the
directory.
"""

from __future__ import annotations

import asyncio
import marshal
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from asgi_perf import PerfMiddleware
from asgi_perf.capture import Capture, FrameId
from asgi_perf.server_windows import ServerWindowBusy
from asgi_perf.stats.store import Recorder
from asgi_perf.workers import server_directory


async def app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
    pass


def a_dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(done.stdout)


def other_worker_file(shared: Path, pid: int, requests: int) -> None:
    """What another worker of the server would have written, for ``requests`` requests."""
    recorder = Recorder()
    for i in range(requests):
        recorder.record("GET /other", 1_000, 2_000_000, 200, 10, None, 0, 10**12 + i)
    body = {
        "pid": pid,
        "created": 1.0,
        "written": time.time(),
        "flush": 0,
        "generation": 0,
        "snapshot": recorder.state(),
        "profiles": [{"id": "00112233445566ff", "kind": "request", "route": "GET /other",
                      "created": time.time(), "pid": pid}],
    }  # fmt: skip
    (shared / f"worker-{pid}.state").write_bytes(marshal.dumps(body))


@pytest.fixture
def shared_mw(tmp_path: Path) -> Any:
    mw = PerfMiddleware(app, shared_dir=str(tmp_path / "shared"))
    yield mw
    assert mw.core.workers is not None
    mw.core.workers.stop()


def test_a_process_not_started_by_a_server_has_no_server_directory() -> None:
    # pytest's parent is a shell or make, not a uvicorn or gunicorn supervisor.
    assert server_directory() is None
    assert PerfMiddleware(app).core.workers is None
    assert PerfMiddleware(app).snapshot()["scope"] == "process"


def test_shared_dir_makes_a_server_of_one(shared_mw: Any, tmp_path: Path) -> None:
    snap = shared_mw.snapshot()
    assert snap["scope"] == "server"
    assert [w["pid"] for w in snap["workers"]] == [os.getpid()]
    assert snap["shared"]["flush_interval_s"] == 1.0
    assert (tmp_path / "shared").stat().st_mode & 0o777 == 0o700


def test_a_directory_others_may_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "open"
    shared.mkdir()
    shared.chmod(0o777)
    mw = PerfMiddleware(app, shared_dir=str(shared))
    assert mw.core.workers is None  # answers for itself, and says why in the log
    assert mw.snapshot()["scope"] == "process"
    assert mw.core.internal_errors == 1


def test_a_dead_workers_numbers_count_until_a_reset(shared_mw: Any, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    dead = a_dead_pid()
    other_worker_file(shared, dead, 7)
    snap = shared_mw.snapshot()
    assert snap["requests"] == 7
    assert {w["pid"]: w["alive"] for w in snap["workers"]} == {os.getpid(): True, dead: False}
    routes = {r["route"]: r for r in snap["routes"]}
    assert routes["GET /other"]["count"] == 7
    assert routes["GET /other"]["latency_ms"]["p50"] == pytest.approx(2.0, rel=0.01)
    # Its profiles are listed like this worker's own.
    workers = shared_mw.core.workers
    listed = [p for body in workers.others() for p in body["profiles"]]
    assert listed[0]["id"] == "00112233445566ff"
    cleared = shared_mw.reset()
    assert cleared["requests"] == 7
    assert shared_mw.snapshot()["requests"] == 0
    assert not (shared / f"worker-{dead}.state").exists()


async def test_an_answer_asks_the_others_and_waits_for_them(shared_mw: Any) -> None:
    workers = shared_mw.core.workers
    started = time.monotonic()
    await shared_mw.core.fresh(timeout_s=0.3)
    assert time.monotonic() - started < 0.3  # nobody else to wait for
    asked = workers.ask_flush()
    assert workers.flushed_since(asked)
    # This worker writes when asked (its poll thread sees the request).
    before = workers.flushes
    deadline = time.monotonic() + 2
    while workers.flushes == before and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert workers.flushes > before


def test_a_reset_asked_by_another_worker_is_caught_up(shared_mw: Any, tmp_path: Path) -> None:
    core = shared_mw.core
    core.recorder.record("GET /x", 1, 2, 200, 0, None, 0, 10**12)
    assert shared_mw.snapshot()["requests"] == 1
    (tmp_path / "shared" / "reset").write_text(str(time.time_ns()))
    assert core.workers.catch_up() is True
    assert shared_mw.snapshot()["requests"] == 0
    assert core.workers.catch_up() is False


def quiet(mw: Any) -> None:
    """Stop this worker's poll thread: the test plays its part by hand."""
    mw.core.workers.stop()
    time.sleep(0.15)


def capture_of(name: str) -> Capture:
    return Capture("sampler", {(FrameId(name, "app.py", 1),): 0.5}, 1.0)


async def test_a_server_window_is_joined_left_and_collected(shared_mw: Any) -> None:
    quiet(shared_mw)
    server = shared_mw.core.server_windows
    started = server.start("sampler", 0.2, tag="run-1", native=False, pids=None)
    with pytest.raises(ServerWindowBusy):
        server.start("sampler", 1, tag=None, native=False, pids=None)
    joined: list[str] = []
    # What each worker's poll thread does: join, then leave at the end.
    server.poll(lambda request: joined.append(request["id"]) or "local1", lambda local: None)
    assert joined == [started["id"]] and server.joined is not None
    time.sleep(0.25)
    server.poll(lambda request: None, lambda local: capture_of("worked_here"))
    meta, capture = await server.collect(started)
    assert meta["id"] == started["id"] and meta["workers"] == [os.getpid()]
    assert meta["tag"] == "run-1" and meta["stored"] is True
    assert any(f.function == "worked_here" for s in capture.stacks for f in s)
    assert server.active() is None  # the server-wide lock is released
    assert shared_mw.core.store.has(started["id"])


async def test_a_stopped_window_and_one_nobody_could_join(shared_mw: Any) -> None:
    quiet(shared_mw)
    server = shared_mw.core.server_windows
    started = server.start("pyinstrument", 30, tag=None, native=False, pids=[os.getpid()])
    server.poll(lambda request: None, lambda local: None)  # could not start here
    with pytest.raises(RuntimeError, match="no worker wrote a part"):
        await server.collect({**started, "ends_at": time.time()}, timeout_s=0.1)
    other = server.start("sampler", 30, tag=None, native=False, pids=None)
    server.poll(lambda request: "local2", lambda local: None)
    server.request_stop(other["id"])
    server.poll(lambda request: None, lambda local: capture_of("stopped_early"))
    meta, _ = await server.collect({**other, "ends_at": time.time()})
    assert meta["id"] == other["id"]
    aborted = server.start("sampler", 30, tag=None, native=False, pids=None)
    server.abort(aborted["id"])
    assert server.active() is None


async def test_a_profile_is_handed_over_through_exports(shared_mw: Any) -> None:
    quiet(shared_mw)
    core = shared_mw.core
    stored = core.store.add(capture_of("kept_here"), keep=True)
    assert stored is not None
    server = core.server_windows

    async def serve_soon() -> None:
        await asyncio.sleep(0.05)
        server.serve_exports()  # the poll thread of the worker that keeps it

    serving = asyncio.ensure_future(serve_soon())
    fetched = await server.fetch(stored)
    await serving
    assert fetched is not None
    assert any(f.function == "kept_here" for s in fetched.stacks for f in s)
    server.serve_exports()  # nothing asked: nothing to do
    missing = await asyncio.wait_for(server.fetch("ffffffffffffffff"), 5)
    assert missing is None
