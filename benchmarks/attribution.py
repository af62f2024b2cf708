"""Does the sampler give each route its own time? Two routes burning 3 : 1, under load.

The app (``attribution_app``, ``BENCH_APP=attribution``): ``GET /three``
spins three stretches of ``ms`` milliseconds (``burn_three``), each followed
by an ``await``; ``GET /one`` spins one (``burn_one``). wrk sends both in
turn (equal counts) over ``--connections`` connections, so both are in
flight together on the one event loop. ``GET /burned`` tells how long each
route really spun (perf_counter around every stretch): the truth the
sampler's shares are checked against, besides the nominal 75 / 25.

For each stretch length, ``--windows`` sampler windows of ``--seconds``
each are taken under that load (``POST /_perf/windows?engine=sampler``,
started 1.5 s into a wrk run, stopped ``--seconds`` later); then

- ``GET /_perf/profiles/{id}/routes``: each route's share of the two
  routes' sampled time (target: within 5 points of 75 / 25);
- ``GET /_perf/profiles/{id}.collapsed``: every line starts with the route
  label frame (``GET /three (<route>)``); no ``burn_one`` frame may appear
  under ``GET /three`` nor ``burn_three`` under ``GET /one``. Also the share
  of each route's samples that landed in its own burn function, and the
  3 : 1 split counted on the burn frames alone.

    python benchmarks/attribution.py [--stretch-ms 15,1] [--windows 3] [--seconds 10]
        [--connections 8] [--options '{}'] [--json results.json]

The sampler reads stacks when it gets the GIL, up to a switch interval (it
sets 1 ms while sampling) after its tick was due; stretches not much longer
than that are partly sampled in whatever runs after them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from benchmarks.wrk_throughput import (
    Wrk,
    cpu_prefixes,
    describe_stack,
    ensure_wrk,
    start_server,
    start_window,
    stop,
    stop_window,
    wait_ready,
    wrk_script,
)

_perf_counter = time.perf_counter
# Wall-clock seconds spent spinning, and requests served, per route.
BURNED = {"three": 0.0, "one": 0.0}
SERVED = {"three": 0, "one": 0}
TARGET_POINTS = 5.0
ROUTES = {"three": "burn_three", "one": "burn_one"}


def _spin(seconds: float) -> int:
    end = _perf_counter() + seconds
    n = 0
    while _perf_counter() < end:
        n += 1
    return n


def burn_three(seconds: float) -> None:
    t0 = _perf_counter()
    _spin(seconds)
    BURNED["three"] += _perf_counter() - t0


def burn_one(seconds: float) -> None:
    t0 = _perf_counter()
    _spin(seconds)
    BURNED["one"] += _perf_counter() - t0


def attribution_app() -> FastAPI:
    """``GET /three?ms=``, ``GET /one?ms=`` (3 : 1 stretches of CPU) and ``GET /burned``.

    ``BENCH_SWITCH_INTERVAL_MS`` sets the GIL switch interval first (a check
    of how the sampler's timing depends on it; the sampler keeps the shorter).
    """
    switch_ms = os.environ.get("BENCH_SWITCH_INTERVAL_MS")
    if switch_ms:
        sys.setswitchinterval(float(switch_ms) / 1000)
    app = FastAPI()

    @app.get("/three")
    async def three(ms: float = 15.0) -> dict[str, int]:
        for _ in range(3):
            burn_three(ms / 1000)
            await asyncio.sleep(0)
        SERVED["three"] += 1
        return {"stretches": 3}

    @app.get("/one")
    async def one(ms: float = 15.0) -> dict[str, int]:
        burn_one(ms / 1000)
        await asyncio.sleep(0)
        SERVED["one"] += 1
        return {"stretches": 1}

    @app.get("/burned")
    async def burned() -> dict[str, dict[str, float]]:
        return {"seconds": dict(BURNED), "served": dict(SERVED)}

    return app


# -- the benchmark


def _route_label(frame: str) -> str:
    """``GET /three`` from the collapsed label frame ``GET /three (<route>)``."""
    return frame.removesuffix(" (<route>)")


def check_collapsed(text: str) -> dict[str, Any]:
    """Per route label: µs sampled, µs in each burn function; lines not starting with a label."""
    routes: dict[str, dict[str, float]] = {}
    leaves: dict[str, dict[str, int]] = {}
    unlabelled = 0
    for line in text.splitlines():
        stack, _, weight = line.rpartition(" ")
        frames = stack.split(";")
        if not frames[0].endswith(" (<route>)"):
            unlabelled += 1
            continue
        row = routes.setdefault(
            _route_label(frames[0]), {"us": 0.0, **{fn: 0.0 for fn in ROUTES.values()}}
        )
        row["us"] += int(weight)
        inside = False
        for fn in ROUTES.values():
            if any(f.startswith(fn + " (") for f in frames[1:]):
                row[fn] += int(weight)
                inside = True
        if not inside:
            # Where a route's samples land when not in a burn function: the leaf.
            elsewhere = leaves.setdefault(_route_label(frames[0]), {})
            leaf = frames[-1].split(" (")[0]
            elsewhere[leaf] = elsewhere.get(leaf, 0) + int(weight)
    return {"routes": routes, "unlabelled_lines": unlabelled, "elsewhere": leaves}


def _find(rows: dict[str, Any], name: str) -> str | None:
    found = [route for route in rows if route.endswith(f" /{name}")]
    return found[0] if found else None


def analyse(
    routes_answer: dict[str, Any], collapsed: dict[str, Any], truth: dict[str, float]
) -> dict[str, Any]:
    rows = {r["route"]: r for r in routes_answer["routes"]}
    keys = {name: _find(rows, name) for name in ROUTES}
    if None in keys.values():
        raise RuntimeError(f"the window has no samples of both routes: {sorted(rows)}")
    seconds = {name: rows[key]["seconds"] for name, key in keys.items() if key}
    both = sum(seconds.values())
    by_label = collapsed["routes"]
    cross_us = 0.0
    own_share = {}
    burn_us = {}
    for name, fn in ROUTES.items():
        row = by_label.get(keys[name] or "", {})
        other_fn = ROUTES["one" if name == "three" else "three"]
        cross_us += row.get(other_fn, 0.0)
        own_share[name] = row.get(fn, 0.0) / row["us"] if row.get("us") else 0.0
        burn_us[name] = row.get(fn, 0.0)
    burn_total = sum(burn_us.values()) or 1.0
    true_total = sum(truth.values()) or 1.0
    return {
        "share_three": seconds["three"] / both,
        "share_one": seconds["one"] / both,
        "truth_three": truth["three"] / true_total,
        "burn_frames_three": burn_us["three"] / burn_total,
        "cross_us": cross_us,
        "own_burn_share": own_share,
        "samples": {name: rows[key]["samples"] for name, key in keys.items() if key},
        "unlabelled_lines": collapsed["unlabelled_lines"],
        "elsewhere_top": {
            name: _top(collapsed["elsewhere"].get(keys[name] or "", {}), by_label, keys[name])
            for name in ROUTES
        },
    }


def _top(leaves: dict[str, int], by_label: dict[str, Any], key: str | None, n: int = 3) -> str:
    """The ``n`` leaf functions most of a route's samples outside its burn landed in."""
    total = by_label.get(key or "", {}).get("us") or 1
    ranked = sorted(leaves.items(), key=lambda kv: kv[1], reverse=True)[:n]
    return ", ".join(f"{leaf} {us / total * 100:.0f} %" for leaf, us in ranked)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stretch-ms", default="15,1", help="comma-separated stretch lengths")
    parser.add_argument("--windows", type=int, default=3, help="windows per stretch length")
    parser.add_argument("--seconds", type=int, default=10, help="length of each window")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--options", default="{}", help="PerfMiddleware options, JSON")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument(
        "--switch-interval-ms",
        type=float,
        help="set the server's GIL switch interval (a check, not a default)",
    )
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    stretches = [float(x) for x in args.stretch_ms.split(",") if x.strip()]
    if not ensure_wrk():
        return 1
    prefix = str(json.loads(args.options).get("prefix", "/_perf"))
    if args.switch_interval_ms:
        # start_server passes this process's environment on.
        os.environ["BENCH_SWITCH_INTERVAL_MS"] = f"{args.switch_interval_ms:g}"
    server_cpu, wrk_cpu = cpu_prefixes(not args.no_pin)
    print(
        f"sampler windows of {args.seconds} s, {args.windows} per stretch length, "
        f"wrk -t1 -c{args.connections} over /three and /one in turn; {describe_stack()}; "
        f"options {args.options}; "
        f"switch interval {args.switch_interval_ms or 'default'} ms; "
        f"{'server on CPU 0, wrk on CPU 1' if server_cpu else 'not pinned'}; "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    results: dict[str, list[dict[str, Any]]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="asgi-perf-attribution-") as tmp,
        httpx.Client(timeout=120) as client,
    ):
        server = start_server(
            "asgi_perf", args.options, Path(tmp), server_cpu, "attribution", name="attribution"
        )
        try:
            wait_ready(server, "/one?ms=1")

            def burned() -> dict[str, float]:
                answer: dict[str, float] = client.get(f"{server.url}/burned").json()["seconds"]
                return answer

            for ms in stretches:
                paths = (f"/three?ms={ms:g}", f"/one?ms={ms:g}")
                script = wrk_script(Path(tmp), paths=paths, name=f"attribution-{ms:g}")
                wrk = Wrk(paths[0], args.connections, 1, wrk_cpu, script)
                wrk.run(server, 2)  # warm-up
                runs = results[f"{ms:g}"] = []
                for _ in range(args.windows):
                    cmd = wrk.command(server, args.seconds + 3)
                    load = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
                    try:
                        time.sleep(1.5)
                        before = burned()
                        wid = start_window(client, server, prefix, "sampler", args.seconds + 5)
                        time.sleep(args.seconds)
                        answer = stop_window(client, server, prefix, wid)
                        after = burned()
                        out, _ = load.communicate(timeout=60)
                    finally:
                        if load.poll() is None:
                            load.kill()
                            load.wait()
                    wrk.requests_per_second(server, cmd, load.returncode, out, "")
                    table = client.get(f"{server.url}{prefix}/profiles/{wid}/routes").json()
                    collapsed = client.get(f"{server.url}{prefix}/profiles/{wid}.collapsed").text
                    truth = {k: after[k] - before[k] for k in ROUTES}
                    run = analyse(table, check_collapsed(collapsed), truth)
                    run["window"] = {
                        k: answer.get(k)
                        for k in ("duration_ms", "samples", "interval_s", "sampler_cpu_share")
                    }
                    runs.append(run)
                    print(
                        f"{ms:g} ms stretches: /three {run['share_three'] * 100:.1f} % "
                        f"/one {run['share_one'] * 100:.1f} % of the two routes' samples "
                        f"(truth {run['truth_three'] * 100:.1f} / "
                        f"{(1 - run['truth_three']) * 100:.1f}; samples {run['samples']}); "
                        f"burn frames alone {run['burn_frames_three'] * 100:.1f} %; "
                        f"in own burn fn: three {run['own_burn_share']['three'] * 100:.0f} %, "
                        f"one {run['own_burn_share']['one'] * 100:.0f} %; "
                        f"cross-route burn samples {run['cross_us'] / 1e6:.3f} s; "
                        f"window {run['window']}\n"
                        f"  outside their burn function: three in "
                        f"{run['elsewhere_top']['three']}; one in {run['elsewhere_top']['one']}",
                        flush=True,
                    )
        finally:
            stop(server)
    print()
    summary = {}
    for label, runs in results.items():
        shares = [r["share_three"] * 100 for r in runs]
        med = statistics.median(shares)
        error = med - 75.0
        cross = sum(r["cross_us"] for r in runs)
        summary[label] = {"median_share_three": med, "error_points": error, "cross_us": cross}
        verdict = "met" if abs(error) <= TARGET_POINTS else "MISSED"
        each = ", ".join(f"{x:.1f}" for x in shares)
        truth_pct = statistics.median(r["truth_three"] for r in runs) * 100
        burn = statistics.median(r["burn_frames_three"] for r in runs) * 100
        print(
            f"{label} ms stretches: /three median {med:.1f} % (runs {each}), "
            f"{error:+.1f} points from 75 (target +-{TARGET_POINTS:g}): {verdict}; "
            f"truth {truth_pct:.1f} %; burn frames alone {burn:.1f} %; "
            f"cross-route burn samples: {cross / 1e6:.3f} s ({'none' if not cross else 'FOUND'})"
        )
    if args.json:
        args.json.write_text(json.dumps({"runs": results, "summary": summary}, indent=1))
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
