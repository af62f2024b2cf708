"""Performance budgets per route pattern, checked against a stats snapshot.

A pattern is ``"METHOD /path"``, ``"/path"`` (any method) or ``"*"``
(everything); the path is an ``fnmatch`` glob (``*``, ``?``, ``[...]``) and
``{``/``}`` are literal, so ``"GET /items/{item_id}"`` names one route key.
``"<unmatched>"`` and ``"<other>"`` are matched only by exactly that pattern.

For each route and metric only the most specific pattern that sets the metric
applies: an exact pattern beats a glob, an explicit method beats none, then
more literal characters win; on a tie the pattern defined first wins.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fnmatch import translate
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypedDict

from asgi_perf.errors import ConfigError
from asgi_perf.units import parse_duration_ms, parse_rate, parse_size_mb

if sys.version_info >= (3, 11):
    import tomllib
else:  # tomli is the same parser, before it joined the standard library
    tomllib = importlib.import_module("tomli")

__all__ = ["METRICS", "Budget", "BudgetReport", "BudgetSet", "Outcome", "Verdict", "load_budgets"]

METRICS: tuple[str, ...] = (
    "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "max_mb", "error_rate",
)  # fmt: skip

_PARSERS: Mapping[str, Callable[..., float]] = {
    **dict.fromkeys(METRICS[:5], parse_duration_ms),
    "max_mb": parse_size_mb,
    "error_rate": parse_rate,
}
_LATENCY_KEY = {"p50_ms": "p50", "p90_ms": "p90", "p95_ms": "p95", "p99_ms": "p99", "max_ms": "max"}
_KNOWN = ", ".join((*METRICS, "min_samples"))
_SPECIAL = frozenset({"<unmatched>", "<other>"})
_TOKEN_RE = re.compile(r"^[!#$%&'+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 tchar, minus the glob '*'
_GLOB_CHARS = frozenset("*?[")
_MAX_CACHED_KEYS = 4096

# What a verdict says: "insufficient" when too few samples (or none) were measured.
Outcome = Literal["pass", "fail", "insufficient"]
_SEVERITY: Mapping[Outcome, int] = {"fail": 2, "pass": 1, "insufficient": 0}


class Verdict(TypedDict):
    """One route and metric checked against the budget that applies to it."""

    route: str
    pattern: str  # the budget's pattern, normalised
    metric: str  # a name from METRICS
    limit: float
    measured: float | None  # None when nothing was measured
    margin: float | None  # limit - measured: negative when over
    samples: int
    verdict: Outcome


class BudgetReport(TypedDict):
    """What ``BudgetSet.check`` returns and ``GET {prefix}/budgets`` serves."""

    schema: int
    ok: bool  # False when any verdict is "fail"
    source: str
    min_samples: int
    verdicts: list[Verdict]  # fails first, then by route and metric


@dataclass(frozen=True)
class Budget:
    """Limits for the routes matching ``pattern``; ``min_samples`` overrides the set's.

    ``limits`` maps names from ``METRICS`` to numbers (ms, MB of 2**20 bytes,
    or a 0..1 fraction) or to strings in human units (see ``asgi_perf.units``);
    both are stored as floats. The pattern is normalised (method upper-cased,
    single space).
    """

    pattern: str
    limits: Mapping[str, float]
    min_samples: int | None = None
    _method: str | None = field(init=False, repr=False, compare=False, default=None)
    _path: str = field(init=False, repr=False, compare=False, default="")
    _regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False, default=None)
    _rank: tuple[bool, bool, int] = field(
        init=False, repr=False, compare=False, default=(False, False, 0)
    )

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str):
            raise ConfigError(f"{self.pattern!r}: route pattern must be a string")
        where = f'"{self.pattern}"'
        if not self.pattern.strip():
            raise ConfigError(f"{where}: empty route pattern")
        parts = self.pattern.split()
        if len(parts) > 2:
            raise ConfigError(f'{where}: expected "METHOD /path", "/path" or "*"')
        method = parts[0].upper() if len(parts) == 2 else None
        path = parts[-1]
        if method is not None and not _TOKEN_RE.match(method):
            raise ConfigError(
                f"{where}: method {parts[0]!r} is not an HTTP method token "
                "(leave the method out to match any)"
            )
        if path not in _SPECIAL and not path.startswith(("/", "*")):
            raise ConfigError(f"{where}: path must start with '/' (or be '*')")
        if method is not None and path in _SPECIAL:
            raise ConfigError(f"{where}: {path} takes no method")
        exact = not _GLOB_CHARS.intersection(path)
        literal = sum(1 for ch in path if ch not in _GLOB_CHARS)
        limits = _check_limits(where, self.limits)
        if self.min_samples is not None:
            _check_min_samples(f"{where}: min_samples", self.min_samples)
        set_ = object.__setattr__  # frozen: derived fields are set once, here
        set_(self, "pattern", path if method is None else f"{method} {path}")
        set_(self, "limits", MappingProxyType(limits))
        set_(self, "_method", method)
        set_(self, "_path", path)
        set_(self, "_regex", None if exact else re.compile(translate(path)))
        set_(self, "_rank", (exact, method is not None, literal))

    def matches(self, route: str) -> bool:
        """Whether this pattern covers the route key ``route``."""
        if route in _SPECIAL or self._path in _SPECIAL:
            return route == self._path
        method, _, path = route.partition(" ") if " " in route else ("", "", route)
        if self._method is not None and self._method != method:
            return False
        if self._regex is None:
            return path == self._path
        return self._regex.match(path) is not None


@dataclass(frozen=True)
class BudgetSet:
    """Budgets from one source, checked with ``check`` against a stats snapshot."""

    budgets: tuple[Budget, ...] = ()
    min_samples: int = 20
    source: str = "<none>"
    # Route key -> {metric: applied budget}; route keys are bounded by max_routes.
    _applied: dict[str, dict[str, Budget]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        _check_min_samples(f"{self.source}: min_samples", self.min_samples)
        object.__setattr__(self, "budgets", tuple(self.budgets))

    def __bool__(self) -> bool:
        """True when there is at least one budget."""
        return bool(self.budgets)

    def check(self, snapshot: Mapping[str, Any]) -> BudgetReport:
        """Verdicts for every route and budgeted metric; ``ok`` is False on any fail.

        An exact ``"METHOD /path"`` pattern with no such route in the snapshot
        still yields "insufficient" verdicts, so untested budgets stay visible.
        """
        routes = [e for e in snapshot.get("routes") or () if isinstance(e, Mapping)]
        verdicts = [v for entry in routes for v in self._entry_verdicts(entry)]
        seen = {entry.get("route") for entry in routes}
        for budget in self.budgets:
            exact, has_method, _ = budget._rank
            if exact and has_method and budget.pattern not in seen:
                verdicts.extend(
                    self._verdict(budget.pattern, budget, metric, {})
                    for metric in METRICS
                    if metric in budget.limits
                )
        verdicts.sort(
            key=lambda v: (v["verdict"] != "fail", v["route"], METRICS.index(v["metric"]))
        )
        return {
            "schema": 1,
            "ok": all(v["verdict"] != "fail" for v in verdicts),
            "source": self.source,
            "min_samples": self.min_samples,
            "verdicts": verdicts,
        }

    def route_verdict(self, route_entry: Mapping[str, Any]) -> Outcome | None:
        """The worst verdict of one snapshot route entry ("fail" > "pass" >
        "insufficient"), or None when no budget applies to it."""
        verdicts = self._entry_verdicts(route_entry)
        if not verdicts:
            return None
        worst: Outcome = max((v["verdict"] for v in verdicts), key=_SEVERITY.__getitem__)
        return worst

    def _entry_verdicts(self, entry: Mapping[str, Any]) -> list[Verdict]:
        route = entry.get("route")
        if not isinstance(route, str):
            return []
        applied = self._applied_to(route)
        return [self._verdict(route, budget, metric, entry) for metric, budget in applied.items()]

    def latency_limit_ms(self, route: str) -> float | None:
        """The limit one request of ``route`` breaks: ``max_ms``, else ``p99_ms``."""
        applied = self._applied_to(route)
        for metric in ("max_ms", "p99_ms"):
            budget = applied.get(metric)
            if budget is not None:
                return float(budget.limits[metric])
        return None

    def _applied_to(self, route: str) -> dict[str, Budget]:
        applied = self._applied.get(route)
        if applied is None:
            matching = [b for b in self.budgets if b.matches(route)]
            applied = {}
            for metric in METRICS:
                candidates = [b for b in matching if metric in b.limits]
                if candidates:
                    # max() keeps the first of equals: definition order breaks ties.
                    applied[metric] = max(candidates, key=lambda b: b._rank)
            if len(self._applied) >= _MAX_CACHED_KEYS:
                self._applied.clear()
            self._applied[route] = applied
        return applied

    def _verdict(
        self, route: str, budget: Budget, metric: str, entry: Mapping[str, Any]
    ) -> Verdict:
        measured, samples = _measure(entry, metric)
        limit = budget.limits[metric]
        needed = self.min_samples if budget.min_samples is None else budget.min_samples
        verdict: Outcome
        if measured is None or samples < needed:
            verdict = "insufficient"
        else:
            verdict = "fail" if measured > limit else "pass"
        # ms and MB to 3 places (1 µs, ~1 KB); rates need more to show 0.01%.
        ndigits = 6 if metric == "error_rate" else 3
        return {
            "route": route,
            "pattern": budget.pattern,
            "metric": metric,
            "limit": limit,
            "measured": None if measured is None else round(measured, ndigits),
            "margin": None if measured is None else round(limit - measured, ndigits),
            "samples": samples,
            "verdict": verdict,
        }


def load_budgets(
    source: Mapping[str, Any] | str | os.PathLike[str] | BudgetSet | None,
    *,
    min_samples: int = 20,
    pyproject: str | os.PathLike[str] | None = "pyproject.toml",
) -> BudgetSet:
    """Budgets from a dict, a TOML file, a ``pyproject.toml``, or (``None``) the
    ``[tool.asgi_perf.budgets]`` table of ``pyproject`` if it has one.

    A top-level ``min_samples`` in the source overrides the ``min_samples``
    argument. A ``BudgetSet`` is returned unchanged.
    """
    if isinstance(source, BudgetSet):
        return source
    if source is None:
        if pyproject is None or not Path(pyproject).is_file():
            return BudgetSet(min_samples=min_samples)
        return _from_pyproject(pyproject, min_samples, required=False)
    if isinstance(source, Mapping):
        return _from_table(source, "budgets", min_samples)
    if not isinstance(source, (str, os.PathLike)):
        raise ConfigError("budgets: must be a dict, a path to a TOML file, a BudgetSet or None")
    path = os.fspath(source)
    if Path(path).name == "pyproject.toml":
        return _from_pyproject(path, min_samples, required=True)
    data = _read_toml(path)
    if "budgets" in data:
        # Only [budgets] is read, so the file may hold other settings too.
        return _from_table(data["budgets"], f"{path} [budgets]", min_samples)
    return _from_table(data, path, min_samples)


def _read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data: dict[str, Any] = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{os.fspath(path)}: cannot read budgets: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{os.fspath(path)}: invalid TOML: {exc}") from None
    return data


def _from_pyproject(path: str | os.PathLike[str], min_samples: int, *, required: bool) -> BudgetSet:
    table: Any = _read_toml(path)
    for key in ("tool", "asgi_perf", "budgets"):
        if not isinstance(table, Mapping) or key not in table:
            if required:
                raise ConfigError(f"{os.fspath(path)}: no [tool.asgi_perf.budgets] table")
            return BudgetSet(min_samples=min_samples)
        table = table[key]
    return _from_table(table, f"{os.fspath(path)} [tool.asgi_perf.budgets]", min_samples)


def _from_table(table: Any, source: str, min_samples: int) -> BudgetSet:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{source}: expected a table of route patterns")
    budgets: dict[str, Budget] = {}
    for pattern, fields in table.items():
        if pattern == "min_samples":
            min_samples = _check_min_samples(f"{source}: min_samples", fields)
            continue
        try:
            budget = _budget(pattern, fields)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        if budget.pattern in budgets:
            raise ConfigError(f'{source}: "{pattern}": duplicate of "{budget.pattern}"')
        budgets[budget.pattern] = budget
    return BudgetSet(tuple(budgets.values()), min_samples=min_samples, source=source)


def _budget(pattern: Any, fields: Any) -> Budget:
    if not isinstance(fields, Mapping):
        raise ConfigError(f'"{pattern}": expected a table of limits, got {type(fields).__name__}')
    limits = {name: value for name, value in fields.items() if name != "min_samples"}
    return Budget(pattern, limits, fields.get("min_samples"))


def _check_limits(where: str, limits: Any) -> dict[str, float]:
    if not isinstance(limits, Mapping):
        raise ConfigError(f"{where}: limits must be a mapping of metric to number")
    if not limits:
        raise ConfigError(f"{where}: no limits (set at least one of {', '.join(METRICS)})")
    out = {}
    for name, value in limits.items():
        if name not in _PARSERS:
            raise ConfigError(f"{where}: unknown field {name!r} (known: {_KNOWN})")
        out[name] = _PARSERS[name](value, name=f"{where}: {name}")
    return out


def _check_min_samples(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name}: must be a whole number >= 0, got {value!r}")
    return value


def _measure(entry: Mapping[str, Any], metric: str) -> tuple[float | None, int]:
    count = int(entry.get("count") or 0)
    if metric == "max_mb":
        memory = entry.get("memory_mb") or {}
        samples = int(memory.get("samples") or 0)
        return (memory.get("max") if samples else None), samples
    if metric == "error_rate":
        return (int(entry.get("errors") or 0) / count if count else None), count
    latency = entry.get("latency_ms") or {}
    return (latency.get(_LATENCY_KEY[metric]) if count else None), count
