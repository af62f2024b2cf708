"""Performance budgets per route pattern, checked against a stats snapshot.

``pattern`` says which routes a budget covers, ``check`` gives the verdicts
(and holds the process budgets), ``load`` reads budgets from a dict, a TOML
file or ``pyproject.toml``.
"""

from asgi_perf.budgets.check import (
    DB_OFF_NOTE,
    PROCESS,
    PROCESS_METRICS,
    BudgetReport,
    BudgetSet,
    Outcome,
    Verdict,
)
from asgi_perf.budgets.load import load_budgets
from asgi_perf.budgets.pattern import DB_METRICS, METRICS, Budget

__all__ = [
    "DB_METRICS",
    "DB_OFF_NOTE",
    "METRICS",
    "PROCESS",
    "PROCESS_METRICS",
    "Budget",
    "BudgetReport",
    "BudgetSet",
    "Outcome",
    "Verdict",
    "load_budgets",
]
