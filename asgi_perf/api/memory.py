"""Process memory over HTTP: ``GET /memory`` and the soak timeline.

``/memory`` is now, the leak slope and its verdict, the process budgets and
the routes that grew most; ``/memory/timeline`` is every point kept, as
JSON, CSV (the seed's soak columns first) or a small SVG chart.
"""

from __future__ import annotations

import os
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from asgi_perf.api._http import SECURITY_HEADERS, AddRoute, BadRequest, json_response
from asgi_perf.core import PerfCore
from asgi_perf.memory.timeline import CSV_COLUMNS, Timeline
from asgi_perf.renderers.line_chart import line_chart_svg

_FORMATS = ("json", "csv", "svg")
_TOP_ROUTES = 10


def add_memory_routes(add: AddRoute, core: PerfCore) -> None:
    def timeline() -> Timeline:
        if core.memory.timeline is None:
            raise BadRequest(
                409,
                "the memory timeline is off: start the app with memory_interval_s > 0 "
                "(or ASGI_PERF_MEMORY_INTERVAL_S=5)",
                option="memory_interval_s",
            )
        return core.memory.timeline

    async def memory(request: Request) -> Response:
        await core.fresh()
        snap = core.snapshot()
        report = core.memory.report()
        report["tracemalloc"] = core.leaks.status()
        report["routes"] = _top_routes(snap.get("routes") or [])
        report["memory_method"] = core.memory_method
        report["budgets"] = core.budgets.process_verdicts(snap)
        if "processes" in snap:
            report["workers"] = snap["processes"]
        return json_response(report)

    async def timeline_view(request: Request) -> Response:
        fmt = request.query_params.get("format", "json")
        if fmt not in _FORMATS:
            raise BadRequest(
                400,
                f"parameter 'format' must be one of {', '.join(_FORMATS)}, got {fmt!r}",
                parameter="format",
            )
        found = timeline()
        name = f"memory-timeline-{os.getpid()}"
        if fmt == "csv":
            return _download(found.csv(), "text/csv; charset=utf-8", f"{name}.csv")
        points = found.points()
        if fmt == "svg":
            svg = line_chart_svg(
                [(p.elapsed_s / 60, p.rss_mb) for p in points],
                title=f"RSS of pid {os.getpid()}",
                x_label="minutes",
                y_label="RSS MB",
            )
            return _download(svg, "image/svg+xml", f"{name}.svg")
        return json_response(
            {
                "schema": 1,
                "pid": os.getpid(),
                **found.stats(),
                "columns": list(CSV_COLUMNS),
                "points": [p.to_json() for p in points],
            }
        )

    add(r"/memory", {"GET": memory})
    add(r"/memory/timeline", {"GET": timeline_view}, ("format",))


def _top_routes(routes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The routes whose requests grew memory most (by the largest one)."""
    measured = [r for r in routes if (r.get("memory_mb") or {}).get("samples")]
    measured.sort(key=lambda r: r["memory_mb"].get("max") or 0.0, reverse=True)
    return [
        {"route": r["route"], "budget": r.get("budget"), **r["memory_mb"]}
        for r in measured[:_TOP_ROUTES]
    ]


def _download(body: str, media_type: str, filename: str) -> Response:
    headers = {**SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="{filename}"'}
    return Response(body, media_type=media_type, headers=headers)
