"""Budgets for tests: loaded from a test's sources, merged, and checked one line each.

Needs neither httpx nor pytest: the pytest plugin reads its markers with these
before any client exists.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from asgi_perf.budgets import DB_METRICS, Budget, BudgetSet, load_budgets
from asgi_perf.units import number_text

BudgetsLike = Mapping[str, Any] | str | os.PathLike[str] | BudgetSet | None
# The memory_budget fixture: memory_budget("24 MB").
MemoryBudget = Callable[[float | str], None]

# A test makes a handful of requests, not the thousands of a load test: one
# sample is enough for a verdict unless a test or a budgets file says otherwise.
DEFAULT_MIN_SAMPLES = 1
# No budgets file sets min_samples this high: seeing it back means the source did not set it.
_UNSET = 2**62
_UNITS = {"max_mb": " MB", "error_rate": "%", "max_queries": " queries"}


def format_verdict(verdict: Mapping[str, Any]) -> str:
    """One line for one verdict of ``BudgetSet.check`` (or ``GET /_perf/budgets``):
    ``GET /slow p99_ms: 101.2 ms > limit 50 ms (412 samples)``."""
    metric = verdict["metric"]
    scale = 100.0 if metric == "error_rate" else 1.0

    def text(value: float) -> str:
        unit = _UNITS.get(metric, " ms")
        if metric == "max_queries" and value == 1:
            unit = " query"
        return f"{number_text(value * scale)}{unit}"

    limit = f"limit {text(verdict['limit'])}"
    samples = verdict["samples"]
    counted = f"{samples} sample{'' if samples == 1 else 's'}"
    if verdict["pattern"] != verdict["route"]:
        counted += f', budget "{verdict["pattern"]}"'
    head = f"{verdict['route']} {metric}:"
    if verdict.get("note"):
        return f"{head} {verdict['note']} ({counted}), {limit}"
    if verdict["verdict"] == "insufficient" or verdict["measured"] is None:
        return f"{head} not enough samples ({counted}), {limit}"
    relation = ">" if verdict["verdict"] == "fail" else "<="
    return f"{head} {text(verdict['measured'])} {relation} {limit} ({counted})"


def is_broken(verdict: Mapping[str, Any]) -> bool:
    """A fail, or a budget that cannot be judged as the app is set up (it has a
    ``note``, e.g. ``max_queries`` with DB capture off): a test must not pass on it."""
    return verdict["verdict"] == "fail" or bool(verdict.get("note"))


def wants_db(budgets: BudgetSet) -> bool:
    """Whether a budget reads DB numbers (``max_queries``, ``p99_db_ms``)."""
    return any(DB_METRICS.intersection(b.limits) for b in budgets.budgets)


def merge_budgets(parts: Iterable[Iterable[Budget]], *, min_samples: int) -> BudgetSet:
    """One ``BudgetSet`` from the budgets of several sources (see ``load_source``);
    a later part overrides an earlier one metric by metric for the same pattern.
    ``min_samples`` applies to the budgets that carry none of their own.
    """
    merged: dict[str, tuple[dict[str, float], int | None]] = {}
    for part in parts:
        for budget in part:
            limits, samples = merged.get(budget.pattern, ({}, None))
            limits = {**limits, **budget.limits}
            if budget.min_samples is not None:
                samples = budget.min_samples
            merged[budget.pattern] = (limits, samples)
    budgets = tuple(Budget(p, limits, samples) for p, (limits, samples) in merged.items())
    return BudgetSet(budgets, min_samples=min_samples, source="test budgets")


def load_source(source: BudgetsLike, *, min_samples: int | None = None) -> tuple[Budget, ...]:
    """The budgets of one source, each carrying the ``min_samples`` that applies to
    it when the source (or ``min_samples``) sets one; ``None`` is no budgets."""
    if source is None:
        return ()
    budget_set = load_budgets(source, min_samples=_UNSET, pyproject=None)
    if min_samples is None and budget_set.min_samples != _UNSET:
        min_samples = budget_set.min_samples
    if min_samples is None:
        return budget_set.budgets
    return tuple(
        b if b.min_samples is not None else Budget(b.pattern, b.limits, min_samples)
        for b in budget_set.budgets
    )


def as_table(budgets: BudgetSet) -> dict[str, Any]:
    """A ``BudgetSet`` as the dict ``PerfMiddleware(budgets=...)`` takes."""
    table: dict[str, Any] = {"min_samples": budgets.min_samples}
    for b in budgets.budgets:
        fields: dict[str, Any] = dict(b.limits)
        if b.min_samples is not None:
            fields["min_samples"] = b.min_samples
        table[b.pattern] = fields
    return table
