"""End to end: the sampler engine, the continuous ring and the loop monitor.

A real uvicorn server runs FastAPI apps whose routes burn CPU in functions
only they call; load comes from real HTTP clients while a window runs, and
what comes back is read the way a user reads it: collapsed stacks, pstats,
the per-route breakdown, ``/_perf/loop``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pprof_reader
import pytest
from cpu_work import CHUNKS, alpha_work, beta_work, sync_work
from fastapi import FastAPI
from helpers import function_names, load_stats

from asgi_perf import PerfMiddleware
from asgi_perf.engines.pyspy_impl import PyspyEngine
from asgi_perf.renderers import RENDERERS

pytestmark = pytest.mark.slow

ALPHA = "GET /alpha"
# Chunks of CPU work run back to back: a sample is taken when the sampler
# thread gets the GIL, up to a switch interval (1 ms while sampling) after it
# was due, so stretches much shorter than that land partly on what runs next.
STRETCH = 3
BETA = "GET /beta"


def build_app() -> FastAPI:
    app = FastAPI()

    @app.get("/alpha")
    async def alpha() -> dict[str, int]:
        # Three stretches of CPU for each one of /beta: the 3 : 1 ground truth.
        total = 0
        for _ in range(3):
            total += sum(alpha_work() for _ in range(STRETCH))
            await asyncio.sleep(0)
        return {"alpha": total}

    @app.get("/beta")
    async def beta() -> dict[str, int]:
        total = sum(beta_work() for _ in range(STRETCH))
        await asyncio.sleep(0)
        return {"beta": total}

    @app.get("/sync")
    def sync_endpoint() -> dict[str, int]:
        return {"sync": sum(sync_work() for _ in range(CHUNKS))}

    @app.get("/block")
    async def block() -> dict[str, bool]:
        time.sleep(0.3)  # the canonical bug: a blocking call in an async route
        return {"blocked": True}

    @app.get("/busy")
    async def busy() -> dict[str, int]:
        # Busy but polite: many short steps, the loop answers between them.
        total = 0
        for _ in range(200):
            total += sum(range(2000))
            await asyncio.sleep(0)
        return {"busy": total}

    @app.get("/idle")
    async def idle() -> dict[str, bool]:
        await asyncio.sleep(0.05)
        return {"idle": True}

    return app


def perf(**options: Any) -> PerfMiddleware:
    """The test app under asgi_perf; the sampler may use 5 % of a core.

    The servers run in the test's own process, whose other threads (the
    clients) the sampler reads too, and coverage traces the sampler's own
    thread: at its default 1 % it would sample too rarely to be sure of
    short runs.
    """
    options.setdefault("sampler_max_cpu", 0.05)
    return PerfMiddleware(build_app(), **options)


BLOCK_LINE = next(
    i
    for i, line in enumerate(
        inspect.getsource(build_app).splitlines(), build_app.__code__.co_firstlineno
    )
    if "time.sleep(0.3)" in line
)


async def load(url: str, paths: list[str], until: float, concurrency: int = 4) -> int:
    """Requests to ``paths`` in turn from ``concurrency`` clients until ``until``."""
    sent = 0

    async def client() -> None:
        nonlocal sent
        async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=30) as c:
            while time.monotonic() < until:
                for path in paths:
                    (await c.get(path)).raise_for_status()
                    sent += 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return sent


async def window_under_load(
    client: httpx.AsyncClient, url: str, paths: list[str], seconds: int = 3, **params: Any
) -> httpx.Response:
    """A sampler window of ``seconds`` while clients hit ``paths``."""
    until = time.monotonic() + seconds + 0.5
    loader = asyncio.ensure_future(load(url, paths, until))
    await asyncio.sleep(0.2)
    response = await client.get("/_perf/profile", params={"seconds": seconds, **params})
    await loader
    return response


def collapsed_by_route(text: str) -> dict[str, list[tuple[list[str], int]]]:
    """Folded stacks grouped by their root frame (the route label)."""
    out: dict[str, list[tuple[list[str], int]]] = {}
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        out.setdefault(frames[0], []).append((frames, int(count)))
    return out


def root_name(frame: str) -> str:
    """``GET /alpha (<route>)`` -> ``GET /alpha``: a folded frame's function."""
    return frame.rsplit(" (", 1)[0]


