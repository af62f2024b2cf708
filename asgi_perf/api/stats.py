"""The index, stats, budgets and reset endpoints."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from asgi_perf.api._http import AddRoute, json_response, query_bool
from asgi_perf.api.dashboard import index_page, wants_html
from asgi_perf.core import PerfCore


def add_stats_routes(add: AddRoute, core: PerfCore) -> None:
    prefix = core.config.prefix

    async def index(request: Request) -> Response:
        p = prefix
        endpoints = {
            "stats": f"GET {p}/stats",
            "budgets": f"GET {p}/budgets",
            "reset": f"POST {p}/reset",
            "metrics": f"GET {p}/metrics (Prometheus; OpenMetrics on Accept)",
            "profile": f"GET {p}/profile?seconds=30&engine=sampler&format=prof&route=",
            "recent": f"GET {p}/profile?last=60&format=svg (with continuous=True)",
            "windows": f"POST {p}/windows?seconds=300 ; POST {p}/windows/{{id}}/stop",
            "profiles": f"GET {p}/profiles?route=&kind=&tag=&limit=",
            "profile_file": f"GET {p}/profiles/{{id|latest|slowest}}.{{prof,svg,html,"
            "speedscope.json,collapsed,pb.gz,json}",
            "merged": f"GET {p}/profiles/merged.prof?route=GET /path or ?ids=a,b",
            "snakeviz": f"GET {p}/profiles/{{id}}/snakeviz",
            "routes": f"GET {p}/profiles/{{id}}/routes",
            "loop": f"GET {p}/loop ; GET {p}/loop/blocks.{{prof,svg,...}}",
            "db": f"GET {p}/db?route=&limit=20 (with db=True)",
            "memory": f"GET {p}/memory ; GET {p}/memory/timeline?format=json|csv|svg",
            "leaks": f"POST {p}/memory/tracemalloc/start?frames=1 ; POST {p}/memory/snapshot ; "
            f"GET {p}/memory/diff?top=30 ; GET {p}/memory/top?top=30&group_by=lineno ; "
            f"POST {p}/memory/tracemalloc/stop",
        }
        if wants_html(request.scope):
            # A browser gets the dashboard; JSON clients keep this list.
            return index_page(request, core.config)
        return json_response({"schema": 1, "endpoints": endpoints})

    async def stats(request: Request) -> Response:
        histograms = query_bool(request, "histograms")
        await core.fresh()
        return json_response(core.snapshot(histograms=histograms))

    async def budgets(request: Request) -> Response:
        await core.fresh()
        return json_response(core.budgets.check(core.snapshot()))

    async def reset(request: Request) -> Response:
        await core.fresh()
        return json_response(core.reset())

    add(r"/", {"GET": index})
    add(r"/stats", {"GET": stats}, ("histograms",))
    add(r"/budgets", {"GET": budgets})
    add(r"/reset", {"POST": reset})
