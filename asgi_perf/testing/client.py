"""The in-process client for tests, and the budget checks that read it.

``PerfTestClient`` serves an app wrapped by ``PerfMiddleware`` in-process;
``check_budgets`` and ``assert_budgets`` return or raise one line per broken
limit. This module needs httpx (``pip install httpx``), as any in-process
ASGI client does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import httpx

from asgi_perf._types import ASGIApp, Receive, Scope, Send
from asgi_perf.budgets import BudgetReport, BudgetSet, load_budgets
from asgi_perf.config import PerfConfig
from asgi_perf.middleware import PerfMiddleware
from asgi_perf.testing.budgets import (
    DEFAULT_MIN_SAMPLES,
    BudgetsLike,
    as_table,
    format_verdict,
    is_broken,
    load_source,
    merge_budgets,
    wants_db,
)
from asgi_perf.testing.transport import LOOPBACK, LoopTransport


def check_budgets(
    source: PerfTestClient | PerfMiddleware | Mapping[str, Any],
    budgets: BudgetsLike = None,
    *,
    min_samples: int = DEFAULT_MIN_SAMPLES,
) -> list[str]:
    """The broken budgets of ``source``, one line each (empty when all hold).

    A budget the app cannot measure as it is set up (``max_queries`` with DB
    capture off) counts as broken: its line says what to turn on.

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
    return [format_verdict(v) for v in own.check(snapshot)["verdicts"] if is_broken(v)]


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
            # A test wants a bad option to fail where it is written, not to
            # serve on with asgi_perf switched off: strict unless told otherwise.
            options = {
                "min_samples": DEFAULT_MIN_SAMPLES,
                "memory_sample_every": 1,
                "strict": True,
                **options,
            }
            min_samples = options["min_samples"]
        self.budgets: BudgetSet = merge_budgets([load_source(budgets)], min_samples=min_samples)
        options["budgets"] = as_table(self.budgets)
        if "config" not in options and "db" not in options and wants_db(self.budgets):
            # A max_queries budget is the test asking for DB numbers; db=False still wins.
            options["db"] = True
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

    def check(self) -> BudgetReport:
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
