"""The pyspy engine: the real py-spy program sampling this very test process.

A thread burns CPU in a function only these tests have, py-spy samples the
process from outside, and the capture must name that function with its
file and line and render in every format. The refusals are real too: a pid
that no longer exists, a program that refuses like py-spy without ptrace
permission, a py-spy that is not there. No child process may be left behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from helpers import function_names, load_stats
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from asgi_perf.capture import Capture, FrameId
from asgi_perf.engines import load_engine
from asgi_perf.engines.pyspy_impl import PyspyEngine, find_executable, parse_raw
from asgi_perf.errors import EngineUnavailable
from asgi_perf.renderers import RENDERERS

PYSPY = find_executable()
needs_pyspy = pytest.mark.skipif(PYSPY is None, reason="py-spy is not installed")
WINDOW_S = 1.0
# Two real lines of `py-spy record --format raw --full-filenames --function`
# (py-spy 0.4.3, Python 3.11), the second with --native; then the shapes a
# frame may also take: no place at all, a C++ name, a C file with a line.
RAW = (
    "Thread._bootstrap (/usr/lib/python3.11/threading.py:988);"
    "Thread.run (/usr/lib/python3.11/threading.py:971);"
    "burn_for_pyspy (/tmp/burn.py:2) 48\n"
    "0x7f3a8df278ec (/usr/lib/x86_64-linux-gnu/libc.so.6);"
    "thread_run (/usr/lib/libpython3.11.so.1.0);"
    "burn_for_pyspy (/tmp/burn.py:2);"
    "clock_gettime (/usr/lib/x86_64-linux-gnu/libc.so.6);"
    "0x7f3a8e7a5b46 ([vdso]) 3\n"
    "<unknown>;std::vector<int>::push_back(int const&) (vector.h);"
    "do_work (Modules/work.c:120) 1\n"
    "\n"
)


def burn_for_pyspy(stop: threading.Event) -> int:
    """CPU work that only these tests do, until ``stop`` is set."""
    total = 0
    while not stop.is_set():
        for i in range(2_000):
            total += i * i
    return total


class Burner:
    """A thread running ``burn_for_pyspy`` until stopped."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=burn_for_pyspy, args=(self._stop,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def burning() -> Iterator[Burner]:
    """A thread burning CPU in ``burn_for_pyspy`` until the test ends or stops it.

    While it holds the GIL the test's own thread waits for it at every
    system call: stop it before reading /proc with psutil (seconds, else).
    """
    burner = Burner()
    yield burner
    burner.stop()


@pytest.fixture
def own_tempdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the engine's temporary files go, to check they are deleted."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


def pyspy_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if "py-spy" in p.name()]


def burn_frame() -> FrameId:
    code = burn_for_pyspy.__code__
    return FrameId("burn_for_pyspy", code.co_filename, code.co_firstlineno)


def frames_of(capture: Capture) -> set[FrameId]:
    return {frame for stack in capture.stacks for frame in stack}


# --------------------------------------------------------------- sampling


@needs_pyspy
@pytest.mark.slow
def test_window_names_the_busy_function_with_its_file_and_line(
    burning: Burner, own_tempdir: Path
) -> None:
    before = time.perf_counter()
    recording = PyspyEngine().start_window(0.01)
    time.sleep(WINDOW_S)
    capture = recording.stop()
    elapsed = time.perf_counter() - before
    burning.stop()
    recording.abort()  # after stop: nothing left to do

    assert capture.engine == "pyspy"
    assert burn_frame() in frames_of(capture)
    assert capture.meta["samples"] > 0
    assert capture.meta["interval_s"] == pytest.approx(0.01)
    assert capture.meta["native"] is False
    assert capture.total_s == pytest.approx(capture.meta["samples"] * 0.01)
    assert WINDOW_S <= capture.duration_s <= elapsed
    # About one sample per interval: only the burning thread is busy, and
    # idle threads (this one, sleeping) are not sampled.
    assert 20 <= capture.meta["samples"] <= 1.5 * capture.duration_s / 0.01
    assert all(stack for stack in capture.stacks)
    assert not pyspy_children()
    assert list(own_tempdir.iterdir()) == []


@needs_pyspy
@pytest.mark.slow
def test_capture_renders_in_every_format(burning: Burner, tmp_path: Path) -> None:
    recording = PyspyEngine().start_window(0.005)
    time.sleep(WINDOW_S)
    capture = recording.stop()

    for fmt, renderer in RENDERERS.items():
        assert renderer.render(capture), fmt
    collapsed = RENDERERS["collapsed"].render(capture).decode()
    assert "burn_for_pyspy" in collapsed
    stats = load_stats(RENDERERS["prof"].render(capture), tmp_path)
    assert "burn_for_pyspy" in function_names(stats)
    key = (burn_frame().file, burn_frame().line, "burn_for_pyspy")
    assert key in stats.stats  # type: ignore[attr-defined]


