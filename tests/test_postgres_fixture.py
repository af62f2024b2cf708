"""The ``postgres_dsn`` fixture (tests/postgres.py): a real server, on loopback only, cleaned up."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from postgres import postgres_cluster

psycopg = pytest.importorskip("psycopg", reason="needs psycopg: pip install 'psycopg[binary]'")


def _refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        return True
    return False


def _other_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            # No packet leaves: connect() on UDP only picks the outgoing interface.
            sock.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address: str = sock.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_the_server_answers_on_loopback_only(postgres_dsn: str) -> None:
    url = urlsplit(postgres_dsn)
    assert url.hostname == "127.0.0.1"
    assert url.port is not None
    with psycopg.connect(postgres_dsn, connect_timeout=10) as conn:
        row = conn.execute(
            "SELECT 6 * 7, current_setting('listen_addresses'), host(inet_server_addr()),"
            " current_setting('port')::int, current_setting('unix_socket_directories')"
        ).fetchone()
    assert row is not None
    answer, listen, server_addr, port, socket_dir = row
    assert answer == 42
    assert listen == "127.0.0.1"
    assert (server_addr, port) == ("127.0.0.1", url.port)
    # Its socket is in its own directory, not the system's /var/run/postgresql.
    assert socket_dir.startswith("/") and "asgi-perf-pg-" in socket_dir
    other = _other_address()
    if other is not None:
        assert _refused(other, url.port), f"the server answers on {other}"


def test_a_wrong_password_is_refused(postgres_dsn: str) -> None:
    url = urlsplit(postgres_dsn)
    wrong = postgres_dsn.replace(f":{url.password}@", ":not-the-password@")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=10).close()


def test_the_cluster_is_stopped_and_removed_even_when_the_test_fails() -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom), postgres_cluster() as cluster:
        root, port = Path(cluster.root), cluster.port
        with psycopg.connect(cluster.dsn, connect_timeout=10) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        raise Boom
    assert not root.exists()
    assert _refused("127.0.0.1", port)
