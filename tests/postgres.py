"""A real PostgreSQL server for the tests: a private cluster, started once per session.

The server is Debian's ``postgresql`` package (``/usr/lib/postgresql/<v>/bin``;
``initdb`` and ``pg_ctl`` on PATH also do). ``initdb`` makes a new cluster in
a temporary directory; the server listens on 127.0.0.1 only, on a free port,
with its unix socket in that directory (not the system's
``/var/run/postgresql``), and a random password for its one user. At the end
of the session it is stopped and the directory removed, also when a test or
the start itself failed. Without the binaries the tests that need it skip and
name the package.

PostgreSQL refuses to run as root. Under root (a CI container) the cluster
belongs to an unprivileged account, ``postgres`` when the package made one,
else ``nobody``, and ``initdb``/``pg_ctl`` run as it via ``runuser`` or
``setpriv``.

Registered from ``tests/conftest.py``: ask for ``postgres_dsn``, a
``postgresql://user:password@127.0.0.1:port/postgres`` URL that asyncpg and
psycopg both take.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_HINT = "apt-get install postgresql (Debian, Ubuntu)"
SUPERUSER = "asgi_perf"
START_TIMEOUT_S = 60
COMMAND_TIMEOUT_S = 120
# pg_ctl says "could not bind" when another process took the free port first.
START_ATTEMPTS = 3
# A throwaway cluster: durability only costs time here.
SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "100",
    "shared_buffers": "'32MB'",
    "log_min_messages": "warning",
}


def postgres_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<v>/bin`` with initdb and pg_ctl, else PATH's."""

    def version(path: Path) -> tuple[int, ...]:
        name = path.parent.name
        return tuple(int(p) for p in name.split(".")) if name.replace(".", "").isdigit() else ()

    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PostgresCluster:
    """One ``initdb`` cluster in ``root``; ``start()`` then ``stop()``, then ``remove()``."""

    bindir: Path
    root: Path
    run_as: list[str]  # a prefix (runuser / setpriv) when the server must not run as root
    password: str
    port: int = 0

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    @property
    def dsn(self) -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        # cwd: the unprivileged account may not be allowed into the test's cwd.
        return subprocess.run(
            [*self.run_as, *args],
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            env={**os.environ, "LC_ALL": "C", "PGTZ": "UTC"},
            check=False,
        )

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def init(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        self._own(pwfile)
        # scram on every connection, so the cluster is no open door for
        # another local user for as long as the session runs.
        done = self._run(
            str(self.bindir / "initdb"),
            "--pgdata", str(self.data), "--username", SUPERUSER, "--pwfile", str(pwfile),
            "--auth", "scram-sha-256", "--encoding", "UTF8", "--locale", "C", "--no-sync",
        )  # fmt: skip
        pwfile.unlink()
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        socket_dir = self.root / "socket"
        socket_dir.mkdir()
        self._own(socket_dir)
        settings = {**SERVER_SETTINGS, "unix_socket_directories": f"'{socket_dir}'"}
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# tests/postgres.py\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def start(self) -> None:
        """Start on a free loopback port; retried when another process took the port."""
        for _attempt in range(START_ATTEMPTS):
            self.port = _free_port()
            done = self._run(
                str(self.bindir / "pg_ctl"), "start", "--pgdata", str(self.data),
                "--log", str(self.log), "--wait", "--timeout", str(START_TIMEOUT_S),
                "--options", f"-p {self.port}",
            )  # fmt: skip
            if done.returncode == 0:
                return
            # pg_ctl may give up while the postmaster still starts: never leave one behind.
            self.stop()
            if "could not bind" not in self._log_tail():
                break
        raise RuntimeError(
            f"pg_ctl start failed ({done.returncode}):\n{done.stdout}{done.stderr}\n"
            f"server log:\n{self._log_tail()}"
        )

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            # immediate: nothing in a throwaway cluster needs a clean checkpoint.
            self._run(
                str(self.bindir / "pg_ctl"), "stop", "--pgdata", str(self.data),
                "--mode", "immediate", "--wait",
            )  # fmt: skip

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def _own(self, path: Path) -> None:
        if self.run_as:
            user = pwd.getpwnam(_server_account())
            os.chown(path, user.pw_uid, user.pw_gid)


def _server_account() -> str:
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise LookupError("neither a 'postgres' nor a 'nobody' account exists")


def _run_as_prefix() -> list[str]:
    """How to run the server's programs: as is, or as an unprivileged account under root."""
    if os.geteuid() != 0:
        return []
    try:
        name = _server_account()
    except LookupError as exc:
        pytest.skip(f"PostgreSQL refuses to run as root, and {exc}")
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", name, "--"]
    setpriv = shutil.which("setpriv")
    if setpriv:
        user = pwd.getpwnam(name)
        return [
            setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--",
        ]  # fmt: skip
    pytest.skip("PostgreSQL refuses to run as root, and neither runuser nor setpriv is here")


@contextlib.contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A started private cluster; stopped and removed on the way out, whatever happened."""
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip(f"needs PostgreSQL's server (initdb, pg_ctl): {PACKAGE_HINT}")
    run_as = _run_as_prefix()
    # Not pytest's tmp_path: its base is private to the user running pytest,
    # which the server's account may not be.
    root = Path(tempfile.mkdtemp(prefix="asgi-perf-pg-"))
    cluster = PostgresCluster(bindir, root, run_as, secrets.token_urlsafe(18))
    try:
        cluster._own(root)
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            cluster.remove()


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """``postgresql://...@127.0.0.1:<port>/postgres`` of a private server for this session."""
    with postgres_cluster() as cluster:
        yield cluster.dsn
