"""``GET {prefix}/metrics``: the numbers in the Prometheus exposition formats.

Each scrape takes one snapshot (``core.snapshot(histograms=True)``, the
view of every worker when they share one), and with ``db=True`` the DB
rows (``core.db.metric_rows()``, every worker's too), and renders them with
``prometheus_client`` (see ``asgi_perf.api._prometheus``).

The library is imported on the first scrape: an app that is never scraped
pays neither its import (~25 ms) nor the default registry it builds. A
scrape runs in a worker thread: with hundreds of routes, rendering tens of
thousands of series takes a good fraction of a second, which on the event
loop would stall every request in flight and show up as a loop block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from asgi_perf.api._http import SECURITY_HEADERS, AddRoute
from asgi_perf.core import PerfCore

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry


def add_metrics_routes(add: AddRoute, core: PerfCore) -> None:
    registry: CollectorRegistry | None = None

    def scrape(accept: str, accept_encoding: str) -> tuple[bytes, dict[str, str]]:
        nonlocal registry
        from asgi_perf.api import _prometheus

        if registry is None:
            collector = _prometheus.SnapshotCollector(
                lambda: core.snapshot(histograms=True),
                core.budgets.check,
                None if core.db is None else core.db.metric_rows,
            )
            registry = _prometheus.private_registry(collector)
        return _prometheus.expose(registry, accept, accept_encoding)

    async def metrics(request: Request) -> Response:
        body, headers = await run_in_threadpool(
            scrape,
            ",".join(request.headers.getlist("accept")),
            ",".join(request.headers.getlist("accept-encoding")),
        )
        return Response(body, headers={**SECURITY_HEADERS, **headers})

    add(r"/metrics", {"GET": metrics})
