"""The shared directory of a server's workers: who may use it, and what is found on its own."""

from __future__ import annotations

import os
from pathlib import Path

from asgi_perf import PerfMiddleware
from asgi_perf.workers import server_directory


async def app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
    pass


def test_a_process_not_started_by_a_server_has_no_server_directory() -> None:
    # pytest's parent is a shell or make, not a uvicorn or gunicorn supervisor.
    assert server_directory() is None
    assert PerfMiddleware(app).core.workers is None


def test_shared_dir_makes_a_server_of_one(tmp_path: Path) -> None:
    mw = PerfMiddleware(app, shared_dir=str(tmp_path / "shared"))
    try:
        snap = mw.snapshot()
        assert snap["scope"] == "server"
        assert [w["pid"] for w in snap["workers"]] == [os.getpid()]
        assert (tmp_path / "shared").stat().st_mode & 0o777 == 0o700
    finally:
        assert mw.core.workers is not None
        mw.core.workers.stop()


def test_a_directory_others_may_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "open"
    shared.mkdir()
    shared.chmod(0o777)
    mw = PerfMiddleware(app, shared_dir=str(shared))
    assert mw.core.workers is None  # answers for itself, and says why in the log
    assert mw.snapshot()["scope"] == "process"
    assert mw.core.internal_errors == 1