async def test_samples_are_attributed_to_their_route_in_the_ratio_of_their_work(
    live_server, client_for
):
    # Enough samples for +-5 points to be ~3 standard errors, coverage's
    # tracing of the sampler thread notwithstanding.
    server = live_server(PerfMiddleware(build_app(), sampler_hz=200, sampler_max_cpu=0.05))
    async with client_for(server.url) as client:
        response = await window_under_load(
            client, server.url, ["/alpha", "/beta"], format="collapsed"
        )
        assert response.status_code == 200, response.text
        profile_id = response.headers["x-perf-profile-id"]
        meta = (await client.get(f"/_perf/profiles/{profile_id}")).json()
        routes = (await client.get(f"/_perf/profiles/{profile_id}/routes")).json()

    assert meta["engine"] == "sampler"
    assert meta["samples"] > 50
    stacks = {root_name(k): v for k, v in collapsed_by_route(response.text).items()}
    # Zero samples of one route's function under the other.
    assert any("alpha_work" in ";".join(f) for f, _ in stacks[ALPHA])
    assert not any("beta_work" in ";".join(f) for f, _ in stacks[ALPHA])
    assert any("beta_work" in ";".join(f) for f, _ in stacks[BETA])
    assert not any("alpha_work" in ";".join(f) for f, _ in stacks[BETA])

    assert routes["schema"] == 1 and routes["attributed"] is True
    by_route = {r["route"]: r for r in routes["routes"]}
    alpha, beta = by_route[ALPHA], by_route[BETA]
    share = alpha["seconds"] / (alpha["seconds"] + beta["seconds"])
    assert 0.70 <= share <= 0.80, (alpha, beta)
    for row in (alpha, beta):
        assert row["samples"] > 0 and 0 < row["share"] <= 1
        assert len(row["top"]) <= 10
        assert set(row["top"][0]) == {"function", "file", "line", "self_share", "total_share"}
    assert alpha["top"][0]["function"] == "alpha_work"
    assert beta["top"][0]["function"] == "beta_work"


async def test_a_sync_def_endpoints_frames_are_under_its_route(live_server, client_for):
    server = live_server(perf())
    async with client_for(server.url) as client:
        response = await window_under_load(client, server.url, ["/sync"], format="collapsed")
    assert response.status_code == 200, response.text
    stacks = {root_name(k): v for k, v in collapsed_by_route(response.text).items()}
    sync = [frames for frames, _ in stacks["GET /sync"] if "sync_work" in ";".join(frames)]
    assert sync, sorted(stacks)
    # Sampled on the worker thread that ran it, not the loop.
    assert all(root_name(frames[1]) == "worker" for frames in sync)
    assert any(root_name(f).endswith("sync_endpoint") for frames in sync for f in frames)


async def test_idle_is_left_out_unless_asked_for(live_server, client_for):
    server = live_server(perf())
    async with client_for(server.url) as client:
        # A quiet app: a request now and then, waiting most of the time.
        response = await window_under_load(
            client, server.url, ["/idle"], seconds=1, format="collapsed"
        )
        profile_id = response.headers["x-perf-profile-id"]
        meta = (await client.get(f"/_perf/profiles/{profile_id}")).json()
        with_idle = await client.get(f"/_perf/profiles/{profile_id}.collapsed?idle=1")
        bad = await client.get(f"/_perf/profiles/{profile_id}.collapsed?idle=maybe")
    assert response.status_code == 200
    assert meta["idle_samples"] > 10
    assert "<idle>" not in response.text
    assert with_idle.status_code == 200
    idle = sum(n for f, n in collapsed_by_route(with_idle.text).get("<idle> (<route>)", []))
    assert idle > 0
    assert bad.status_code == 400 and bad.json()["parameter"] == "idle"


