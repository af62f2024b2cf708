"""py-spy: the whole process sampled from outside, by a py-spy subprocess.

py-spy reads the interpreter's memory from another process, so the app
runs no profiling code at all and every thread is seen; with ``native``
the C frames below and between Python frames too. Reading another
process's memory needs ptrace permission, which containers often lack:
a refusal is an :class:`EngineUnavailable` at start that says how to
allow it. py-spy knows nothing of requests, so it only profiles windows.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

from asgi_perf.capture import Capture, FrameId, Stack
from asgi_perf.engines.base import Capabilities
from asgi_perf.errors import EngineUnavailable

_MAX_RATE_HZ = 1000
# py-spy prints this line once it has attached and the first sample is due
# (after 30-190 ms when measured); a refusal exits instead, after about 0.4 s
# (py-spy retries a few times): the limit leaves that room on a busy machine.
_STARTED = b"Sampling process"
_START_TIMEOUT_S = 2.0
# After SIGINT py-spy writes its file and exits: 10-80 ms when measured.
_STOP_TIMEOUT_S = 10.0
_KILL_TIMEOUT_S = 5.0
_INSTALL = "pip install 'asgi-perf[pyspy]' (or: pip install py-spy)"
_PTRACE_FIX = (
    "py-spy needs permission to read another process's memory (ptrace): run the "
    "server as root, or allow it with `sysctl kernel.yama.ptrace_scope=0`, or in "
    "Docker start the container with `--cap-add SYS_PTRACE`"
)
_REFUSALS = ("permission", "not permitted", "ptrace")


class PyspyEngine:
    """py-spy on this server's own pid, for time windows only.

    Non-blocking by default: the process is never paused, at the price of
    an occasional torn stack. py-spy refuses ``--native`` with
    ``--nonblocking``, so a native window pauses the process for every sample.
    """

    name = "pyspy"
    capabilities = Capabilities(async_aware=False, threads=True, clock="wall", exact_stacks=True)

    def __init__(
        self,
        rate_hz: int = 100,
        native: bool = False,
        *,
        executable: str | None = None,
        pid: int | None = None,
    ) -> None:
        """``executable`` None: found at each start; ``pid`` None: this process's."""
        if isinstance(rate_hz, bool) or not 1 <= rate_hz <= _MAX_RATE_HZ:
            raise ValueError(f"py-spy rate_hz must be 1 to {_MAX_RATE_HZ}, got {rate_hz!r}")
        self.rate_hz = rate_hz
        self.native = native
        self.executable = executable
        self.pid = pid

    def start_request(self) -> None:
        """Always None: py-spy samples the whole process, it cannot tell requests apart."""
        return None

    def start_window(self, interval_s: float, *, native: bool | None = None) -> _PyspyRecording:
        """Start py-spy on the process; :class:`EngineUnavailable` if it cannot run.

        It samples every ``interval_s`` (at most 1000 times a second), or
        ``rate_hz`` times a second when ``interval_s`` is 0.
        """
        rate = min(max(round(1 / interval_s), 1), _MAX_RATE_HZ) if interval_s > 0 else self.rate_hz
        executable = self.executable or find_executable()
        if executable is None:
            raise EngineUnavailable(
                "engine 'pyspy' needs the py-spy program, which is not on PATH nor next "
                f"to {sys.executable}: {_INSTALL}"
            )
        # The pid is read at each start, not at construction: a worker forked
        # after the engine was made profiles itself, not its parent.
        pid = os.getpid() if self.pid is None else self.pid
        return _PyspyRecording(
            executable, pid, rate, native=self.native if native is None else native
        )


def find_executable() -> str | None:
    """The py-spy program: on PATH, else beside this interpreter (an unactivated venv)."""
    found = shutil.which("py-spy")
    if found is not None:
        return found
    for name in ("py-spy", "py-spy.exe"):
        candidate = Path(sys.executable).parent / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


