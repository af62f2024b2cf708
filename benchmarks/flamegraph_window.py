"""Flame graph of a long profile window under load: how long it takes to render, how big it is.

For each engine: a uvicorn server runs the shop app (``shop.py``) under
asgi_perf, wrk drives it through the shop's paths in turn, and a profile
window (``POST /_perf/windows``) covers ``--seconds`` of that load. Then,
with the load over, ``GET /_perf/profiles/{id}.svg`` is timed: the first
request renders the flame graph (the store caches each format after that,
so a second request is timed too, to show the difference). The other
formats are fetched once for their size. Last, the window's capture, which
``profile_dir`` wrote to disk as JSON, is loaded in this process and its
SVG rendered again: the render alone, without HTTP or the server's loop.

    python benchmarks/flamegraph_window.py [--seconds 60] [--engines pyinstrument,yappi]

Targets (issue #3): the SVG of a 60 s window renders in <= 2 s and is <= 2 MB.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from asgi_perf.capture import Capture
from asgi_perf.renderers import render
from benchmarks.shop import SHOP_PATHS
from benchmarks.wrk_throughput import (
    Wrk,
    cpu_prefixes,
    describe_stack,
    ensure_wrk,
    rotation_script,
    start_server,
    start_window,
    stop,
    stop_window,
    wait_ready,
)

ENGINES = ("pyinstrument", "yappi", "cprofile")
TARGET_RENDER_S = 2.0
TARGET_BYTES = 2_000_000
PREFIX = "/_perf"
# Formats fetched for their size after the timed SVG.
OTHER_FORMATS = ("speedscope.json", "collapsed", "prof")
IN_PROCESS_RENDERS = 3


@dataclass
class Result:
    engine: str
    window: dict[str, Any] = field(default_factory=dict)
    load_rps: float = 0.0
    stop_s: float = 0.0
    svg_first_s: float = 0.0
    svg_cached_s: float = 0.0
    svg_bytes: int = 0
    svg_frames: int = 0
    stacks: int = 0
    formats: dict[str, tuple[float, int]] = field(default_factory=dict)
    in_process_s: list[float] = field(default_factory=list)


def timed_get(client: httpx.Client, url: str) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    response = client.get(url)
    elapsed = time.perf_counter() - t0
    if response.status_code != 200:
        raise RuntimeError(f"GET {url} answered {response.status_code}: {response.text[:500]}")
    return elapsed, response.content


def profile_engine(
    engine: str, seconds: int, wrk: Wrk, server_cpu: list[str], tmp: Path, client: httpx.Client
) -> Result:
    result = Result(engine)
    profile_dir = tmp / engine
    options = json.dumps(
        {
            # Written to disk as JSON too, so this script can render it in-process.
            "profile_dir": str(profile_dir),
            # A window may not outlast max_window_seconds; leave room for the start.
            "max_window_seconds": max(300, seconds + 30),
        }
    )
    server = start_server("asgi_perf", options, tmp, server_cpu, "shop")
    load: subprocess.Popen[str] | None = None
    try:
        wait_ready(server, SHOP_PATHS[0])
        # Warm-up: imports, first-request paths, the threadpool.
        wrk.run(server, 2)
        # Load starts first and ends after the window, so the whole window is under load.
        cmd = wrk.command(server, seconds + 3)
        load = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1)
        window_id = start_window(client, server, PREFIX, engine, seconds + 30)
        time.sleep(seconds)
        t0 = time.perf_counter()
        result.window = stop_window(client, server, PREFIX, window_id)
        # The stop builds the capture on the server's loop, under load.
        result.stop_s = time.perf_counter() - t0
        out, err = load.communicate(timeout=seconds + 60)
        result.load_rps = Wrk.requests_per_second(server, cmd, load.returncode, out, err)
        load = None

        svg_url = f"{server.url}{PREFIX}/profiles/{window_id}.svg"
        result.svg_first_s, svg = timed_get(client, svg_url)
        result.svg_cached_s, _ = timed_get(client, svg_url)
        result.svg_bytes = len(svg)
        result.svg_frames = svg.count(b"<g><title>")
        for fmt in OTHER_FORMATS:
            elapsed, body = timed_get(client, f"{server.url}{PREFIX}/profiles/{window_id}.{fmt}")
            result.formats[fmt] = (elapsed, len(body))
            if fmt == "collapsed":
                result.stacks = body.count(b"\n")
    finally:
        if load is not None and load.poll() is None:
            load.kill()
            load.wait(timeout=10)
        stop(server)

    found = sorted(profile_dir.glob(f"*{window_id}.json"))
    if not found:
        raise RuntimeError(f"no capture of window {window_id} in {profile_dir}")
    capture = Capture.from_json(json.loads(found[0].read_bytes()))
    for _ in range(IN_PROCESS_RENDERS):
        t0 = time.perf_counter()
        render(capture, "svg")
        result.in_process_s.append(time.perf_counter() - t0)
    return result


def report(result: Result, seconds: int) -> list[str]:
    w = result.window
    kept = "" if w.get("stored", True) else f" -- {w.get('error', 'not kept')}"
    render_ok = result.svg_first_s <= TARGET_RENDER_S
    size_ok = result.svg_bytes <= TARGET_BYTES
    lines = [
        f"{result.engine}: window {w.get('id')} of {w.get('duration_ms', 0) / 1000:.1f} s; "
        f"wrk {result.load_rps:,.0f} req/s (its whole run, 1 s before and 2 s after the "
        f"window included); capture {w.get('size_bytes', 0):,} bytes stored{kept}; "
        f"stop answered in {result.stop_s:.2f} s",
        f"  .svg first request {result.svg_first_s:.2f} s (cached {result.svg_cached_s:.3f} s), "
        f"{result.svg_bytes:,} bytes = {result.svg_bytes / 1e6:.2f} MB, "
        f"{result.svg_frames:,} frames drawn, {result.stacks:,} distinct stacks",
        "  in-process render of the same capture: "
        + ", ".join(f"{s:.2f}" for s in result.in_process_s)
        + f" s (median {statistics.median(result.in_process_s):.2f})",
    ]
    lines += [
        f"  .{fmt}: {size:,} bytes = {size / 1e6:.2f} MB (first request {elapsed:.2f} s)"
        for fmt, (elapsed, size) in result.formats.items()
    ]
    lines.append(
        f"  targets for a {seconds} s window: render <= {TARGET_RENDER_S:g} s "
        f"{'met' if render_ok else 'MISSED'}; <= {TARGET_BYTES / 1e6:g} MB "
        f"{'met' if size_ok else 'MISSED'}"
    )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="length of the window")
    parser.add_argument("--engines", default="pyinstrument,yappi", help="comma-separated")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument(
        "--no-pin", action="store_true", help="let the scheduler place the server and wrk"
    )
    args = parser.parse_args()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or not engines:
        parser.error(f"--engines: pick from {', '.join(ENGINES)}, got {args.engines!r}")
    if not 1 <= args.seconds <= 3600:
        parser.error("--seconds must be 1..3600")
    if not ensure_wrk():
        return 1

    server_cpu, wrk_cpu = cpu_prefixes(not args.no_pin)
    pinned = "server on CPU 0, wrk on CPU 1" if server_cpu else "not pinned"
    print(
        f"{args.seconds} s window per engine ({', '.join(engines)}) under "
        f"wrk -t{args.threads} -c{args.connections} over {len(SHOP_PATHS)} shop paths; "
        f"{describe_stack()}, {pinned}",
        flush=True,
    )
    with (
        tempfile.TemporaryDirectory(prefix="asgi-perf-flame-") as tmp,
        # A long window's first render may take a while; the target is 2 s.
        httpx.Client(timeout=120) as client,
    ):
        wrk = Wrk(SHOP_PATHS[0], args.connections, args.threads, wrk_cpu)
        wrk.script = rotation_script(SHOP_PATHS, Path(tmp))
        for engine in engines:
            result = profile_engine(engine, args.seconds, wrk, server_cpu, Path(tmp), client)
            print("\n".join(report(result, args.seconds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