@needs_pyspy
@pytest.mark.slow
def test_native_window_has_native_frames(burning: Burner) -> None:
    recording = PyspyEngine(native=True).start_window(0.01)
    assert "--native" in recording.command
    # py-spy refuses --native with --nonblocking.
    assert "--nonblocking" not in recording.command
    time.sleep(WINDOW_S)
    capture = recording.stop()

    assert capture.meta["native"] is True
    assert capture.meta["samples"] > 0
    frames = frames_of(capture)
    assert any(f.function == "burn_for_pyspy" for f in frames)
    assert any(not f.file.endswith(".py") for f in frames), "no native frame"


@needs_pyspy
@pytest.mark.slow
def test_window_of_a_live_server_sees_its_endpoint(live_server: Any) -> None:
    def burn_in_endpoint(ms: float) -> int:
        total = 0
        end = time.perf_counter() + ms / 1000
        while time.perf_counter() < end:
            total += sum(i * i for i in range(500))
        return total

    async def cpu(request: Request) -> Response:
        return JSONResponse({"total": burn_in_endpoint(20)})

    server = live_server(Starlette(routes=[Route("/cpu", cpu)]))
    recording = load_engine("pyspy").start_window(0.005)
    assert recording is not None
    with httpx.Client(base_url=server.url, trust_env=False) as client:
        deadline = time.monotonic() + WINDOW_S
        while time.monotonic() < deadline:
            assert client.get("/cpu").status_code == 200
    capture = recording.stop()

    assert any(f.function.endswith("burn_in_endpoint") for f in frames_of(capture))


def test_start_request_is_always_none() -> None:
    assert PyspyEngine().start_request() is None


def test_rate_hz_is_checked_at_construction() -> None:
    with pytest.raises(ValueError, match="rate_hz"):
        PyspyEngine(rate_hz=0)
    with pytest.raises(ValueError, match="rate_hz"):
        PyspyEngine(rate_hz=5000)


# ----------------------------------------------------------------- ending


@needs_pyspy
@pytest.mark.slow
def test_abort_leaves_no_process_and_no_file(own_tempdir: Path) -> None:
    recording = PyspyEngine().start_window(0.0001)
    assert recording.command[recording.command.index("--rate") + 1] == "1000"  # the most
    (child,) = pyspy_children()
    time.sleep(0.2)
    recording.abort()
    recording.abort()  # twice is harmless
    with pytest.raises(RuntimeError, match="already ended"):
        recording.stop()

    assert not child.is_running()
    assert not pyspy_children()
    assert list(own_tempdir.iterdir()) == []


@needs_pyspy
@pytest.mark.slow
def test_a_dropped_recording_is_cleaned_up(own_tempdir: Path) -> None:
    recording = PyspyEngine().start_window(0.5)
    assert recording.command[recording.command.index("--rate") + 1] == "2"
    del recording

    assert not pyspy_children()
    assert list(own_tempdir.iterdir()) == []


@needs_pyspy
@pytest.mark.slow
def test_a_target_that_exits_during_the_window_gives_an_empty_capture() -> None:
    # py-spy ends by itself with what it has: a program that only sleeps
    # has no busy thread, so nothing (idle threads are not sampled).
    script = "import time; print('up', flush=True); time.sleep(0.5)"
    target = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert target.stdout is not None
        target.stdout.readline()  # the interpreter is up: py-spy can find its version
        recording = PyspyEngine(pid=target.pid).start_window(0.01)
        target.wait(5)
        time.sleep(0.2)
        capture = recording.stop()
    finally:
        target.kill()
        target.wait()
        if target.stdout is not None:
            target.stdout.close()
    assert capture.stacks == {}
    assert capture.meta["samples"] == 0
    assert not pyspy_children()


# --------------------------------------------------------------- refusals


def test_missing_program_names_the_pip_command(own_tempdir: Path, tmp_path: Path) -> None:
    engine = PyspyEngine(executable=str(tmp_path / "no-such-dir" / "py-spy"))
    with pytest.raises(EngineUnavailable, match=r"pip install 'asgi-perf\[pyspy\]'"):
        engine.start_window(0.01)
    assert list(own_tempdir.iterdir()) == []


