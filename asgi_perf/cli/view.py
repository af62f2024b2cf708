"""``asgi-perf view`` and ``--open``: a profile shown to a person, in snakeviz or a browser."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import signal
import subprocess
import sys
import tempfile
import threading
import webbrowser
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

from asgi_perf.cli._common import (
    IO,
    CLIError,
    client_for,
    download_profile,
    existing_file,
    is_url,
    read_pstats,
)
from asgi_perf.cli._exit import EXIT_FAILED, EXIT_OK


def cmd_view(args: argparse.Namespace, io: IO) -> int:
    target: str = args.target
    if not is_url(target):
        path = existing_file(target)
        read_pstats(path)
        return run_snakeviz(path, server_only=args.server)
    require_snakeviz()  # before the download, which would be wasted
    body = _download_prof(args, target)
    with tempfile.TemporaryDirectory(prefix="asgi-perf-") as tmp:
        path = Path(tmp) / "profile.prof"
        path.write_bytes(body)
        read_pstats(path, shown=target)
        return run_snakeviz(path, server_only=args.server)


def _download_prof(args: argparse.Namespace, target: str) -> bytes:
    """A URL of a ``.prof`` is fetched as is; any other URL names the app (``--ref``)."""
    with client_for(args, target) as client:
        if urlsplit(target).path.endswith(".prof"):
            return client.download_link(target)
        return download_profile(client, args.ref, "prof", args.route)[0]


def open_file(path: Path) -> int:
    """``--open``: a ``.prof`` in snakeviz, any other format in a browser."""
    if path.suffix == ".prof":
        return run_snakeviz(path)
    open_in_browser(path)
    return EXIT_OK


def snakeviz_available() -> bool:
    try:
        return importlib.util.find_spec("snakeviz") is not None
    except (ImportError, ValueError):
        return False


def require_snakeviz() -> None:
    if not snakeviz_available():
        raise CLIError("snakeviz is not installed in this environment: pip install snakeviz")


def run_snakeviz(path: Path, *, server_only: bool = False) -> int:
    """Run snakeviz on ``path`` until the user stops it (Ctrl+C); its exit code."""
    require_snakeviz()
    # The same interpreter, so the snakeviz found above is the one that runs.
    command = [sys.executable, "-m", "snakeviz", *(["-s"] if server_only else []), str(path)]
    with _sigterm_interrupts(), subprocess.Popen(command) as child:
        try:
            return child.wait()
        except KeyboardInterrupt:
            # Ctrl+C reached snakeviz too, a SIGTERM only us: end it either way,
            # so no server outlives the command and a temp file can go.
            child.terminate()
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            return EXIT_OK


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """While snakeviz runs, SIGTERM ends us like Ctrl+C does: with cleanup."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def open_in_browser(path: Path) -> None:
    if not webbrowser.open(path.resolve().as_uri()):
        raise CLIError(f"no web browser found to open {path}", code=EXIT_FAILED)
