"""Pieces shared by the ``asgi-perf`` subcommands: errors, consoles, files, numbers."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pstats
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any, TypeGuard, cast

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from asgi_perf.capture import PstatsDict
from asgi_perf.cli._exit import EXIT_USAGE
from asgi_perf.client import PerfClient, PerfClientError
from asgi_perf.renderers import RENDERERS

VERDICT_STYLE = {"fail": "bold red", "pass": "green", "insufficient": "yellow"}


class CLIError(Exception):
    """An error the user can fix: printed as one line, then exit with ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class IO:
    """Where a command writes: results to ``out`` (stdout), progress and errors to ``err``."""

    out: Console
    err: Console

    @classmethod
    def make(cls) -> IO:
        return cls(_console(stderr=False), _console(stderr=True))


def _console(*, stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    # A table written to a file or a CI log must not be wrapped at 80 columns:
    # a table only takes the width it needs, so a wide limit costs nothing.
    wide = not _isatty(stream) and "COLUMNS" not in os.environ
    return Console(stderr=stderr, width=200 if wide else None, highlight=False)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def print_error(err: Console, message: str) -> None:
    """``asgi-perf: error: <message>`` on exactly one line, whatever the message holds."""
    line = " ".join(str(message).split()) or "unknown error"
    text = Text.assemble(("asgi-perf: error: ", "bold red"), line)
    # soft_wrap: a narrow terminal must not turn the one line into two.
    err.print(text, soft_wrap=True)


def client_for(args: argparse.Namespace, url: str | None = None) -> PerfClient:
    return PerfClient(
        url if url is not None else args.url,
        token=args.token,
        prefix=args.prefix,
        timeout=args.timeout,
    )


def download_profile(
    client: PerfClient, ref: str, fmt: str, route: str | None
) -> tuple[bytes, str]:
    """``client.download``; when ``latest`` or ``slowest`` finds nothing, how to get one."""
    try:
        return client.download(ref, fmt=fmt, route=route)
    except PerfClientError as exc:
        # The app keeps no profile until asked to: a new user's first fetch
        # says "no profiles yet" and nothing of what to do about it.
        if exc.status != 404 or ref not in ("latest", "slowest") or "no profiles" not in str(exc):
            raise
        raise PerfClientError(
            f"{exc}. To get one: send a request with the header 'X-Perf-Profile: 1' "
            f"(curl -H 'X-Perf-Profile: 1' {client.base_url}/your/route), set sample_rate "
            f"(e.g. 0.01) on PerfMiddleware, or run: asgi-perf profile {client.base_url} "
            "--seconds 30",
            status=exc.status,
            url=exc.url,
        ) from None


def is_url(target: str) -> bool:
    return target.startswith(("http://", "https://"))


def existing_file(path: str) -> Path:
    """``path`` as a readable file, or a one-line error that says what is wrong."""
    p = Path(path)
    if not p.exists():
        hint = " (a URL needs http://)" if ":" in path and not p.suffix else ""
        raise CLIError(f"{path}: no such file{hint}")
    if not p.is_file():
        raise CLIError(f"{path}: not a file")
    return p


def load_snapshot(path: str) -> dict[str, Any]:
    """A saved ``/_perf/stats`` answer (``asgi-perf stats URL --json > FILE``)."""
    p = existing_file(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CLIError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("routes"), list):
        raise CLIError(f'{path}: not an asgi_perf stats snapshot (no "routes" list)')
    return data


def write_output(io: IO, body: bytes, output: str | None, default_name: str) -> Path | None:
    """Write ``body`` to ``output`` (a file, a directory, or ``-`` for stdout).

    Returns the path written, or None for stdout.
    """
    if output == "-":
        sys.stdout.flush()
        sys.stdout.buffer.write(body)
        sys.stdout.buffer.flush()
        return None
    path = Path(output) if output else Path(default_name)
    if path.is_dir():
        path = path / default_name
    path.write_bytes(body)
    say_saved(io, path, len(body))
    return path


def say_saved(io: IO, path: Path | str, size: int, note: str = "") -> None:
    """``saved FILE (12.3 KiB)``: the line every command that writes a file prints."""
    io.out.print(f"saved {path} ({human_bytes(size)}{note})", markup=False, soft_wrap=True)


def read_pstats(path: Path, shown: str | None = None) -> PstatsDict:
    """The stats of a ``.prof`` file, or one line saying it is not one."""
    try:
        # pstats also prints its complaint about a bad file: keep stdout clean.
        stats = pstats.Stats(str(path), stream=StringIO())
    except Exception:
        raise CLIError(f"{shown or path}: not a pstats .prof file") from None
    # typeshed leaves Stats.stats out; it is the dict marshal wrote.
    return cast(PstatsDict, getattr(stats, "stats"))  # noqa: B009


def format_for(args: argparse.Namespace) -> str:
    """``--format``, else what ``-o``'s extension names (``-o load.svg``), else ``prof``."""
    if args.format:
        return str(args.format)
    return format_of(str(args.output or "")) or "prof"


def format_of(file_name: str) -> str | None:
    """The renderer format a file name's extension names (``load.svg``: ``svg``), or None."""
    name = file_name.lower()
    # Longest first: ".speedscope.json" before any shorter match.
    for fmt, r in sorted(RENDERERS.items(), key=lambda kv: -len(kv[1].file_extension)):
        if name.endswith(r.file_extension):
            return fmt
    return None


def human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024 / 1024:.1f} MiB"


def is_number(value: object) -> TypeGuard[int | float]:
    """A number from JSON; ``true`` is not one, though bool is an int."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def percent_text(rate: float) -> str:
    """An error rate (a fraction) as people read it: ``0.0123`` is ``1.23%``."""
    return f"{rate * 100:.2f}%"


def fmt_ms(value: Any) -> str:
    if not is_number(value):
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def fmt_number(value: Any, digits: int = 1) -> str:
    if not is_number(value):
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def verdict_text(verdict: Any) -> Text:
    if not isinstance(verdict, str):
        return Text("-", style="dim")
    return Text(verdict, style=VERDICT_STYLE.get(verdict, ""))


Update = Callable[[float, str | None], None]


@contextlib.contextmanager
def progress(io: IO, description: str, total_s: float) -> Iterator[Update]:
    """A bar while a command waits ``total_s``; yields ``update(elapsed_s, description)``."""
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
        TimeElapsedColumn(),
    )
    # A bar only on a terminal (a log gets nothing, not even a stray newline),
    # and transient: once done it is gone, so an error stays the only line.
    live = io.err.is_terminal
    with Progress(*columns, console=io.err, transient=True, disable=not live) as bar:
        task = bar.add_task(description, total=total_s)

        def update(elapsed_s: float, text: str | None = None) -> None:
            done = min(elapsed_s, total_s)
            if text is None:
                bar.update(task, completed=done)
            else:
                bar.update(task, completed=done, description=text)

        yield update
