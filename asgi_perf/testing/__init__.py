"""Helpers for tests: an in-process client for an app wrapped by asgi_perf, and
budget checks that return one line per broken limit.

The pytest plugin (``asgi_perf.pytest_plugin``) is built on these; they work
without pytest too::

    with PerfTestClient(app, budgets={"GET /items/{item_id}": {"p99_ms": "50 ms"}}) as client:
        client.get("/items/1")
    assert_budgets(client)

The client and the checks need httpx (``pip install httpx``), as any in-process
ASGI client does. They are imported on first use: the pytest plugin, loaded in
every pytest run, imports ``asgi_perf.testing.memory_watch`` without httpx.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asgi_perf.testing.budgets import (
        DEFAULT_MIN_SAMPLES,
        BudgetsLike,
        MemoryBudget,
        format_verdict,
    )
    from asgi_perf.testing.client import (
        PerfAppFactory,
        PerfTestClient,
        assert_budgets,
        check_budgets,
    )

__all__ = [
    "DEFAULT_MIN_SAMPLES",
    "BudgetsLike",
    "MemoryBudget",
    "PerfAppFactory",
    "PerfTestClient",
    "assert_budgets",
    "check_budgets",
    "format_verdict",
]

# Public name -> the module of this package that defines it.
_HOME = {
    "DEFAULT_MIN_SAMPLES": "budgets",
    "BudgetsLike": "budgets",
    "MemoryBudget": "budgets",
    "format_verdict": "budgets",
    "PerfAppFactory": "client",
    "PerfTestClient": "client",
    "assert_budgets": "client",
    "check_budgets": "client",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # found once; later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
