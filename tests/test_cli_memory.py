"""``asgi-perf memory``, ``soak`` and ``leaks`` against real uvicorn servers.

The server runs in a thread of this process, so its RSS is this process's
and tracemalloc, once the CLI starts it over HTTP, traces this process: a
route that leaks on a known line (``# LEAK-ROUTE``) must be named by
``leaks`` and grow the slope ``soak`` measures. Every test leaves
tracemalloc as it found it. Ctrl-C is a real SIGINT to a real CLI process.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import gc
import json
import mmap
import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from helpers import closed_port

from asgi_perf import PerfMiddleware
from asgi_perf.cli.memory_load import leaks_view

ENV_TO_CLEAR = ("ASGI_PERF_TOKEN", "ASGI_PERF_PREFIX", "FORCE_COLOR", "TTY_COMPATIBLE", "COLUMNS")
SEED_COLUMNS = ["elapsed_min", "rss_mb", "vms_mb", "connections"]
BLOCK = 1_000_000  # a request leaks 1 MB: a slow machine still grows fast
_LEAK: list[bytes | mmap.mmap] = []

Run = Callable[..., tuple[int, str, str]]


def leaky_app(**perf: Any) -> PerfMiddleware:
    app = FastAPI()

    @app.get("/leak")
    async def leak() -> dict[str, int]:
        # Written, not calloc'ed: untouched zero pages would never reach RSS.
        _LEAK.append(b"x" * BLOCK)  # LEAK-ROUTE
        return {"held": len(_LEAK)}

    @app.get("/grow")
    async def grow() -> dict[str, int]:
        # RSS for the soak tests: an anonymous map, written. The heap could
        # hand back memory an earlier test freed, and RSS would not move.
        block = mmap.mmap(-1, BLOCK)
        block.write(b"x" * BLOCK)
        _LEAK.append(block)
        return {"held": len(_LEAK)}

    @app.get("/ok")
    async def ok() -> dict[str, bool]:
        return {"ok": True}

    return PerfMiddleware(app, **{"memory_interval_s": 0.05, **perf})


def leak_line() -> str:
    lines = Path(__file__).read_text().splitlines()
    n = next(n for n, text in enumerate(lines, 1) if text.endswith("# LEAK-ROUTE"))
    return f"{Path(__file__).name}:{n}"


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the kernel (glibc only).

    Without it a leak reuses the pages an earlier test's leak freed, and
    RSS stays flat for as long as they last: no slope for ``soak`` to see.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # A token or prefix from the developer's shell must not change the tests.
    for name in ENV_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    if tracemalloc.is_tracing():
        pytest.skip("tracemalloc was already tracing: these tests start and stop it")
    release_freed_memory()
    yield
    _LEAK.clear()
    if tracemalloc.is_tracing():
        tracemalloc.stop()


def assert_one_line_error(err: str, *fragments: str) -> None:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("asgi-perf: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def server(live_server: Any) -> Callable[..., tuple[str, PerfMiddleware]]:
    """Factory: ``server(**perf)`` -> (URL, the middleware) of a leaky app under uvicorn."""

    def start(**perf: Any) -> tuple[str, PerfMiddleware]:
        mw = leaky_app(**perf)
        return live_server(mw).url, mw

    return start


@pytest.fixture
def load() -> Iterator[Callable[[str, str], None]]:
    """``load(url, path)``: requests in a loop, 20 ms apart, until the test ends.

    Returns once a few have been answered: on a busy machine a thread can
    take a second to get going, and a window that opens before the load
    would measure nothing.
    """
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start(url: str, path: str) -> None:
        answered = threading.Semaphore(0)

        def loop() -> None:
            with httpx.Client(base_url=url, trust_env=False, timeout=30) as client:
                while not stop.is_set():
                    client.get(path).raise_for_status()
                    answered.release()
                    stop.wait(0.02)  # 50 a second at most: 1 MB each on /leak

        thread = threading.Thread(target=loop, daemon=True)
        threads.append(thread)
        thread.start()
        for _ in range(3):
            assert answered.acquire(timeout=30), "the load did not start"

    yield start
    stop.set()
    for thread in threads:
        thread.join(10)


def cli_process(*args: str) -> subprocess.Popen[str]:
    """The CLI in its own process, ready for a real Ctrl-C.

    SIGINT is put back to Python's own handler first: a test run started in
    the background (a CI shell without job control) passes it on ignored.
    """
    code = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from asgi_perf.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ENV_TO_CLEAR}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# --------------------------------------------------------------------------- memory


def test_memory_prints_now_the_trend_routes_tracing_and_a_chart(
    server: Any, load: Any, cli: Run
) -> None:
    url, _ = server()
    load(url, "/leak")
    time.sleep(0.5)  # a few timeline points
    code, out, err = cli("memory", url)
    assert (code, err) == (0, "")
    for text in ("RSS", "VMS", "USS", "fds", "threads", "connections", "peak RSS"):
        assert text in out
    assert "trend: " in out and "MB/h" in out
    assert "GET /leak" in out  # the routes by memory
    assert "tracemalloc: off" in out
    assert "RSS over the timeline" in out and "MB ┤" in out and "└" in out


def test_memory_json_is_the_servers_answer(server: Any, cli: Run) -> None:
    url, _ = server()
    code, out, err = cli("memory", url, "--json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert report["schema"] == 1 and report["now"]["rss_mb"] > 0
    assert report["trend"] in ("flat", "growing")


def test_memory_says_when_the_timeline_is_off_and_prints_the_rest(server: Any, cli: Run) -> None:
    url, _ = server(memory_interval_s=0)
    code, out, err = cli("memory", url)
    assert (code, err) == (0, "")
    assert "the timeline is off" in out and "memory_interval_s" in out
    assert "RSS" in out and "trend: flat" in out and "┤" not in out


def test_memory_watch_refreshes_count_times(server: Any, cli: Run) -> None:
    url, _ = server()
    code, out, err = cli("memory", url, "--watch", "--interval", "0.1", "--count", "2")
    assert (code, err) == (0, "")
    assert out.count(f"{url} — pid") == 2
    code, out, _ = cli("memory", url, "--watch", "--json", "--interval", "0.1", "--count", "2")
    assert code == 0
    assert [json.loads(line)["schema"] for line in out.splitlines()] == [1, 1]


@pytest.mark.slow
def test_ctrl_c_ends_a_watch_with_0(server: Any) -> None:
    url, _ = server()
    proc = cli_process("memory", url, "--watch", "--interval", "0.1")
    assert proc.stdout is not None
    assert "pid" in proc.stdout.readline()  # it has drawn once
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


# --------------------------------------------------------------------------- soak


@pytest.mark.parametrize(
    ("limit", "code", "verdict"),
    [("1", 1, "FAIL: the slope"), ("100 GB/h", 0, "ok: the slope is within 102400 MB/h")],
)
def test_soak_of_a_leak_writes_the_csv_and_the_limit_decides(
    server: Any, load: Any, cli: Run, tmp_path: Path, limit: str, code: int, verdict: str
) -> None:
    url, _ = server()
    load(url, "/grow")
    out_csv = tmp_path / "out.csv"
    args = ("--minutes", "0.1", "--interval", "0.1", "--csv", str(out_csv))
    found, out, err = cli("soak", url, *args, "--max-growth", limit)
    assert (found, err) == (code, ""), out
    assert verdict in out
    assert "trend: growing" in out and "slope +" in out and f"saved {out_csv}" in out
    with out_csv.open() as f:
        rows = list(csv.reader(f))
    assert rows[0][:4] == SEED_COLUMNS
    rest = ["uss_mb", "fds", "threads", "gc0", "gc1", "gc2", "requests", "timestamp"]
    assert rows[0][4:] == rest
    assert len(rows) - 1 >= 9 and f"{len(rows) - 1} points" in out
    rss = [float(r[1]) for r in rows[1:]]
    assert rss[-1] > rss[0]
    assert [float(r[0]) for r in rows[1:]] == sorted(float(r[0]) for r in rows[1:])


def test_soak_of_a_flat_server_without_a_limit_passes(server: Any, cli: Run) -> None:
    url, _ = server()
    code, out, err = cli("soak", url, "--minutes", "0.05", "--interval", "0.1")
    assert (code, err) == (0, ""), out
    assert "trend: flat" in out and "ok: no steady growth" in out


def test_soak_of_a_leak_without_a_limit_fails_on_growing(server: Any, load: Any, cli: Run) -> None:
    url, _ = server()
    load(url, "/grow")
    code, out, _ = cli("soak", url, "--minutes", "0.1", "--interval", "0.1")
    assert code == 1, out
    assert "FAIL: memory grows steadily" in out


@pytest.mark.slow
def test_ctrl_c_ends_a_soak_with_its_result_and_130(server: Any, tmp_path: Path) -> None:
    url, _ = server()
    out_csv = tmp_path / "cut.csv"
    proc = cli_process("soak", url, "--minutes", "1", "--interval", "0.1", "--csv", str(out_csv))
    until(lambda: out_csv.exists() and len(out_csv.read_text().splitlines()) >= 4)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "soak interrupted after" in err
    assert "cut short, so far:" in out and f"saved {out_csv}" in out
    rows = out_csv.read_text().splitlines()
    assert rows[0].startswith(",".join(SEED_COLUMNS)) and len(rows) >= 4


# --------------------------------------------------------------------------- leaks


def test_leaks_names_the_leaking_line_and_stops_what_it_started(
    server: Any, load: Any, cli: Run
) -> None:
    url, _ = server()
    load(url, "/leak")
    code, out, err = cli("leaks", url, "--seconds", "1", "--top", "5")
    assert (code, err) == (0, ""), out
    assert "what grew in" in out and "grouped by lineno" in out
    first_row = next(line for line in out.splitlines() if line.startswith("│"))
    assert leak_line() in first_row, out
    assert not tracemalloc.is_tracing()


def test_leaks_by_traceback_shows_the_callers(server: Any, load: Any, cli: Run) -> None:
    url, _ = server()
    load(url, "/leak")
    # 4 frames, not the 10 of the default: this process is large, and each is paid for.
    args = ("--seconds", "1", "--group-by", "traceback", "--frames", "4")
    code, out, err = cli("leaks", url, *args)
    assert (code, err) == (0, ""), out
    assert leak_line() in out and "← " in out and "4 frames" in out
    assert not tracemalloc.is_tracing()


def test_leaks_leaves_tracing_on_when_it_found_it_on(server: Any, load: Any, cli: Run) -> None:
    url, _ = server()
    httpx.post(f"{url}/_perf/memory/tracemalloc/start?frames=2", trust_env=False)
    load(url, "/leak")
    code, out, _ = cli("leaks", url, "--seconds", "0.5")
    assert code == 0, out
    assert "2 frames, already on (started by api): left on" in out
    assert tracemalloc.is_tracing()


def test_leaks_with_nothing_grown_says_so() -> None:
    diff = {"group_by": "lineno", "seconds": 1.0, "growth_mb": -0.1, "stats": []}
    status = {"frames": 1, "started_by": "api"}
    (line,) = leaks_view(diff, "http://app", status, ours=True)
    assert str(line) == "nothing grew in http://app over 1 s (tracemalloc, 1 frame)"


def test_a_busy_leak_finder_is_one_line_with_the_servers_message(server: Any, cli: Run) -> None:
    url, mw = server()
    with mw.core.leaks._lock:  # another snapshot is being taken
        code, out, err = cli("leaks", url, "--seconds", "0.1")
    assert (code, out) == (3, "")
    assert_one_line_error(err, "409", "another tracemalloc snapshot is being taken")


@pytest.mark.slow
def test_ctrl_c_during_leaks_stops_the_tracing_it_started(server: Any) -> None:
    url, _ = server()
    proc = cli_process("leaks", url, "--seconds", "30")
    until(tracemalloc.is_tracing)
    time.sleep(0.3)  # past the baseline, into the wait
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert (proc.returncode, out) == (130, ""), err
    assert_one_line_error(err, "interrupted")
    assert not tracemalloc.is_tracing()


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "args",
    [
        ("memory",),
        ("soak", "--minutes", "0.05", "--interval", "0.1"),
        ("leaks", "--seconds", "1"),
    ],
)
def test_unreachable_bad_url_and_401_are_one_line_and_3(
    server: Any, cli: Run, tmp_path: Path, args: tuple[str, ...]
) -> None:
    command, *options = args
    out_csv = tmp_path / "never.csv"
    extra = ["--csv", str(out_csv)] if command == "soak" else []
    code, out, err = cli(command, f"http://127.0.0.1:{closed_port()}", *options, *extra)
    assert (code, out) == (3, "")
    assert_one_line_error(err, "cannot reach", "connection refused")
    assert not out_csv.exists()  # no empty file for a soak that never began

    code, out, err = cli(command, "ftp://127.0.0.1", *options)
    assert (code, out) == (3, "")
    assert_one_line_error(err, "invalid URL")

    url, _ = server(token="s3cret")
    code, out, err = cli(command, url, *options)
    assert (code, out) == (3, "")
    assert_one_line_error(err, "401", "--token or ASGI_PERF_TOKEN")


def test_the_token_opens_the_memory_commands(
    server: Any, cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = server(token="s3cret")
    code, out, err = cli("memory", url, "--token", "s3cret", "--json")
    assert (code, err) == (0, "") and json.loads(out)["schema"] == 1
    monkeypatch.setenv("ASGI_PERF_TOKEN", "s3cret")
    code, out, err = cli("memory", url)
    assert (code, err) == (0, "") and "trend: " in out


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("soak", "URL", "--minutes", "0"), "--minutes must be more than 0, got 0"),
        (("soak", "URL", "--minutes", "-1"), "--minutes must be more than 0, got -1"),
        (("soak", "URL", "--minutes", "nan"), "expected a number such as 30 or 2.5, got 'nan'"),
        (("soak", "URL", "--minutes", "1", "--interval", "0"), "--interval must be more than 0"),
        (("soak", "URL", "--minutes", "0.1", "--interval", "5"), "takes 2 points; the slope"),
        (("soak", "URL", "--minutes", "1", "--max-growth", "9 MB/week"), "--max-growth: expected"),
        (("soak", "URL"), "required: --minutes"),
        (("leaks", "URL", "--seconds", "0"), "--seconds must be more than 0, got 0"),
        (("leaks", "URL", "--seconds", "-2"), "--seconds must be more than 0, got -2"),
        (("leaks", "URL", "--seconds", "1", "--top", "0"), "--top must be from 1 to 1000, got 0"),
        (("leaks", "URL", "--seconds", "1", "--frames", "0"), "--frames must be at least 1"),
        (("leaks", "URL", "--seconds", "1", "--group-by", "line"), "invalid choice: 'line'"),
        (("leaks", "URL"), "required: --seconds"),
        (("memory", "URL", "--count", "2"), "--count and --interval go with --watch"),
        (("memory", "URL", "--watch", "--count", "0"), "--count must be at least 1, got 0"),
        (("memory", "URL", "--watch", "--interval", "-1"), "--interval must be more than 0"),
        (("memory",), "required: URL"),
    ],
)
def test_bad_input_is_one_line_and_2(cli: Run, args: tuple[str, ...], fragment: str) -> None:
    # Checked before the app is asked: the URL is never reached.
    url = f"http://127.0.0.1:{closed_port()}"
    code, out, err = cli(*(url if a == "URL" else a for a in args))
    assert (code, out) == (2, "")
    assert_one_line_error(err, fragment)


def test_help_lists_the_memory_commands(cli: Run) -> None:
    code, out, _ = cli("--help")
    assert code == 0
    for name in ("memory", "soak", "leaks"):
        assert f"    {name} " in out
    code, out, _ = cli("soak", "--help")
    assert code == 0 and "--max-growth" in out and "exit 130" in out
