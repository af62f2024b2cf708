"""``asgi-perf``: the command line for an app wrapped by asgi_perf, and for its files.

Talks to a running app (``stats``, ``profile``, ``fetch``, ``view``, ``check``,
for memory ``memory``, ``soak``, ``leaks``, and ``db``) and works on saved files
(``check``, ``diff``, ``flamegraph``, ``merge``). Every error is one line on
stderr (``asgi-perf: error: ...``) and a non-zero exit: 1 a budget failed, a
regression passed its threshold, a soak grew or DB capture is off, 2 bad usage
or an unusable file, 3 the app could not be reached or answered an error, 130
interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from asgi_perf.cli._exit import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_SERVER,
    EXIT_USAGE,
)
from asgi_perf.engines import ENGINES
from asgi_perf.renderers import RENDERERS
from asgi_perf.units import decimal_number, whole_number

__all__ = ["build_parser", "main"]

# What the app can render and profile with, in the order the help lists them.
_FORMATS = tuple(RENDERERS)
_ENGINES = tuple(ENGINES)


class _UsageError(Exception):
    """Raised by the parser instead of printing usage and exiting."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse prints the whole usage first: that is not one line.
        raise _UsageError(f"{message} (see '{self.prog} --help')")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("asgi-perf")
    except PackageNotFoundError:  # a source checkout that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    # Here, not at the top: the client needs httpx, and without it main()
    # must still say which extra to install rather than fail on import.
    from asgi_perf.client import DEFAULT_PREFIX, TOKEN_ENV

    parser = _Parser(
        prog="asgi-perf",
        description="Stats, budgets and profiles of an ASGI app wrapped by asgi_perf.",
        epilog="Exit codes: 0 ok, 1 budget failed, regression, soak grew or DB capture off, "
        "2 bad usage or file, "
        "3 app unreachable or HTTP error, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"asgi-perf {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    remote = _Parser(add_help=False)
    remote.add_argument(
        "--token",
        help=f"bearer token for {DEFAULT_PREFIX} (default: ${TOKEN_ENV})",
    )
    remote.add_argument(
        "--prefix",
        default=os.environ.get("ASGI_PERF_PREFIX", DEFAULT_PREFIX),
        help="where the app serves asgi_perf (default: $ASGI_PERF_PREFIX or %(default)s)",
    )
    remote.add_argument(
        "--timeout", type=_number, default=30.0, help="seconds to wait for an answer (%(default)s)"
    )

    def command(name: str, handler: str, help: str, remote_options: bool = True) -> Any:
        p = sub.add_parser(
            name, help=help, description=help, parents=[remote] if remote_options else []
        )
        p.set_defaults(handler=handler)
        return p

    several = "; several instances of the app (hosts) are merged exactly"
    p = command("stats", "remote:cmd_stats", "per-route table, sorted by p99")
    p.add_argument(
        "url", metavar="URL", nargs="+", help=f"the app, e.g. http://127.0.0.1:8000{several}"
    )
    p.add_argument("--json", action="store_true", help="print the raw snapshot (for diff)")
    p.add_argument(
        "--histograms", action="store_true", help="with --json: each route's histograms too"
    )

    p = command("profile", "remote:cmd_profile", "profile the whole app for N seconds")
    p.add_argument(
        "url", metavar="URL", nargs="+", help="several: one window on each at once, merged"
    )
    span = p.add_mutually_exclusive_group(required=True)
    span.add_argument("--seconds", type=_number, metavar="N", help="a new window of N seconds")
    span.add_argument(
        "--last",
        type=_whole_number,
        metavar="N",
        help="the last N seconds, at once (app: continuous=True)",
    )
    p.add_argument("--route", help='only this route\'s samples, e.g. "GET /items/{item_id}"')
    p.add_argument(
        "--engine", choices=_ENGINES, help="default: the app's window_engine option (sampler)"
    )
    p.add_argument("--format", choices=_FORMATS, help="default: from -o's extension, else prof")
    p.add_argument("-o", "--output", metavar="FILE", help="file, directory or - (stdout)")
    p.add_argument("--open", action="store_true", help=".prof in snakeviz, others in a browser")

    p = command("fetch", "remote:cmd_fetch", "download a stored profile")
    p.add_argument("url", metavar="URL")
    p.add_argument("ref", metavar="ID|latest|slowest")
    p.add_argument(
        "--route",
        help='with latest/slowest, and to keep one route\'s samples, e.g. "GET /items/{item_id}"',
    )
    p.add_argument("--format", choices=_FORMATS, help="default: from -o's extension, else prof")
    p.add_argument("-o", "--output", metavar="FILE", help="file, directory or - (stdout)")
    p.add_argument("--open", action="store_true", help=".prof in snakeviz, others in a browser")

    p = command("view", "view:cmd_view", "open a .prof (file or URL) in snakeviz")
    p.add_argument("target", metavar="FILE|URL", help="a .prof, a .prof URL, or the app's URL")
    p.add_argument("--ref", default="latest", help="with the app's URL: ID|latest|slowest")
    p.add_argument("--route", help="with the app's URL and latest/slowest")
    p.add_argument("--server", action="store_true", help="serve only, open no browser")

    p = command("check", "check:cmd_check", "budget verdicts; exit 1 when one fails")
    p.add_argument(
        "targets", metavar="URL|STATS.json", nargs="+", help="or URL URL...: their merged numbers"
    )
    p.add_argument(
        "--budgets", metavar="FILE", help="budgets TOML (required for a STATS.json or several URLs)"
    )
    p.add_argument("--junit", metavar="FILE", help="also write the verdicts as JUnit XML")
    p.add_argument("--min-samples", type=_whole_number, metavar="N")

    p = command("memory", "memory:cmd_memory", "memory now, its trend, the timeline as a chart")
    p.epilog = (
        "Prints RSS, VMS, USS, fds, threads and connections now, the leak slope in MB/h "
        "and its verdict, peak RSS, process budgets, the routes that grew most, "
        "tracemalloc's state and the RSS of the timeline (app: memory_interval_s > 0)."
    )
    p.add_argument("url", metavar="URL", help="the app, e.g. http://127.0.0.1:8000")
    p.add_argument("--json", action="store_true", help="print GET /memory as is")
    p.add_argument("--watch", action="store_true", help="refresh until Ctrl-C (which exits 0)")
    p.add_argument("--interval", type=_number, metavar="S", help="with --watch: seconds (2)")
    p.add_argument(
        "--count", type=_whole_number, metavar="N", help="with --watch: stop after N refreshes"
    )

    p = command("soak", "memory_load:cmd_soak", "sample memory while your load runs; judge it")
    p.epilog = (
        "Polls GET /memory every --interval seconds, writes each point to --csv at once, "
        "then prints the slope (least squares after a warm-up), the trend and the growth. "
        "Exit 1 when the slope is over --max-growth; without it, when the trend is "
        '"growing". Ctrl-C ends early: the result of the points taken, exit 130.'
    )
    p.add_argument("url", metavar="URL", help="the app, e.g. http://127.0.0.1:8000")
    p.add_argument("--minutes", type=_number, required=True, metavar="N", help="how long (0.5 too)")
    p.add_argument(
        "--interval", type=_number, default=5.0, metavar="S", help="seconds (%(default)s)"
    )
    p.add_argument(
        "--csv",
        metavar="FILE",
        help="every point as it comes: elapsed_min,rss_mb,vms_mb,connections, then the rest",
    )
    p.add_argument(
        "--max-growth", metavar="MB_PER_H", help='the slope allowed, e.g. "10 MB/h" or 10'
    )

    p = command("leaks", "memory_load:cmd_leaks", "what grew while your load ran (tracemalloc)")
    p.epilog = (
        "Starts tracemalloc if it is off (and stops it at the end), takes a baseline, "
        "waits --seconds while your load runs, then lists the sites that grew most."
    )
    p.add_argument("url", metavar="URL", help="the app, e.g. http://127.0.0.1:8000")
    p.add_argument("--seconds", type=_number, required=True, metavar="N", help="how long to wait")
    p.add_argument(
        "--top", type=_whole_number, default=20, metavar="K", help="sites shown (%(default)s)"
    )
    p.add_argument(
        "--group-by",
        choices=("lineno", "filename", "traceback"),
        default="lineno",
        help="one site per line, per file, or per call path (%(default)s)",
    )
    p.add_argument(
        "--frames",
        type=_whole_number,
        metavar="F",
        help="frames traced if tracing is off (1; 10 with --group-by traceback)",
    )

    p = command("db", "db:cmd_db", "routes by DB time, N+1 queries, slow statements")
    p.epilog = (
        "Reads GET /db of an app started with db=True (or ASGI_PERF_DB=1): per route the "
        "requests, queries and DB time; each N+1 with the line of the app that runs it; the "
        "statements slower than slow_query_ms. Exit 1 when DB capture is off."
    )
    p.add_argument("url", metavar="URL", help="the app, e.g. http://127.0.0.1:8000")
    p.add_argument(
        "--route", help='only this route, with its top statements, e.g. "GET /api/orders"'
    )
    p.add_argument(
        "--limit", type=_whole_number, metavar="N", help="statements per route, rows per list (20)"
    )
    p.add_argument("--json", action="store_true", help="print GET /db as is")

    from asgi_perf.cli.diff import THRESHOLD_METRICS, parse_threshold

    p = command("diff", "diff:cmd_diff", "compare two saved snapshots", remote_options=False)
    p.add_argument("base", metavar="BASE.json")
    p.add_argument("new", metavar="NEW.json")
    p.add_argument(
        "--fail",
        action="append",
        type=parse_threshold,
        metavar="METRIC:PCT",
        help=f"exit 1 when NEW > BASE by more than PCT; METRIC: {', '.join(THRESHOLD_METRICS)}",
    )

    p = command(
        "flamegraph", "files:cmd_flamegraph", "SVG flame graph of a file", remote_options=False
    )
    p.add_argument("file", metavar="FILE.prof|FILE.collapsed")
    p.add_argument("-o", "--output", metavar="OUT.svg", help="default: FILE's name with .svg")

    p = command("merge", "files:cmd_merge", "combine profiles into one", remote_options=False)
    p.add_argument("files", nargs="+", metavar="FILE", help=".prof, .collapsed or capture .json")
    p.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="the extension picks the format"
    )
    return parser


def _whole_number(text: str) -> int:
    # ASCII digits, as the server reads its parameters: int() would take
    # "٣", " 3", "+3" or "1_0" here and send a number nobody typed.
    value = whole_number(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


_LARGEST = 10_000_000  # seconds (115 days) or minutes: longer than anyone waits


def _number(text: str) -> float:
    """A number of seconds or minutes: ASCII decimals only (no nan, inf, 1e9).

    A leading minus is read so that ``-1`` gets the command's own
    "must be more than 0" answer rather than a vaguer one here.
    """
    magnitude = decimal_number(text.removeprefix("-"))
    value = None if magnitude is None else -magnitude if text.startswith("-") else magnitude
    if value is None:
        raise argparse.ArgumentTypeError(f"expected a number such as 30 or 2.5, got {text!r}")
    if value > _LARGEST:
        # Past this, timers overflow the platform's time_t (a traceback, not a wait).
        raise argparse.ArgumentTypeError(f"expected at most {_LARGEST:,}, got {text!r}")
    return value


def _plain_error(message: str, code: int) -> int:
    # Before rich is imported (or when it is missing): the same one line.
    sys.stderr.write(f"asgi-perf: error: {' '.join(message.split())}\n")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (the console script exits with it)."""
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as exc:
        return _plain_error(str(exc), EXIT_USAGE)
    except ImportError as exc:
        return _missing(exc)
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    try:
        from asgi_perf.cli import _common
        from asgi_perf.client import PerfClientError

        module_name, function = args.handler.split(":")
        handler = getattr(importlib.import_module(f"asgi_perf.cli.{module_name}"), function)
    except ImportError as exc:
        return _missing(exc)
    io = _common.IO.make()
    try:
        code: int = handler(args, io)
        return code
    except _common.CLIError as exc:
        _common.print_error(io.err, str(exc))
        return exc.code
    except PerfClientError as exc:
        _common.print_error(io.err, str(exc))
        return EXIT_SERVER
    except KeyboardInterrupt:
        _common.print_error(io.err, "interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`): nothing left to say, and Python
        # must not complain again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        _common.print_error(io.err, f"{where}{exc.strerror or exc}")
        return EXIT_USAGE
    except Exception as exc:
        # A bug of ours: still one line, and enough to report it.
        _common.print_error(io.err, f"internal error: {type(exc).__name__}: {exc}")
        return EXIT_FAILED


# asgi-perf is on no package index yet, so "pip install 'asgi-perf[cli]'"
# would fail: name the extra's own packages, which install from anywhere.
_CLI_EXTRA_HINT = (
    "pip install httpx rich snakeviz (the cli extra; in a checkout of asgi_perf: "
    "pip install -e '.[cli]')"
)


def _missing(exc: ImportError) -> int:
    # The package to install, not the submodule that failed (rich.table).
    name = exc.name.split(".", 1)[0] if exc.name else "a module"
    return _plain_error(f"{name} is missing: {_CLI_EXTRA_HINT}", EXIT_USAGE)