async def test_the_sampler_stretches_its_interval_to_stay_under_its_cpu_budget(
    live_server, client_for
):
    mw = PerfMiddleware(build_app(), sampler_hz=1000, sampler_max_cpu=0.002)
    server = live_server(mw)
    async with client_for(server.url) as client:
        response = await window_under_load(client, server.url, ["/alpha"], seconds=2)
        meta = (await client.get(f"/_perf/profiles/{response.headers['x-perf-profile-id']}")).json()
        stats = (await client.get("/_perf/stats")).json()["profiling"]["sampler"]
    assert meta["hz"] == 1000
    # A tick costs tens of microseconds: 1000 a second would be 5 % of a core.
    assert meta["interval_s"] > 5 * 0.001, meta
    assert meta["sampler_cpu_share"] < 0.006, meta
    assert stats["effective_hz"] < 200


@pytest.mark.parametrize("fmt", sorted(RENDERERS))
async def test_route_filters_every_format(live_server, client_for, tmp_path, fmt):
    server = live_server(perf())
    async with client_for(server.url) as client:
        window = await window_under_load(client, server.url, ["/alpha", "/beta"], seconds=2)
        profile_id = window.headers["x-perf-profile-id"]
        url = f"/_perf/profiles/{profile_id}.{fmt}?route={quote(BETA)}"
        only_beta = await client.get(url)
        missing = await client.get(f"/_perf/profiles/{profile_id}.{fmt}?route=GET%20/nowhere")
    assert only_beta.status_code == 200, only_beta.text
    body = only_beta.content
    if fmt == "prof":
        names = function_names(load_stats(body, tmp_path))
        assert "beta_work" in names and "alpha_work" not in names
    elif fmt == "pb.gz":
        profile = pprof_reader.read(body)
        names = {name for s in profile.samples for name in profile.names(s)}
        assert "beta_work" in names and "alpha_work" not in names
        assert {r for s in profile.samples for r in s.labels["route"]} == {BETA}
    else:
        assert b"beta_work" in body and b"alpha_work" not in body
    assert missing.status_code == 404 and "GET /nowhere" in missing.json()["error"]


async def test_a_window_of_a_non_attributing_engine_refuses_route_clearly(live_server, client_for):
    server = live_server(perf())
    async with client_for(server.url) as client:
        window = await window_under_load(
            client, server.url, ["/alpha"], seconds=1, engine="pyinstrument"
        )
        profile_id = window.headers["x-perf-profile-id"]
        refused = await client.get(f"/_perf/profiles/{profile_id}.svg?route={quote(ALPHA)}")
    assert refused.status_code == 400
    assert "sampler" in refused.json()["error"]


async def test_continuous_profiling_answers_for_the_recent_past_at_once(live_server, client_for):
    server = live_server(perf(continuous=True, continuous_minutes=1))
    async with client_for(server.url) as client:
        await load(server.url, ["/alpha", "/beta"], time.monotonic() + 2.5)
        started = time.monotonic()
        recent = await client.get("/_perf/profile", params={"last": 5, "format": "collapsed"})
        took = time.monotonic() - started
        routes_only = await client.get(
            "/_perf/profile", params={"last": 5, "format": "collapsed", "route": BETA}
        )
        too_long = await client.get("/_perf/profile", params={"last": 61})
        zero = await client.get("/_perf/profile", params={"last": 0})
        both = await client.get("/_perf/profile", params={"last": 5, "seconds": 5})
        stats = (await client.get("/_perf/stats")).json()["profiling"]["continuous"]
    assert recent.status_code == 200, recent.text
    assert took < 1.0  # nothing to wait for: the samples are already there
    assert "alpha_work" in recent.text and "beta_work" in recent.text
    assert routes_only.status_code == 200
    assert "beta_work" in routes_only.text and "alpha_work" not in routes_only.text
    for response in (too_long, zero, both):
        assert response.status_code == 400, response.text
    assert too_long.json()["parameter"] == "last"
    assert stats["running"] is True and stats["minutes"] == 1


