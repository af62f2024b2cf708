"""The workers of one server, answering as one: state shared through a directory.

Each worker of ``uvicorn --workers N`` or gunicorn writes its numbers (its
counts and histograms) to ``worker-<pid>.state`` in the shared directory,
atomically, every ``interval_s`` when they changed, and when asked. Any
worker that answers ``/_perf/stats`` merges its own live numbers with the
files of the others (``merge_snapshots``: exact). A worker that died keeps
its file, so its requests stay in the totals until a reset.

Two small control files carry requests between workers, read by a thread
in each that looks every ``_POLL_S``: ``flush`` (its mtime: write your state
now, so an answer counts every request served so far) and ``reset`` (a
generation number: clear your numbers).
"""

from __future__ import annotations

import logging
import marshal
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from asgi_perf.storage.disk import atomic_write

logger = logging.getLogger("asgi_perf")

_POLL_S = 0.1
_PREFIX = "worker-"
# marshal, not JSON: a sixth of the time to write and a fifth to read (the
# histograms are most of it). The files are written and read by the workers
# of one server (one interpreter) in a directory only this user may write.
_SUFFIX = ".state"
# Servers whose workers find one another without a shared_dir.
_SERVERS = ("uvicorn", "gunicorn")

State = Callable[[], dict[str, Any]]


def server_directory() -> Path | None:
    """A private directory for the workers of this process's server, if it has any.

    A worker of ``uvicorn --workers N`` (or ``--reload``) or of gunicorn is a
    child of the server's supervisor process, whose command line names the
    server. The directory is named after that parent's pid and start time,
    so the workers of one server meet there and two servers never do (nor
    a later server that got the same pid).
    """
    try:
        parent = psutil.Process().parent()
        if parent is None:
            return None
        command = " ".join(parent.cmdline())
        if not any(server in command for server in _SERVERS):
            return None
        started = int(parent.create_time() * 1000)
        return Path(tempfile.gettempdir()) / f"asgi_perf-{parent.pid}-{started}"
    except (psutil.Error, OSError):
        return None


