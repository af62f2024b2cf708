"""The Locust plugin's command-line options, and the settings read from them."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from locust.argument_parser import LocustArgumentParser
from locust.env import Environment

from asgi_perf.budgets import load_budgets
from asgi_perf.client import DEFAULT_PREFIX
from asgi_perf.engines import ENGINES
from asgi_perf.errors import ConfigError
from asgi_perf.integrations._perf_run import DEFAULT_RESULTS, Settings

# The server keeps at most 64 characters of a tag, and the id names a directory.
_RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _run_id_arg(value: str) -> str:
    if not _RUN_ID_RE.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"{value!r}: use 1 to 64 letters, digits, '.', '_' or '-', not starting with . _ -"
        )
    return value


def _budgets_arg(value: str) -> str:
    # Loaded once here so a bad file stops Locust before the load starts; the
    # path (not the BudgetSet) is kept because Locust forwards the options to
    # its workers as plain data.
    try:
        load_budgets(value)
    except (ConfigError, OSError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def add_arguments(parser: LocustArgumentParser, **_: Any) -> None:
    # Not in the web UI: the plugin reads them on the master when a test starts,
    # and a value typed in the UI would not have been validated.
    hidden: dict[str, Any] = {"include_in_web_ui": False}
    parser.add_argument(
        "--perf-results",
        metavar="DIR",
        default=DEFAULT_RESULTS,
        help="asgi_perf: save each run's profile, stats and verdicts into DIR/<run id>/ "
        f"(default: {DEFAULT_RESULTS})",
        **hidden,
    )
    parser.add_argument(
        "--perf-token",
        metavar="TOKEN",
        env_var="ASGI_PERF_TOKEN",
        default=None,
        help="asgi_perf: bearer token of the app's /_perf API (default: $ASGI_PERF_TOKEN)",
        **hidden,
    )
    parser.add_argument(
        "--perf-prefix",
        metavar="PATH",
        env_var="ASGI_PERF_PREFIX",
        default=DEFAULT_PREFIX,
        help=f"asgi_perf: where the app serves its API (default: {DEFAULT_PREFIX})",
        **hidden,
    )
    parser.add_argument(
        "--perf-engine",
        choices=sorted(ENGINES),
        default=None,
        help="asgi_perf: profiler of the run's window (default: the app's window_engine, sampler)",
        **hidden,
    )
    parser.add_argument(
        "--perf-budgets",
        metavar="FILE",
        type=_budgets_arg,
        default=None,
        help="asgi_perf: check the run's stats against this budgets TOML file "
        "instead of the app's own budgets",
        **hidden,
    )
    parser.add_argument(
        "--perf-run-id",
        metavar="NAME",
        type=_run_id_arg,
        default=None,
        help="asgi_perf: name of the run, its tag and its results directory "
        "(default: UTC time and a random suffix, new for every test)",
        **hidden,
    )
    parser.add_argument(
        "--no-perf-window",
        action="store_true",
        default=False,
        help="asgi_perf: no profile window; still reset and collect the stats",
        **hidden,
    )


def settings_of(environment: Environment, run_id: str | None) -> Settings:
    """The run's settings from Locust's parsed options; ``run_id`` as --perf-run-id gave it."""
    # parsed_options is None when Locust is used as a library; the
    # attributes are missing when the parser never saw this module.
    options = environment.parsed_options
    return Settings(
        results=Path(getattr(options, "perf_results", None) or DEFAULT_RESULTS),
        token=getattr(options, "perf_token", None) or None,
        prefix="/" + str(getattr(options, "perf_prefix", None) or DEFAULT_PREFIX).strip("/"),
        engine=getattr(options, "perf_engine", None),
        budgets=getattr(options, "perf_budgets", None),
        run_id=run_id,
        window=not getattr(options, "no_perf_window", False),
        run_time=getattr(options, "run_time", None) or None,
    )