async def test_last_without_continuous_is_a_409_naming_the_option(live_server, client_for):
    server = live_server(perf())
    async with client_for(server.url) as client:
        response = await client.get("/_perf/profile", params={"last": 5})
    assert response.status_code == 409
    body = response.json()
    assert "continuous" in body["error"] and body["option"] == "continuous"


async def test_the_blocking_call_is_caught_with_its_line_and_route(
    live_server, client_for, eventually
):
    server = live_server(perf())
    async with client_for(server.url) as client:
        await client.get("/alpha")
        assert (await client.get("/block")).status_code == 200

        async def recorded() -> bool:
            return bool((await client.get("/_perf/loop")).json()["blocks"])

        await eventually(recorded)
        loop = (await client.get("/_perf/loop")).json()
        stats = (await client.get("/_perf/stats")).json()
        svg = await client.get("/_perf/loop/blocks.svg")
        folded = await client.get("/_perf/loop/blocks.collapsed")

    assert loop["schema"] == 1 and loop["threshold_ms"] == 100
    assert set(loop["lag_ms"]) >= {"p50", "p90", "p99", "max", "mean"}
    (block,) = loop["blocks"]
    assert 250 <= block["duration_ms"] <= 350, block
    assert block["routes"][0] == "GET /block"
    assert block["thread"]
    assert block["at"] > time.time() - 60
    top = block["stack"][-1]
    assert top["function"].endswith("block") and top["line"] == BLOCK_LINE, block["stack"]
    assert top["file"] == __file__
    assert 250 <= loop["blocked_ms_total"] <= 350

    (summary,) = stats["loop"]["blocks"]
    assert summary["routes"][0] == "GET /block" and "stack" not in summary
    assert stats["loop"]["block_count"] == 1
    assert stats["loop"]["lag_ms"]["max"] >= 250
    by_route = {r["route"]: r for r in stats["routes"]}
    assert by_route["GET /block"]["loop_blocks"] == 1
    assert by_route["GET /alpha"]["loop_blocks"] == 0
    assert svg.status_code == 200 and b"block" in svg.content
    assert "GET /block" in folded.text


async def test_no_block_on_an_idle_or_merely_busy_loop(live_server, client_for):
    server = live_server(perf())
    async with client_for(server.url) as client:
        await asyncio.sleep(1.0)  # idle
        await load(server.url, ["/busy", "/idle"], time.monotonic() + 2, concurrency=8)
        loop = (await client.get("/_perf/loop")).json()
        none = await client.get("/_perf/loop/blocks.svg")
    assert loop["blocks"] == [], loop["blocks"]
    assert loop["pings"] > 20
    assert loop["lag_ms"]["max"] < 100
    assert none.status_code == 404


async def test_the_loop_monitor_can_be_turned_off(live_server, client_for):
    server = live_server(PerfMiddleware(build_app(), loop_monitor=False))
    async with client_for(server.url) as client:
        await client.get("/block")
        loop = await client.get("/_perf/loop")
        stats = (await client.get("/_perf/stats")).json()
    assert loop.status_code == 409 and loop.json()["option"] == "loop_monitor"
    assert stats["loop"] is None


async def test_request_profiles_go_on_during_a_sampler_window(live_server, client_for):
    # The sampler sets no hook, so per-request profiles need not wait for it.
    server = live_server(perf())
    async with client_for(server.url) as client:
        started = await client.post("/_perf/windows", params={"seconds": 30})
        profiled = await client.get("/beta", headers={"X-Perf-Profile": "1"})
        await client.post(f"/_perf/windows/{started.json()['id']}/stop")
    assert started.status_code == 201 and started.json()["engine"] == "sampler"
    assert "x-perf-profile-id" in profiled.headers


