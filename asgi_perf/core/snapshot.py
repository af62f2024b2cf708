"""The answer of ``GET {prefix}/stats``, put together from what the core keeps.

Apart from ``PerfCore`` so that the class says what is kept and this module
how it is shown: per process, or merged over the workers of a server.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from asgi_perf.db.report import merge_states, route_state, route_summary, total_queries
from asgi_perf.stats.merge import NotMergeable, merge_snapshots

if TYPE_CHECKING:
    from asgi_perf.core.perf_core import PerfCore

MEMORY_NOTE = (
    "per-request memory is the growth of process RSS since the last reading "
    "before the request began (each route's first min_samples requests, then "
    "every memory_sample_every-th), or with tracemalloc=True the traced peak; "
    "concurrent requests blur both"
)


def worker_state(core: PerfCore) -> dict[str, Any]:
    """What this worker shares with the others: its counts, histograms, memory."""
    state = core.recorder.state(core.in_flight())
    state["process"] = core.memory.summary()
    if core.db is not None:
        state["db_state"] = core.db.state()
    return state


def build_snapshot(core: PerfCore, *, histograms: bool = False) -> dict[str, Any]:
    """Everything measured so far, as served by ``GET {prefix}/stats``.

    With workers, the numbers of every worker of the server, merged.
    """
    workers = core.workers
    process = core.memory.summary()
    if workers is None:
        own = snap = core.recorder.snapshot(core.in_flight(), core.memory_method, histograms)
        snap["scope"] = "process"
        snap["workers"] = [
            {
                "pid": os.getpid(),
                "alive": True,
                "requests": own["requests"],
                "last_flush_s": None,
            }
        ]
    else:
        own = core.recorder.state(core.in_flight())
        parts = [own] + [body["snapshot"] for body in workers.others() if body.get("snapshot")]
        try:
            snap = merge_snapshots(parts, histograms=histograms, memory_method=core.memory_method)
        except NotMergeable as exc:
            core.internal_error("shared_dir", exc)
            snap = merge_snapshots([own], histograms=histograms, memory_method=core.memory_method)
        snap["scope"] = "server"
        snap["workers"] = workers.describe(own["requests"])
        # Each worker's own memory: process budgets hold for every one.
        own["process"] = process
        snap["processes"] = [p["process"] for p in parts if isinstance(p.get("process"), dict)]
        snap["shared"] = workers.stats()
    snap["pid"] = os.getpid()
    snap["internal_errors"] = core.internal_errors
    snap["profiling"] = {
        "requests": None if core.requests is None else core.requests.stats(),
        "windows": core.windows.stats(),
        "store": core.store.stats(),
    }
    snap["profiling"]["sampler"] = core.sampler.stats()
    snap["profiling"]["continuous"] = None if core.ring is None else core.ring.stats()
    snap["process"] = process
    if core.loop is not None:
        snap["loop"] = core.loop.summary()
        blocks = core.loop.route_blocks
        for route in snap["routes"]:
            route["loop_blocks"] = blocks.get(route["route"], 0)
    else:
        snap["loop"] = None
    snap["memory_note"] = MEMORY_NOTE
    if core.db is not None:
        merged = merge_states(core.db.states())
        for route in snap["routes"]:
            found = merged.routes.get(route["route"])
            route["db"] = route_summary(found)
            if histograms:
                # What a merge of several hosts needs to add them exactly.
                route["histograms"]["db"] = route_state(found)
        snap["db"] = {
            "enabled": True,
            "queries": total_queries(merged),
            "n_plus_one_threshold": core.config.n_plus_one_threshold,
        }
    if core.budgets:
        checked = core.budgets.check(snap)
        snap["budgets"] = {
            "ok": checked["ok"],
            "failed": sum(1 for v in checked["verdicts"] if v["verdict"] == "fail"),
        }
        for route in snap["routes"]:
            route["budget"] = core.budgets.route_verdict(route)
    return dict(sorted(snap.items(), key=lambda kv: kv[0] != "schema"))
