"""Configuration: one frozen dataclass, checked once, read once.

Keyword options and ``PerfConfig`` fields are the same names. Environment
variables ``ASGI_PERF_*`` override them, so an operator can change a deployed
app without touching its code; they are read here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from asgi_perf._types import Scope
from asgi_perf.engines import WINDOW_ONLY, check_engine_name
from asgi_perf.errors import ConfigError
from asgi_perf.units import decimal_number, whole_number

RouteKeyFunc = Callable[[Scope], str]
AuthorizeFunc = Callable[[Scope], bool]
BudgetsSource = Mapping[str, Any] | str | os.PathLike[str] | None

# Used with fullmatch: "$" would let a trailing newline through.
_PREFIX_RE = re.compile(r"/[A-Za-z0-9._~\-/]*[A-Za-z0-9._~\-]")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class PerfConfig:
    """Every option of ``PerfMiddleware``; invalid values raise ``ConfigError``."""

    # False: a configuration error is logged and asgi_perf steps aside (the
    # app is served, /_perf answers 503). True: it raises, for CI.
    strict: bool = False
    enabled: bool = True
    prefix: str = "/_perf"
    token: str | None = None
    authorize: AuthorizeFunc | None = None
    budgets: BudgetsSource = None
    min_samples: int = 20
    max_routes: int = 500
    route_key: RouteKeyFunc | None = None
    tracemalloc: bool = False
    recent_window_s: int = 60
    # After a route's first min_samples requests, every n-th of its requests
    # has its memory measured.
    memory_sample_every: int = 64
    # The process timeline (spec 4): a point every memory_interval_s (0: off),
    # the last memory_points kept.
    memory_interval_s: float = 5.0
    memory_points: int = 720
    # Profiling (spec section 3).
    engine: str = "pyinstrument"
    sample_rate: float = 0.0
    profile_interval_ms: float = 1.0
    yappi_clock: str = "wall"
    max_concurrent_profiles: int = 4
    profile_dir: str | os.PathLike[str] | None = None
    max_profiles: int = 200
    max_profile_bytes: int = 64 * 1024 * 1024
    keep_slowest: int = 5
    keep_last: int = 5
    max_window_seconds: int = 300
    lifespan_profile: bool = False
    # Windows, the lifespan profile and the continuous ring (spec 3.1, 3.3).
    window_engine: str = "sampler"
    sampler_hz: int = 100
    sampler_max_cpu: float = 0.01
    continuous: bool = False
    continuous_minutes: int = 10
    # The share of wall-clock time a per-request profiler hook may be on
    # for sampled requests (sample_rate); X-Perf-Profile requests always are.
    profile_budget: float = 0.02
    # Event-loop health (spec 13).
    loop_monitor: bool = True
    block_threshold_ms: float = 100.0
    max_loop_blocks: int = 100
    # Several workers of one server (spec 8): where they share their state.
    # None: found on its own for uvicorn --workers and gunicorn workers.
    shared_dir: str | os.PathLike[str] | None = None
    flush_interval_s: float = 1.0
    # Database queries (issue #14): off by default, so the hot path is untouched.
    db: bool = False
    # A request running one normalised statement this many times is an N+1.
    n_plus_one_threshold: int = 10
    slow_query_ms: float = 100.0
    max_slow_queries: int = 200

    def __post_init__(self) -> None:
        _check_bool("strict", self.strict)
        _check_bool("enabled", self.enabled)
        _check_bool("tracemalloc", self.tracemalloc)
        if not isinstance(self.prefix, str) or not _PREFIX_RE.fullmatch(self.prefix):
            raise ConfigError(
                f"prefix: {self.prefix!r} must start with '/', not end with '/', "
                "and use only letters, digits and ._~-/"
            )
        if self.token is not None:
            _check_token(self.token)
        for name in ("authorize", "route_key"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise ConfigError(f"{name}: must be a callable taking the ASGI scope, or None")
        _check_int("max_routes", self.max_routes, 1, 100_000)
        _check_int("min_samples", self.min_samples, 0, 10**9)
        _check_int("recent_window_s", self.recent_window_s, 10, 3600)
        _check_int("memory_sample_every", self.memory_sample_every, 1, 1_000_000)
        _check_number("memory_interval_s", self.memory_interval_s, 0.0, 86_400.0)
        if 0 < self.memory_interval_s < 0.05:
            raise ConfigError(
                f"memory_interval_s: 0 (off) or from 0.05 to 86400 seconds, "
                f"got {self.memory_interval_s!r}"
            )
        _check_int("memory_points", self.memory_points, 2, 1_000_000)
        check_engine_name(self.engine)
        if self.engine in WINDOW_ONLY:
            raise ConfigError(
                f"engine: {self.engine!r} profiles whole windows, not single requests; "
                "use it as window_engine (per request: pyinstrument, yappi or cprofile)"
            )
        check_engine_name(self.window_engine, "window_engine")
        _check_int("sampler_hz", self.sampler_hz, 1, 1000)
        _check_number("sampler_max_cpu", self.sampler_max_cpu, 0.001, 1.0)
        _check_bool("continuous", self.continuous)
        _check_int("continuous_minutes", self.continuous_minutes, 1, 1440)
        _check_number("profile_budget", self.profile_budget, 0.0, 1.0)
        _check_bool("loop_monitor", self.loop_monitor)
        _check_number("block_threshold_ms", self.block_threshold_ms, 5.0, 60_000.0)
        _check_int("max_loop_blocks", self.max_loop_blocks, 1, 100_000)
        if self.shared_dir is not None and (
            not isinstance(self.shared_dir, (str, os.PathLike)) or not str(self.shared_dir)
        ):
            raise ConfigError("shared_dir: must be a directory path or None")
        _check_number("flush_interval_s", self.flush_interval_s, 0.05, 3600.0)
        _check_bool("lifespan_profile", self.lifespan_profile)
        _check_bool("db", self.db)
        _check_int("n_plus_one_threshold", self.n_plus_one_threshold, 2, 1_000_000)
        _check_number("slow_query_ms", self.slow_query_ms, 0.0, 3_600_000.0)
        _check_int("max_slow_queries", self.max_slow_queries, 1, 100_000)
        if (
            isinstance(self.sample_rate, bool)
            or not isinstance(self.sample_rate, (int, float))
            or not 0.0 <= self.sample_rate <= 1.0
        ):
            raise ConfigError(
                f"sample_rate: must be a number from 0 to 1, got {self.sample_rate!r}"
            )
        if (
            isinstance(self.profile_interval_ms, bool)
            or not isinstance(self.profile_interval_ms, (int, float))
            or not 0.05 <= self.profile_interval_ms <= 1000
        ):
            raise ConfigError(
                "profile_interval_ms: must be a number from 0.05 to 1000, "
                f"got {self.profile_interval_ms!r}"
            )
        if self.yappi_clock not in ("wall", "cpu"):
            raise ConfigError(f"yappi_clock: must be 'wall' or 'cpu', got {self.yappi_clock!r}")
        _check_int("max_concurrent_profiles", self.max_concurrent_profiles, 1, 1000)
        _check_int("max_profiles", self.max_profiles, 1, 1_000_000)
        _check_int("max_profile_bytes", self.max_profile_bytes, 1024, 1 << 40)
        _check_int("keep_slowest", self.keep_slowest, 0, 10_000)
        _check_int("keep_last", self.keep_last, 0, 10_000)
        _check_int("max_window_seconds", self.max_window_seconds, 1, 86_400)
        if self.profile_dir is not None and (
            not isinstance(self.profile_dir, (str, os.PathLike)) or not str(self.profile_dir)
        ):
            raise ConfigError("profile_dir: must be a directory path or None")
        if self.lifespan_profile and self.profile_dir is None:
            raise ConfigError("lifespan_profile: needs profile_dir, where the profile is written")
        if self.budgets is not None and not isinstance(self.budgets, (Mapping, str, os.PathLike)):
            raise ConfigError("budgets: must be a dict, a path to a TOML file, or None")

    @classmethod
    def from_options(
        cls,
        config: PerfConfig | None = None,
        env: Mapping[str, str] | None = None,
        **options: Any,
    ) -> PerfConfig:
        """Merge a base config, keyword options and the environment (last wins)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(
                f"unknown option {unknown[0]!r} for PerfMiddleware "
                f"(known: {', '.join(sorted(known))})"
            )
        base = config if config is not None else cls()
        if not isinstance(base, PerfConfig):
            raise ConfigError("config: must be a PerfConfig")
        merged = dataclasses.replace(base, **options) if options else base
        return merged.with_env(os.environ if env is None else env)

    @classmethod
    def salvage(
        cls,
        config: object = None,
        env: Mapping[str, str] | None = None,
        **options: Any,
    ) -> PerfConfig:
        """What a configuration that may fail can still be trusted with.

        ``strict``, read before anything else is checked (an error elsewhere
        must not decide whether errors raise), and what ``/_perf`` needs to
        answer with the error: ``enabled``, ``prefix``, ``token`` and
        ``authorize``. Each comes from the same sources as in
        ``from_options`` (the environment first) and is kept when it is valid
        on its own; anything else is the default. Never raises.
        """
        env = os.environ if env is None else env
        trusted: dict[str, Any] = {}
        for name in _SALVAGED:
            var = _ENV_NAMES.get(name, "ASGI_PERF_" + name.upper())
            try:
                if var in env:
                    value = _ENV_PARSERS[name](env[var].strip())
                elif name in options:
                    value = options[name]
                elif isinstance(config, PerfConfig):
                    value = getattr(config, name)
                else:
                    continue
                # Validated alone: every other field is at its (valid) default.
                cls(**{name: value})
            except ValueError:
                continue  # ConfigError too: the default stands in
            trusted[name] = value
        return cls(**trusted)

    def with_env(self, env: Mapping[str, str]) -> PerfConfig:
        """Apply ``ASGI_PERF_*`` overrides; a bad value names its variable."""
        merged = self
        for name, parse in _ENV_PARSERS.items():
            var = _ENV_NAMES.get(name, "ASGI_PERF_" + name.upper())
            raw = env.get(var)
            if raw is None:
                continue
            try:
                merged = dataclasses.replace(merged, **{name: parse(raw.strip())})
            except ValueError as exc:
                # ConfigError is a ValueError: range checks land here too. A
                # secret is not repeated: this message is logged and served.
                shown = "<hidden>" if name in _SECRETS else repr(raw)
                raise ConfigError(f"{var}={shown}: {exc}") from None
        return merged