async def test_a_tagged_profiled_request_is_labelled_in_the_window(live_server, client_for):
    server = live_server(perf())
    headers = {"X-Perf-Tag": "run-7", "X-Perf-Profile": "1"}
    async with client_for(server.url) as client:
        started = await client.post("/_perf/windows", params={"seconds": 30})
        until = time.monotonic() + 1.5
        while time.monotonic() < until:
            await client.get("/alpha", headers=headers)
        stopped = await client.post(f"/_perf/windows/{started.json()['id']}/stop")
        folded = await client.get(f"/_perf/profiles/{stopped.json()['id']}.collapsed")
    frames = Counter(
        root_name(f) for line in folded.text.splitlines() for f in line.split(";")[1:3]
    )
    assert frames["tag run-7"] > 0
    assert any(name.startswith("request ") for name in frames)


async def test_the_per_request_profiler_keeps_to_its_time_budget(live_server, client_for):
    tight = PerfMiddleware(build_app(), sample_rate=1.0, profile_budget=0.001)
    server = live_server(tight)
    async with client_for(server.url) as client:
        for _ in range(40):
            await client.get("/beta")
        requests = (await client.get("/_perf/stats")).json()["profiling"]["requests"]
    assert requests["skipped_budget"] > 0
    assert requests["profiled"] < 40
    assert requests["profile_budget"] == 0.001
    assert requests["hook_share"] < 0.5


async def test_a_lifespan_profile_is_taken_by_the_sampler(live_server, tmp_path):
    mw = PerfMiddleware(
        build_app(), lifespan_profile=True, profile_dir=str(tmp_path), sampler_max_cpu=0.05
    )
    server = live_server(mw, lifespan="on")
    await load(server.url, ["/alpha"], time.monotonic() + 1)
    server.stop()
    (meta_file,) = [p for p in tmp_path.glob("*.json") if "LIFESPAN" in p.name]
    assert json.loads(meta_file.read_text())["engine"] == "sampler"
    (prof,) = [p for p in tmp_path.glob("*.prof") if "LIFESPAN" in p.name]
    names = function_names(load_stats(prof.read_bytes(), tmp_path))
    assert "alpha_work" in names
    assert "GET /alpha" in names


async def test_a_py_spy_window_through_http(live_server, client_for, tmp_path):
    if shutil.which("py-spy") is None and not Path(sys.executable).with_name("py-spy").exists():
        pytest.skip("py-spy is not installed")
    server = live_server(perf())
    async with client_for(server.url) as client:
        response = await window_under_load(client, server.url, ["/alpha"], engine="pyspy")
        profile_id = response.headers["x-perf-profile-id"]
        meta = (await client.get(f"/_perf/profiles/{profile_id}")).json()
        routes = await client.get(f"/_perf/profiles/{profile_id}.svg?route={quote(ALPHA)}")
    assert response.status_code == 200, response.text
    assert meta["engine"] == "pyspy" and meta["samples"] > 0
    assert "alpha_work" in function_names(load_stats(response.content, tmp_path))
    # py-spy reads the process from outside: it cannot say which route.
    assert routes.status_code == 400 and "sampler" in routes.json()["error"]


async def test_a_missing_py_spy_is_a_409_that_says_how_to_fix_it(live_server, client_for):
    mw = PerfMiddleware(build_app())
    # A real engine pointed at a program that does not exist.
    mw.core._engines["pyspy"] = PyspyEngine(executable="/nonexistent/py-spy")
    server = live_server(mw)
    async with client_for(server.url) as client:
        response = await client.get("/_perf/profile", params={"seconds": 1, "engine": "pyspy"})
        native_elsewhere = await client.get("/_perf/profile", params={"seconds": 1, "native": 1})
        after = await client.get("/_perf/profile", params={"seconds": 1})
    assert response.status_code == 409
    body = response.json()
    assert "pip install" in body["error"] and body["engine"] == "pyspy"
    assert native_elsewhere.status_code == 400
    assert native_elsewhere.json()["parameter"] == "native"
    assert after.status_code == 200  # nothing was left running