def test_no_pyspy_on_path_nor_beside_the_interpreter(
    own_tempdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-venv" / "bin" / "python"))
    assert find_executable() is None
    with pytest.raises(EngineUnavailable, match="pip install py-spy"):
        PyspyEngine().start_window(0.01)


def fake_pyspy(tmp_path: Path, script: str) -> str:
    """A program called py-spy that behaves as ``script`` (sh) says."""
    program = tmp_path / "bin" / "py-spy"
    program.parent.mkdir()
    program.write_text(f"#!/bin/sh\n{script}")
    program.chmod(0o755)
    return str(program)


def test_ptrace_refusal_says_how_to_allow_it(own_tempdir: Path, tmp_path: Path) -> None:
    # What py-spy 0.4.3 prints, in full, when the kernel refuses ptrace.
    program = fake_pyspy(
        tmp_path,
        "echo \"Permission Denied: Try running again with elevated permissions by going 'sudo "
        'env "PATH=$PATH" !!\'" >&2\n'
        "exit 1\n",
    )
    started = time.monotonic()
    with pytest.raises(EngineUnavailable) as caught:
        PyspyEngine(executable=program).start_window(0.01)

    message = str(caught.value)
    assert f"could not profile pid {os.getpid()}: Permission Denied" in message
    assert "SYS_PTRACE" in message
    assert "ptrace_scope" in message
    assert time.monotonic() - started < 2
    assert not pyspy_children()
    assert list(own_tempdir.iterdir()) == []


@needs_pyspy
@pytest.mark.slow
def test_a_pid_that_is_gone_is_refused_with_pyspys_error(own_tempdir: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with pytest.raises(EngineUnavailable) as caught:
        PyspyEngine(pid=gone.pid).start_window(0.01)

    message = str(caught.value)
    assert f"py-spy could not profile pid {gone.pid}: " in message
    assert "backtrace" not in message.lower()
    assert "SYS_PTRACE" not in message  # not a permission problem
    assert not pyspy_children()
    assert list(own_tempdir.iterdir()) == []


@pytest.mark.slow
def test_a_pyspy_that_never_starts_sampling_is_killed(own_tempdir: Path, tmp_path: Path) -> None:
    program = fake_pyspy(tmp_path, "echo 'py-spy> attaching' >&2\nwhile :; do sleep 0.05; done\n")
    with pytest.raises(
        EngineUnavailable, match=r"did not start sampling .* 2\.0 s: py-spy> attaching"
    ):
        PyspyEngine(executable=program).start_window(0.01)
    assert not pyspy_children()
    assert list(own_tempdir.iterdir()) == []


def test_a_failure_at_stop_is_an_error_naming_pyspys_message(
    own_tempdir: Path, tmp_path: Path
) -> None:
    # Starts sampling, then fails at SIGINT without writing its file.
    program = fake_pyspy(
        tmp_path,
        'echo "py-spy> Sampling process 100 times a second. Press Control-C to exit." >&2\n'
        "trap 'echo \"Error: could not write the profile\" >&2; exit 1' INT\n"
        "while :; do sleep 0.02; done\n",
    )
    recording = PyspyEngine(executable=program).start_window(0.01)
    assert pyspy_children()
    with pytest.raises(RuntimeError, match=r"exit status 1\): could not write the profile$"):
        recording.stop()
    assert not pyspy_children()
    assert list(own_tempdir.iterdir()) == []


# ---------------------------------------------------------------- parsing


def test_raw_lines_become_frames_root_first() -> None:
    stacks, samples = parse_raw(RAW, 0.01)

    assert samples == 52
    threading_py = "/usr/lib/python3.11/threading.py"
    burn = FrameId("burn_for_pyspy", "/tmp/burn.py", 2)
    python_only = (
        FrameId("Thread._bootstrap", threading_py, 988),
        FrameId("Thread.run", threading_py, 971),
        burn,
    )
    assert stacks[python_only] == pytest.approx(0.48)
    native = (
        FrameId("0x7f3a8df278ec", "/usr/lib/x86_64-linux-gnu/libc.so.6", 0),
        FrameId("thread_run", "/usr/lib/libpython3.11.so.1.0", 0),
        burn,
        FrameId("clock_gettime", "/usr/lib/x86_64-linux-gnu/libc.so.6", 0),
        FrameId("0x7f3a8e7a5b46", "[vdso]", 0),
    )
    assert stacks[native] == pytest.approx(0.03)
    odd = (
        FrameId("<unknown>", "", 0),
        FrameId("std::vector<int>::push_back(int const&)", "vector.h", 0),
        FrameId("do_work", "Modules/work.c", 120),
    )
    assert stacks[odd] == pytest.approx(0.01)
    assert len(stacks) == 3