def _parse_bool(raw: str) -> bool:
    low = raw.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError("expected one of 1/0, true/false, yes/no, on/off")


def _parse_int(raw: str) -> int:
    value = whole_number(raw)
    if value is None:
        raise ValueError("expected a whole number (digits 0-9 only)")
    return value


def _parse_float(raw: str) -> float:
    value = decimal_number(raw)
    if value is None:
        raise ValueError("expected a number such as 30 or 0.05 (digits and one '.')")
    return value


def _parse_optional_str(raw: str) -> str | None:
    return raw or None


_ENV_PARSERS: dict[str, Callable[[str], Any]] = {
    "strict": _parse_bool,
    "enabled": _parse_bool,
    "token": _parse_optional_str,
    "prefix": str,
    "budgets": _parse_optional_str,
    "min_samples": _parse_int,
    "memory_sample_every": _parse_int,
    "memory_interval_s": _parse_float,
    "memory_points": _parse_int,
    "max_routes": _parse_int,
    "tracemalloc": _parse_bool,
    "engine": str,
    "sample_rate": _parse_float,
    "profile_dir": _parse_optional_str,
    "max_window_seconds": _parse_int,
    "lifespan_profile": _parse_bool,
    "window_engine": str,
    "sampler_hz": _parse_int,
    "sampler_max_cpu": _parse_float,
    "continuous": _parse_bool,
    "continuous_minutes": _parse_int,
    "profile_budget": _parse_float,
    "loop_monitor": _parse_bool,
    "block_threshold_ms": _parse_float,
    "max_loop_blocks": _parse_int,
    "shared_dir": _parse_optional_str,
    "flush_interval_s": _parse_float,
    "db": _parse_bool,
    "n_plus_one_threshold": _parse_int,
    "slow_query_ms": _parse_float,
    "max_slow_queries": _parse_int,
}
# Options whose variable is not ASGI_PERF_ + the option's name.
_ENV_NAMES = {"shared_dir": "ASGI_PERF_DIR"}
# Options whose value an error message never shows.
_SECRETS = frozenset({"token"})
# What PerfConfig.salvage keeps of a configuration that failed.
_SALVAGED = ("strict", "enabled", "prefix", "token", "authorize")
_ERROR_OPTION = re.compile(r"^(?:unknown option '(\w+)'|(ASGI_PERF_\w+)=|(\w+): )")