class _PyspyRecording:
    def __init__(self, executable: str, pid: int, rate_hz: int, *, native: bool) -> None:
        self._pid = pid
        self._interval_s = 1 / rate_hz
        self._native = native
        directory = Path(tempfile.mkdtemp(prefix="asgi_perf-pyspy-"))
        self._output = directory / "profile.txt"
        self._log = directory / "py-spy.log"
        command = [executable, "record", "--pid", str(pid), "--rate", str(rate_hz)]
        command += ["--format", "raw", "--output", str(self._output)]
        # Full file names and each function's first line: frames then name
        # functions the way pstats and the other engines do.
        command += ["--full-filenames", "--function"]
        command += ["--native"] if native else ["--nonblocking"]
        self.command = command
        # An error is one line, not a Rust backtrace, whatever the environment says.
        env = {**os.environ, "RUST_BACKTRACE": "0", "RUST_LIB_BACKTRACE": "0"}
        try:
            with self._log.open("wb") as log:
                # A session of its own: a Ctrl-C at the terminal reaches only
                # the server, which stops py-spy when it is done (a lifespan
                # profile then covers the shutdown too).
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
        except OSError as exc:
            shutil.rmtree(directory, ignore_errors=True)
            raise EngineUnavailable(
                f"could not run py-spy ({executable}): {exc}. {_INSTALL}"
            ) from exc
        self._process = process
        # Kills py-spy and deletes its files however this recording ends:
        # stop, abort, garbage collection or interpreter exit.
        self._discard = weakref.finalize(self, _discard, process, directory)
        try:
            self._wait_until_sampling()
        except BaseException:
            self._discard()
            raise
        self._started = time.perf_counter()

    def _wait_until_sampling(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while _STARTED not in self._log_bytes():
            if self._process.poll() is not None:
                error = _error_line(self._log_bytes())
                self._discard()
                refused = any(r in error.lower() for r in _REFUSALS)
                fix = f"; {_PTRACE_FIX}" if refused else ""
                raise EngineUnavailable(f"py-spy could not profile pid {self._pid}: {error}{fix}")
            if time.monotonic() > deadline:
                error = _error_line(self._log_bytes())
                self._discard()
                raise EngineUnavailable(
                    f"py-spy did not start sampling pid {self._pid} within "
                    f"{_START_TIMEOUT_S} s: {error or 'no output'}"
                )
            time.sleep(0.01)

    def stop(self) -> Capture:
        """SIGINT makes py-spy write what it sampled and exit; that file becomes the capture."""
        if not self._discard.alive:
            raise RuntimeError("this py-spy recording has already ended")
        try:
            duration = time.perf_counter() - self._started
            if self._process.poll() is None:
                self._process.send_signal(signal.SIGINT)
            try:
                code = self._process.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise RuntimeError(
                    f"py-spy did not stop within {_STOP_TIMEOUT_S} s of SIGINT; killed"
                ) from None
            if code != 0 or not self._output.exists():
                error = _error_line(self._log_bytes()) or "no output"
                raise RuntimeError(f"py-spy failed (exit status {code}): {error}")
            text = self._output.read_text("utf-8", "replace")
        finally:
            self._discard()
        # An empty file is an answer: no thread ran Python code (idle threads
        # are not sampled), and the capture says so with no stacks.
        stacks, samples = parse_raw(text, self._interval_s)
        return Capture(
            engine="pyspy",
            stacks=stacks,
            duration_s=duration,
            meta={"samples": samples, "interval_s": self._interval_s, "native": self._native},
        )

    def abort(self) -> None:
        self._discard()

    def _log_bytes(self) -> bytes:
        try:
            return self._log.read_bytes()
        except OSError:
            return b""


def _discard(process: subprocess.Popen[bytes], directory: Path) -> None:
    """Kill py-spy if it still runs, reap it, delete its files; never raises."""
    try:
        if process.poll() is None:
            process.kill()
        process.wait(_KILL_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        pass
    shutil.rmtree(directory, ignore_errors=True)


def _error_line(log: bytes) -> str:
    """py-spy's error: the ``Error:`` line and its first cause, else its last line."""
    lines = [line.strip() for line in log.decode("utf-8", "replace").splitlines()]
    lines = [line for line in lines if line]
    for i, line in enumerate(lines):
        if line.startswith("Error:"):
            error = line.removeprefix("Error:").strip()
            if i + 2 < len(lines) and lines[i + 1] == "Caused by:":
                error += f" ({lines[i + 2].partition(': ')[2] or lines[i + 2]})"
            return error
    return lines[-1] if lines else ""


def parse_raw(text: str, interval_s: float) -> tuple[dict[Stack, float], int]:
    """Seconds per stack and the sample count from py-spy's ``--format raw``.

    Each line is ``frame;frame;... COUNT``, root first, a frame being
    ``function (file:line)``; native frames may have a library for a file
    and no line, or no place at all.
    """
    cache: dict[str, FrameId] = {}
    counts: dict[Stack, int] = {}
    for line in text.splitlines():
        frames, _, count = line.rpartition(" ")
        if not frames or not count.isdigit():
            continue
        stack = tuple(_frame(f, cache) for f in frames.split(";"))
        counts[stack] = counts.get(stack, 0) + int(count)
    stacks = {stack: n * interval_s for stack, n in counts.items()}
    return stacks, sum(counts.values())


def _frame(text: str, cache: dict[str, FrameId]) -> FrameId:
    hit = cache.get(text)
    if hit is not None:
        return hit
    function, file, line = text, "", 0
    if text.endswith(")"):
        # The last " (": a C++ name has parentheses of its own.
        name, space, place = text[:-1].rpartition(" (")
        if space and name:
            function = name
            path, colon, number = place.rpartition(":")
            if colon and number.isdigit():
                file, line = path, int(number)
            else:
                file = place
    frame = cache[text] = FrameId(function, file, line)
    return frame
