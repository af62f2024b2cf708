"""Helpers for tests: an in-process client for an app wrapped by asgi_perf, and
budget checks that return one line per broken limit.

The pytest plugin (``asgi_perf.pytest_plugin``) is built on these; they work
without pytest too::

    with PerfTestClient(app, budgets={"GET /items/{item_id}": {"p99_ms": "50 ms"}}) as client:
        client.get("/items/1")
    assert_budgets(client)

This module needs httpx (``pip install httpx``), as any in-process ASGI client does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import httpx

from asgi_perf._test_transport import LOOPBACK, LoopTransport
from asgi_perf._types import ASGIApp, Receive, Scope, Send
from asgi_perf.budgets import Budget, BudgetSet, load_budgets
from asgi_perf.config import PerfConfig
from asgi_perf.middleware import PerfMiddleware
from asgi_perf.units import number_text

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

BudgetsLike = Mapping[str, Any] | str | os.PathLike[str] | BudgetSet | None
# The memory_budget fixture: memory_budget("24 MB").
MemoryBudget = Callable[[float | str], None]

# A test makes a handful of requests, not the thousands of a load test: one
# sample is enough for a verdict unless a test or a budgets file says otherwise.
DEFAULT_MIN_SAMPLES = 1
# No budgets file sets min_samples this high: seeing it back means the source did not set it.
_UNSET = 2**62
_UNITS = {"max_mb": " MB", "error_rate": "%"}


def format_verdict(verdict: Mapping[str, Any]) -> str:
    """One line for one verdict of ``BudgetSet.check`` (or ``GET /_perf/budgets``):
    ``GET /slow p99_ms: 101.2 ms > limit 50 ms (412 samples)``."""
    metric = verdict["metric"]
    unit = _UNITS.get(metric, " ms")
    scale = 100.0 if metric == "error_rate" else 1.0
    limit = f"limit {number_text(verdict['limit'] * scale)}{unit}"
    samples = verdict["samples"]
    counted = f"{samples} sample{'' if samples == 1 else 's'}"
    if verdict["pattern"] != verdict["route"]:
        counted += f', budget "{verdict["pattern"]}"'
    head = f"{verdict['route']} {metric}:"
    if verdict["verdict"] == "insufficient" or verdict["measured"] is None:
        return f"{head} not enough samples ({counted}), {limit}"
    relation = ">" if verdict["verdict"] == "fail" else "<="
    return f"{head} {number_text(verdict['measured'] * scale)}{unit} {relation} {limit} ({counted})"


def check_budgets(
    source: PerfTestClient | PerfMiddleware | Mapping[str, Any],
    budgets: BudgetsLike = None,
    *,
    min_samples: int = DEFAULT_MIN_SAMPLES,
) -> list[str]:
    """The broken budgets of ``source``, one line each (empty when all hold).

    ``source`` is a ``PerfTestClient``, a ``PerfMiddleware`` or a stats snapshot
    (``/_perf/stats`` or ``snapshot()``). ``budgets`` defaults to the client's
    or middleware's own; a dict or a TOML path is loaded with ``min_samples``
    (a ``min_samples`` set in the source itself wins).
    """
    if isinstance(source, PerfTestClient):
        own: BudgetSet | None = source.budgets
        snapshot: Mapping[str, Any] = source.snapshot()
    elif isinstance(source, PerfMiddleware):
        own, snapshot = source.budgets, source.snapshot()
    else:
        own, snapshot = None, source
    if budgets is not None:
        own = load_budgets(budgets, min_samples=min_samples, pyproject=None)
    if own is None:
        raise TypeError("check_budgets: a snapshot needs budgets=... to be checked against")
    return [format_verdict(v) for v in own.check(snapshot)["verdicts"] if v["verdict"] == "fail"]


def assert_budgets(
    source: PerfTestClient | PerfMiddleware | Mapping[str, Any],
    budgets: BudgetsLike = None,
    *,
    min_samples: int = DEFAULT_MIN_SAMPLES,
) -> None:
    """Raise ``AssertionError`` listing every broken budget (see ``check_budgets``)."""
    __tracebackhide__ = True  # pytest shows the caller's line, not this one
    broken = check_budgets(source, budgets, min_samples=min_samples)
    if broken:
        raise AssertionError("\n".join(broken))


class PerfTestClient(httpx.Client):
    """A synchronous httpx client serving ``app`` wrapped by ``PerfMiddleware``, in-process.

    Requests run on one event loop in a background thread, as under a server.
    ``with client:`` also runs the app's lifespan (startup, then shutdown on
    exit). ``options`` go to ``PerfMiddleware``; unlike a deployed app,
    ``min_samples`` defaults to 1 and every request's memory is measured.
    Without ``budgets`` no budgets apply (``pyproject.toml`` is not read).
    """

    def __init__(
        self,
        app: ASGIApp,
        /,
        budgets: BudgetsLike = None,
        *,
        raise_app_exceptions: bool = True,
        **options: Any,
    ) -> None:
        config = options.get("config")
        if isinstance(config, PerfConfig):
            # A config passed in is taken as it is, budgets and min_samples included.
            if budgets is None:
                budgets = config.budgets
            min_samples = options.get("min_samples", config.min_samples)
        else:
            options = {"min_samples": DEFAULT_MIN_SAMPLES, "memory_sample_every": 1, **options}
            min_samples = options["min_samples"]
        self.budgets: BudgetSet = merge_budgets([load_source(budgets)], min_samples=min_samples)
        options["budgets"] = _as_table(self.budgets)
        self.perf = PerfMiddleware(app, **options)
        self._raise = raise_app_exceptions
        self._loop = LoopTransport(self._serve, raise_app_exceptions)
        super().__init__(
            transport=self._loop,
            base_url="http://testserver",
            follow_redirects=True,  # as starlette's TestClient
            trust_env=False,
        )

    def snapshot(self) -> dict[str, Any]:
        """The middleware's stats snapshot, as ``GET /_perf/stats`` serves it."""
        return self.perf.snapshot()

    def check(self) -> dict[str, Any]:
        """Verdicts of this client's budgets, as ``GET /_perf/budgets`` serves them."""
        return self.budgets.check(self.perf.snapshot())

    def violations(self) -> list[str]:
        """One line per broken budget; empty when every budget holds."""
        return check_budgets(self)

    def async_client(self, **kwargs: Any) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` for the same wrapped app, on the caller's event loop.

        It does not run the lifespan itself; state from ``with client:`` is shared.
        """
        transport = httpx.ASGITransport(
            app=self._serve, raise_app_exceptions=self._raise, client=LOOPBACK
        )
        kwargs.setdefault("base_url", self.base_url)
        kwargs.setdefault("follow_redirects", True)
        kwargs.setdefault("trust_env", False)
        return httpx.AsyncClient(transport=transport, **kwargs)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            # Servers hand every request a shallow copy of the lifespan state.
            scope["state"] = dict(self._loop.state)
        await self.perf(scope, receive, send)


class PerfAppFactory(Protocol):
    """The ``perf_app`` fixture: ``perf_app(app, budgets=..., **options)``."""

    def __call__(
        self, app: ASGIApp, /, budgets: BudgetsLike = None, **options: Any
    ) -> PerfTestClient: ...


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


def _as_table(budgets: BudgetSet) -> dict[str, Any]:
    """A ``BudgetSet`` as the dict ``PerfMiddleware(budgets=...)`` takes."""
    table: dict[str, Any] = {"min_samples": budgets.min_samples}
    for b in budgets.budgets:
        fields: dict[str, Any] = dict(b.limits)
        if b.min_samples is not None:
            fields["min_samples"] = b.min_samples
        table[b.pattern] = fields
    return table
