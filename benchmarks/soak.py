"""Does the server's memory stay flat with profiling on, for every engine? (issue #13)

One uvicorn server per scenario (``benchmarks.serve``, the trivial app,
asgi_perf with the scenario's options) under a steady, paced load of
``--rate`` requests a second for ``--minutes``; meanwhile the script reads
the server's RSS (``/proc/<pid>/statm``) every ``--every`` seconds and, after
``--warmup`` seconds, fits a line (``asgi_perf.memory.trend.fit``): the slope
in MB/min is the verdict, against ``--max-slope``.

Scenarios: sampled requests (``sample_rate``) with pyinstrument, yappi and
cProfile; windows back to back (``--window-seconds`` each) with the sampler,
pyinstrument and yappi. Where yappi leaks (yappi <= 1.7.6 on Python 3.11+),
asgi_perf caps it: its sampled requests are refused and its windows are
refused once the leak budget is spent; the script counts those refusals.

    python -m benchmarks.soak                      # 5 minutes per scenario
    python -m benchmarks.soak --minutes 2 --only yappi-windows,sampler-windows

Load goes to 127.0.0.1 only and every run ends by itself. Exit 1 when any
slope is above ``--max-slope``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from asgi_perf.memory.trend import fit
from benchmarks.wrk_throughput import Server, start_server, stop, wait_ready

# Few profiles kept, so the store is full (and flat) within the warm-up:
# the soak looks for leaks, not for a bounded cache filling up.
_BASE = {"max_profiles": 4, "keep_slowest": 2, "keep_last": 2, "profile_budget": 1.0}
SCENARIOS: dict[str, tuple[dict[str, Any], str | None]] = {
    # name: (PerfMiddleware options, engine of back-to-back windows or None)
    "pyinstrument-sampled": ({"engine": "pyinstrument", "sample_rate": 0.05}, None),
    "yappi-sampled": ({"engine": "yappi", "sample_rate": 0.05}, None),
    "cprofile-sampled": ({"engine": "cprofile", "sample_rate": 0.05}, None),
    "sampler-windows": ({}, "sampler"),
    "pyinstrument-windows": ({}, "pyinstrument"),
    "yappi-windows": ({}, "yappi"),
}
PATHS = ("/", "/items/42")


@dataclass
class Run:
    name: str
    requests: int = 0
    failed: int = 0
    windows: int = 0
    refused: int = 0
    points: list[tuple[float, float]] = field(default_factory=list)  # (minutes, RSS MB)
    stats: dict[str, Any] = field(default_factory=dict)

    def slope(self, warmup_s: float) -> float | None:
        kept = [(t, mb) for t, mb in self.points if t * 60 >= warmup_s]
        line = fit([t for t, _ in kept], [mb for _, mb in kept])
        return None if line is None else line.slope


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def drive(url: str, rate: float, until: float, run: Run) -> None:
    """``rate`` requests a second, paced by the clock, until ``until`` (monotonic)."""
    start = time.monotonic()
    with httpx.Client(base_url=url, trust_env=False, timeout=30) as client:
        while (now := time.monotonic()) < until:
            due = int((now - start) * rate)
            while run.requests < due:
                response = client.get(PATHS[run.requests % len(PATHS)])
                run.requests += 1
                run.failed += response.status_code != 200
            time.sleep(min(0.01, 1 / rate))


def windows(url: str, engine: str, seconds: float, until: float, run: Run) -> None:
    """Windows of ``engine`` back to back until ``until``; refusals are counted."""
    with httpx.Client(base_url=url, trust_env=False, timeout=60) as client:
        while time.monotonic() + seconds < until:
            started = client.post(
                "/_perf/windows", params={"engine": engine, "seconds": f"{seconds:g}"}
            )
            if started.status_code != 201:
                run.refused += 1
                time.sleep(seconds)
                continue
            time.sleep(seconds)
            stopped = client.post(f"/_perf/windows/{started.json()['id']}/stop")
            run.windows += stopped.status_code == 200


def soak(name: str, args: argparse.Namespace, logdir: Path) -> Run:
    options, window_engine = SCENARIOS[name]
    run = Run(name)
    server: Server = start_server("asgi_perf", json.dumps({**_BASE, **options}), logdir, [])
    try:
        wait_ready(server, "/")
        started = time.monotonic()
        until = started + args.minutes * 60
        threads = [threading.Thread(target=drive, args=(server.url, args.rate, until, run))]
        if window_engine is not None:
            threads.append(
                threading.Thread(
                    target=windows,
                    args=(server.url, window_engine, args.window_seconds, until, run),
                )
            )
        for thread in threads:
            thread.start()
        while (now := time.monotonic()) < until:
            run.points.append(((now - started) / 60, rss_mb(server.proc.pid)))
            time.sleep(args.every)
        for thread in threads:
            thread.join()
        with httpx.Client(base_url=server.url, trust_env=False, timeout=30) as client:
            stats = client.get("/_perf/stats").json()
        run.stats = {
            "internal_errors": stats["internal_errors"],
            "requests_profiled": (stats["profiling"]["requests"] or {}).get("profiled"),
            "requests_refused": (stats["profiling"]["requests"] or {}).get("refused"),
            "windows_completed": stats["profiling"]["windows"]["completed"],
        }
    finally:
        stop(server)
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="per scenario (fractions ok)")
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between RSS readings")
    parser.add_argument("--warmup", type=float, help="seconds left out (default: a quarter)")
    parser.add_argument("--window-seconds", type=float, default=10.0)
    parser.add_argument("--max-slope", type=float, default=0.1, help="MB/min after warm-up")
    parser.add_argument("--only", help="comma-separated scenarios: " + ", ".join(SCENARIOS))
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(SCENARIOS)
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    warmup_s = args.warmup if args.warmup is not None else args.minutes * 60 / 4

    figures: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            print(f"{name}: {args.minutes:g} min at {args.rate:g} req/s ...", flush=True)
            run = soak(name, args, Path(tmp))
            slope = run.slope(warmup_s)
            verdict = "ok" if slope is not None and slope <= args.max_slope else "FAIL"
            row = {
                "scenario": name,
                "slope_mb_per_min": None if slope is None else round(slope, 4),
                "verdict": verdict,
                "rss_first_mb": round(run.points[0][1], 1),
                "rss_last_mb": round(run.points[-1][1], 1),
                "requests": run.requests,
                "failed_requests": run.failed,
                "windows": run.windows,
                "windows_refused": run.refused,
                **run.stats,
            }
            figures.append(row)
            print(
                f"  slope {row['slope_mb_per_min']} MB/min after {warmup_s:g} s  {verdict}"
                f"  (RSS {row['rss_first_mb']} -> {row['rss_last_mb']} MB,"
                f" {run.requests} requests, {run.windows} windows, {run.refused} refused)",
                flush=True,
            )
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if all(f["verdict"] == "ok" for f in figures) else 1


if __name__ == "__main__":
    raise SystemExit(main())