def option_of(error: str) -> str | None:
    """The option (or environment variable) a ``ConfigError`` message names first."""
    match = _ERROR_OPTION.match(error)
    if match is None:
        return None
    unknown, variable, name = match.groups()
    if unknown or variable:
        return str(unknown or variable)
    # "name: ..." is an option's own message only when name is an option.
    return name if name in {f.name for f in dataclasses.fields(PerfConfig)} else None


def _check_token(token: object) -> None:
    """A token a client can send as ``Authorization: Bearer <token>`` and match.

    The messages never show the token: they are logged, and served by the
    503 of ``/_perf``.
    """
    if not isinstance(token, str) or not token:
        raise ConfigError("token: must be a non-empty string or None")
    if token != token.strip():
        # The gate strips the header's value, as HTTP does (RFC 9110 5.5):
        # such a token could never match, and every client would get a 401.
        raise ConfigError(
            "token: starts or ends with whitespace, which no request can carry "
            "(a header's value is read stripped); remove it"
        )
    if not token.isascii():
        raise ConfigError(
            "token: has a non-ASCII character, which HTTP clients do not send in a "
            "header; use ASCII letters, digits and punctuation (secrets.token_urlsafe())"
        )
    if not token.isprintable():
        raise ConfigError(
            "token: has a control character (a newline, a tab...), which a header "
            "cannot carry; use ASCII letters, digits and punctuation"
        )


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: must be True or False, got {value!r}")


def _check_number(name: str, value: object, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(f"{name}: must be a number from {low:g} to {high:g}, got {value!r}")


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name}: must be a whole number from {low} to {high}, got {value!r}")