class Workers:
    """This worker's part of the shared directory, and the others' as read from it."""

    def __init__(
        self,
        directory: Path,
        state: State,
        reset: Callable[[], None],
        on_error: Callable[[str, BaseException], None],
        *,
        interval_s: float = 1.0,
    ) -> None:
        self.directory = directory
        self._state = state
        self._reset = reset
        self._on_error = on_error
        self.interval_s = interval_s
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._stop = threading.Event()
        self._written_at = 0.0
        self._written_requests: tuple[int, int] = (-1, -1)
        self._flush_seen = 0
        self._generation = 0
        self.flushes = 0
        self.cpu_s = 0.0
        self._started = 0.0
        self._created = 0.0
        self._lock = threading.Lock()
        # More work for the poll thread (server windows, profile exports).
        self.hooks: list[Callable[[], None]] = []
        # What else this worker shares: its stored profiles' metadata.
        self.profiles: Callable[[], list[Any]] = list

    # -- this worker

    def start(self) -> None:
        """Start (or, in a forked child, restart) this worker's writer thread."""
        pid = os.getpid()
        if self._pid == pid and self._thread is not None and self._thread.is_alive():
            return
        self._pid = pid
        self._created = _create_time(pid)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        found = self.directory.stat()
        if found.st_uid != os.getuid() or found.st_mode & 0o022:
            raise PermissionError(
                f"{self.directory} is not this user's alone (owner uid {found.st_uid}, "
                f"mode {found.st_mode & 0o777:o}): not sharing numbers through it"
            )
        self._generation = self._read_generation()
        self._flush_seen = self._mtime("flush")
        self._stop.clear()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="asgi_perf-workers", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Write the last state and stop (at shutdown)."""
        self._stop.set()
        if self._pid == os.getpid():
            self.write()

    def _run(self) -> None:
        while not self._stop.wait(_POLL_S):
            c0 = time.thread_time()
            try:
                self._tick()
            except Exception as exc:
                self._on_error("workers", exc)
            self.cpu_s += time.thread_time() - c0

    def _tick(self) -> None:
        for hook in self.hooks:
            hook()
        if self.catch_up():
            return
        asked = self._mtime("flush")
        if asked != self._flush_seen:
            self._flush_seen = asked
            self.write()
        elif time.monotonic() - self._written_at >= self.interval_s:
            self.write(only_if_changed=True)

    def catch_up(self) -> bool:
        """Reset this worker if another asked for a reset since; True if it did.

        The poll thread does it within ``_POLL_S``; an answer does it first,
        so that a worker never answers with numbers a reset has cleared.
        """
        with self._lock:
            generation = self._read_generation()
            if generation == self._generation:
                return False
            self._generation = generation
            self._reset()
            self.write()
            return True

    def write(self, *, only_if_changed: bool = False) -> None:
        """Write this worker's state file (atomically)."""
        state = self._state()
        requests = int(state.get("requests", 0))
        self._written_at = time.monotonic()
        profiles = self.profiles()
        if only_if_changed and (requests, len(profiles)) == self._written_requests:
            return
        self._written_requests = (requests, len(profiles))
        body = {
            "pid": os.getpid(),
            "created": self._created,
            "written": time.time(),
            "flush": self._flush_seen,
            "generation": self._generation,
            "snapshot": state,
            "profiles": profiles,
        }
        atomic_write(self._file(os.getpid()), marshal.dumps(body))
        self.flushes += 1

    # -- all of them

    def others(self) -> list[dict[str, Any]]:
        """The state files of the other workers, newest data as written."""
        out = []
        own = os.getpid()
        for path in sorted(self.directory.glob(f"{_PREFIX}*{_SUFFIX}")):
            try:
                body = marshal.loads(path.read_bytes())
            except (OSError, ValueError, EOFError, TypeError):
                continue  # half-gone or being replaced: the next answer has it
            if isinstance(body, dict) and body.get("pid") != own:
                out.append(body)
        return out

    def ask_flush(self) -> float:
        """Ask every worker to write its state now; returns when it was asked."""
        path = self.directory / "flush"
        path.touch()
        now = time.time_ns()
        os.utime(path, ns=(now, now))
        return now / 1e9

    def flushed_since(self, asked: float) -> bool:
        """Whether every live worker has written since ``asked``, after the last reset."""
        generation = self._read_generation()
        for body in self.others():
            if not _alive(body):
                continue
            if float(body.get("written", 0.0)) < asked or body.get("generation") != generation:
                return False
        return True

    def reset_all(self) -> None:
        """Clear every worker's numbers: live ones reset, dead ones' files go."""
        generation = time.time_ns()
        atomic_write(self.directory / "reset", str(generation).encode())
        for body in self.others():
            if not _alive(body):
                self._file(int(body["pid"])).unlink(missing_ok=True)
        self._generation = generation
        self._reset()
        self.write()

    def describe(self, own_requests: int) -> list[dict[str, Any]]:
        """``workers`` of a server snapshot: pid, alive, requests, last_flush_s."""
        now = time.time()
        rows = [{"pid": os.getpid(), "alive": True, "requests": own_requests, "last_flush_s": 0.0}]
        for body in self.others():
            snapshot = body.get("snapshot") or {}
            rows.append(
                {
                    "pid": int(body.get("pid", 0)),
                    "alive": _alive(body),
                    "requests": int(snapshot.get("requests", 0)),
                    "last_flush_s": round(max(0.0, now - float(body.get("written", now))), 3),
                }
            )
        return sorted(rows, key=lambda r: r["pid"])

    def live_pids(self) -> list[int]:
        return [os.getpid()] + [int(b["pid"]) for b in self.others() if _alive(b)]

    def stats(self) -> dict[str, Any]:
        """This worker's side of the sharing: its writes and the CPU they took."""
        elapsed = time.monotonic() - self._started if self._started else 0.0
        return {
            "dir": str(self.directory),
            "flush_interval_s": self.interval_s,
            "flushes": self.flushes,
            "cpu_s": round(self.cpu_s, 4),
            "cpu_share": round(self.cpu_s / elapsed, 5) if elapsed > 0 else 0.0,
        }

    def _file(self, pid: int) -> Path:
        return self.directory / f"{_PREFIX}{pid}{_SUFFIX}"

    def _mtime(self, name: str) -> int:
        try:
            return (self.directory / name).stat().st_mtime_ns
        except OSError:
            return 0

    def _read_generation(self) -> int:
        try:
            return int((self.directory / "reset").read_bytes() or b"0")
        except (OSError, ValueError):
            return 0


def _create_time(pid: int) -> float:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return 0.0


def _alive(body: dict[str, Any]) -> bool:
    """The worker that wrote ``body`` still runs (the same process, not a reused pid)."""
    pid = int(body.get("pid", 0))
    created = float(body.get("created", 0.0))
    try:
        return pid > 0 and abs(psutil.Process(pid).create_time() - created) < 1.0
    except psutil.Error:
        return False
