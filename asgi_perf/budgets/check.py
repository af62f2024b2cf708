"""Checking budgets against a stats snapshot: a verdict per route and metric.

For each route and metric only the most specific pattern that sets the metric
applies: an exact pattern beats a glob, an explicit method beats none, then
more literal characters win; on a tie the pattern defined first wins.

A ``process`` table holds the process's own limits (``max_rss_mb``,
``max_growth_mb_per_h``), checked against the snapshot's ``process`` part
(every worker's, with workers) and reported as the route ``process``. A
maximum (``max_ms``, ``max_mb``, ``max_rss_mb``) is broken by one
observation over it: that is a fail whatever the sample count; a pass still
needs ``min_samples``.

``max_queries`` (a maximum) and ``p99_db_ms`` read the route's ``db``
numbers, which exist only when the app runs with ``db=True``: without them
the verdict is "insufficient" and its ``note`` says how to turn them on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, TypedDict

from asgi_perf.budgets.pattern import DB_METRICS, METRICS, Budget, check_min_samples
from asgi_perf.errors import ConfigError
from asgi_perf.units import parse_growth_mb_per_h, parse_size_mb

PROCESS = "process"
PROCESS_METRICS: tuple[str, ...] = ("max_rss_mb", "max_growth_mb_per_h")
_PROCESS_PARSERS: Mapping[str, Callable[..., float]] = {
    "max_rss_mb": parse_size_mb,
    "max_growth_mb_per_h": parse_growth_mb_per_h,
}
_ORDER = {m: i for i, m in enumerate((*METRICS, *PROCESS_METRICS))}
# Broken by a single observation over the limit.
_MAXIMA = frozenset({"max_ms", "max_mb", "max_rss_mb", "max_queries"})
_LATENCY_KEY = {"p50_ms": "p50", "p90_ms": "p90", "p95_ms": "p95", "p99_ms": "p99", "max_ms": "max"}
# Where a DB metric is in a route's ``db`` part.
_DB_KEY = {"max_queries": ("queries", "max"), "p99_db_ms": ("time_ms", "p99")}
_MAX_CACHED_KEYS = 4096
DB_OFF_NOTE = "no DB numbers: start the app with db=True (or ASGI_PERF_DB=1)"
# `asgi-perf stats/check URL URL...` add instances up; their DB numbers are not added.
MERGED_NOTE = "no DB numbers in the merged stats of several instances: check each URL on its own"

# What a verdict says: "insufficient" when too few samples (or none) were measured.
Outcome = Literal["pass", "fail", "insufficient"]
_SEVERITY: Mapping[Outcome, int] = {"fail": 2, "pass": 1, "insufficient": 0}


class _VerdictNote(TypedDict, total=False):
    # Why a verdict is what it is, when the numbers alone do not say (DB_OFF_NOTE).
    note: str


class Verdict(_VerdictNote):
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
class BudgetSet:
    """Budgets from one source, checked with ``check`` against a stats snapshot."""

    budgets: tuple[Budget, ...] = ()
    min_samples: int = 20
    source: str = "<none>"
    # The [process] table: max_rss_mb, max_growth_mb_per_h.
    process: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    # Route key -> {metric: applied budget}; route keys are bounded by max_routes.
    _applied: dict[str, dict[str, Budget]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        check_min_samples(f"{self.source}: min_samples", self.min_samples)
        object.__setattr__(self, "budgets", tuple(self.budgets))
        limits = check_process(f"{self.source}: [{PROCESS}]", self.process)
        object.__setattr__(self, "process", MappingProxyType(limits))

    def __bool__(self) -> bool:
        """True when there is at least one budget."""
        return bool(self.budgets) or bool(self.process)

    def max_min_samples(self) -> int:
        """The most samples any route budget needs for a pass."""
        return max([self.min_samples, *(b.min_samples or 0 for b in self.budgets)])

    def check(self, snapshot: Mapping[str, Any]) -> BudgetReport:
        """Verdicts for every route and budgeted metric; ``ok`` is False on any fail.

        An exact ``"METHOD /path"`` pattern with no such route in the snapshot
        still yields "insufficient" verdicts, so untested budgets stay visible.
        """
        routes = [e for e in snapshot.get("routes") or () if isinstance(e, Mapping)]
        merged = isinstance(snapshot.get("instances"), list) and not snapshot.get("db")
        note = MERGED_NOTE if merged else DB_OFF_NOTE
        verdicts = [v for entry in routes for v in self._entry_verdicts(entry, note)]
        seen = {entry.get("route") for entry in routes}
        for budget in self.budgets:
            exact, has_method, _ = budget._rank
            if exact and has_method and budget.pattern not in seen:
                # Never requested: no DB numbers is a fault only if the app has none.
                unseen = {} if snapshot.get("db") else {"route": budget.pattern}
                verdicts.extend(
                    self._verdict(budget.pattern, budget, metric, unseen, note)
                    for metric in METRICS
                    if metric in budget.limits
                )
        verdicts.extend(self.process_verdicts(snapshot))
        verdicts.sort(key=lambda v: (v["verdict"] != "fail", v["route"], _ORDER[v["metric"]]))
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

    def _entry_verdicts(self, entry: Mapping[str, Any], note: str = DB_OFF_NOTE) -> list[Verdict]:
        route = entry.get("route")
        if not isinstance(route, str):
            return []
        applied = self._applied_to(route)
        return [
            self._verdict(route, budget, metric, entry, note) for metric, budget in applied.items()
        ]

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
        self, route: str, budget: Budget, metric: str, entry: Mapping[str, Any], note: str
    ) -> Verdict:
        measured, samples = _measure(entry, metric)
        needed = self.min_samples if budget.min_samples is None else budget.min_samples
        verdict = _judge(
            route, budget.pattern, metric, budget.limits[metric], measured, samples, needed
        )
        if metric in DB_METRICS and "route" in entry and not isinstance(entry.get("db"), Mapping):
            verdict["note"] = note  # the route ran, but no DB numbers came with it
        return verdict

    def process_verdicts(self, snapshot: Mapping[str, Any]) -> list[Verdict]:
        """The [process] limits against every process of the snapshot (the worst one)."""
        if not self.process:
            return []
        found = snapshot.get("processes") or [snapshot.get("process")]
        procs = [p for p in found if isinstance(p, Mapping)]
        out = []
        for metric, limit in self.process.items():
            if metric == "max_rss_mb":
                values = [p.get("peak_rss_mb", p.get("rss_mb")) for p in procs]
                samples = sum(max(int(p.get("trend_points") or 0), 1) for p in procs)
            else:
                values = [p.get("slope_mb_per_h") for p in procs]
                samples = sum(int(p.get("trend_points") or 0) for p in procs)
            numbers = [float(v) for v in values if isinstance(v, (int, float))]
            measured = max(numbers) if numbers else None
            out.append(_judge(PROCESS, PROCESS, metric, limit, measured, samples, 1))
        return out


def _judge(
    route: str,
    pattern: str,
    metric: str,
    limit: float,
    measured: float | None,
    samples: int,
    needed: int,
) -> Verdict:
    verdict: Outcome
    if measured is None:
        verdict = "insufficient"
    elif measured > limit and metric in _MAXIMA:
        verdict = "fail"  # one observation over a maximum breaks it
    elif samples < needed:
        verdict = "insufficient"
    else:
        verdict = "fail" if measured > limit else "pass"
    # ms, MB and query counts to 3 places (1 µs, ~1 KB); rates need more to show 0.01%.
    ndigits = 6 if metric == "error_rate" else 3
    return {
        "route": route,
        "pattern": pattern,
        "metric": metric,
        "limit": limit,
        "measured": None if measured is None else round(measured, ndigits),
        "margin": None if measured is None else round(limit - measured, ndigits),
        "samples": samples,
        "verdict": verdict,
    }


def check_process(where: str, limits: Any) -> dict[str, float]:
    if not isinstance(limits, Mapping):
        raise ConfigError(f"{where}: limits must be a mapping of metric to number")
    out = {}
    for name, value in limits.items():
        if name not in _PROCESS_PARSERS:
            known = ", ".join(PROCESS_METRICS)
            raise ConfigError(f"{where}: unknown field {name!r} (known: {known})")
        out[name] = _PROCESS_PARSERS[name](value, name=f"{where}: {name}")
    return out


def _measure(entry: Mapping[str, Any], metric: str) -> tuple[float | None, int]:
    count = int(entry.get("count") or 0)
    if metric == "max_mb":
        memory = entry.get("memory_mb") or {}
        samples = int(memory.get("samples") or 0)
        return (memory.get("max") if samples else None), samples
    if metric == "error_rate":
        return (int(entry.get("errors") or 0) / count if count else None), count
    if metric in DB_METRICS:
        db = entry.get("db")
        part = db.get(_DB_KEY[metric][0]) if isinstance(db, Mapping) else None
        value = part.get(_DB_KEY[metric][1]) if isinstance(part, Mapping) and count else None
        return (float(value) if isinstance(value, (int, float)) else None), count
    latency = entry.get("latency_ms") or {}
    return (latency.get(_LATENCY_KEY[metric]) if count else None), count
