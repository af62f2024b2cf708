"""The base tree (a git worktree in a temp dir) and the processes the gate starts.

Both are cleaned up on every way out: normal end, an error, Ctrl-C and
SIGTERM (``gate.py`` turns SIGTERM into SystemExit so ``finally`` runs).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from benchmarks._gate_report import GateError

STOP_TIMEOUT_S = 5.0


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False
    )


def resolve_ref(repo: Path, ref: str) -> str:
    """The commit ``ref`` names; GateError if it names none."""
    proc = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if proc.returncode != 0 or not proc.stdout.strip():
        raise GateError(f"base ref {ref!r} names no commit in {repo} (fetch it, or set BASE=<ref>)")
    return proc.stdout.strip()


def default_base(repo: Path) -> str:
    """``origin/main`` when the clone has it (CI, a fetched clone), else ``main``."""
    if _git(repo, "rev-parse", "--verify", "--quiet", "origin/main^{commit}").returncode == 0:
        return "origin/main"
    return "main"


def copy_tree(repo: Path, dest: Path) -> None:
    """The files of ``repo``'s working tree as they are now, tracked or new, into ``dest``.

    Ignored files (``__pycache__``, ``.venv``, results) are left out. The
    branch is measured from such a copy beside the base's worktree, not
    where it lies: under callgrind, two copies of the same code whose paths
    differ in length (they are in PYTHONPATH, hence in the environment)
    differ by ~0.3 % of their instructions per request (memcpy and the
    allocator meet other alignments), as much as a real change.
    """
    proc = _git(repo, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    if proc.returncode != 0:
        raise GateError(f"git ls-files in {repo} failed: {proc.stderr.strip()[-500:]}")
    for name in filter(None, proc.stdout.split("\0")):
        source = repo / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the working tree, not yet in the index
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)


@contextmanager
def worktree(repo: Path, ref: str) -> Iterator[tuple[Path, Path]]:
    """A temp dir holding ``base/``, a detached worktree of ``ref``, and ``head/``,
    a copy of ``repo``'s working tree (see ``copy_tree``); removed (and the
    worktree pruned) on exit."""
    commit = resolve_ref(repo, ref)
    scratch = Path(tempfile.mkdtemp(prefix="bench-gate-"))
    tree, head = scratch / "base", scratch / "head"
    try:
        proc = _git(repo, "worktree", "add", "--detach", str(tree), commit)
        if proc.returncode != 0:
            raise GateError(f"git worktree add {ref} failed: {proc.stderr.strip()[-500:]}")
        copy_tree(repo, head)
        yield tree, head
    finally:
        _git(repo, "worktree", "remove", "--force", str(tree))
        shutil.rmtree(scratch, ignore_errors=True)
        # Drops the worktree's record even when the directory went first.
        _git(repo, "worktree", "prune")


def tree_env(tree: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment that makes one venv run ``tree``'s asgi_perf and benchmarks."""
    env = dict(os.environ)
    # The venv may hold an editable install of either tree: PYTHONPATH wins over it.
    env["PYTHONPATH"] = str(tree)
    env.update(extra or {})
    return env


class Processes:
    """Every child the gate starts, each in its own session so that stopping
    it stops what it started too (Locust's workers, valgrind's child)."""

    def __init__(self) -> None:
        self._live: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()
        self._closed = False

    def start(
        self, cmd: Sequence[str], *, cwd: Path, env: Mapping[str, str], log: Path
    ) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if self._closed:
                raise GateError("the gate is stopping: no new process")
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    list(cmd), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            self._live.add(proc)
        return proc

    def run(
        self, cmd: Sequence[str], *, cwd: Path, env: Mapping[str, str], log: Path, timeout: float
    ) -> int:
        """Runs ``cmd`` to its end, output into ``log``; its exit code."""
        proc = self.start(cmd, cwd=cwd, env=env, log=log)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise GateError(f"{cmd[0]} ... ran past {timeout:.0f} s (log: {log})") from None
        finally:
            self.stop(proc)

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        with self._lock:
            self._live.discard(proc)

    def stop_all(self) -> None:
        """Stops every live child and refuses new ones (the gate is ending)."""
        with self._lock:
            self._closed = True
            live = list(self._live)
        for proc in live:
            self.stop(proc)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
