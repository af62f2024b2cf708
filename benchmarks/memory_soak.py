"""Does the memory timeline call a leak "growing" in time, and a flat app never? (issue #11)

One uvicorn server (``benchmarks.serve``, app ``leaky``, asgi_perf with
``memory_interval_s``) under a steady, paced load for ``--minutes``: a
client thread sends ``--rate`` requests a second to ``--path`` (``/leak``
keeps ``BENCH_LEAK_BYTES``, 10 KB: 1 MB per 100 requests; ``/`` keeps
nothing). Every point the script reads ``GET /_perf/memory`` and reports:

- the first time the trend said "growing" (and how often it said so),
- the final leak slope against the true rate (the bytes kept per second),
- the CPU of the readings and points (``cpu_share``: per second alive).

    python benchmarks/memory_soak.py --path /leak --minutes 5 --rate 20
    python benchmarks/memory_soak.py --path / --minutes 30 --rate 50   # the flat soak

Load goes to 127.0.0.1 only and the run ends by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import httpx

from benchmarks.wrk_throughput import start_server, stop, wait_ready


def drive(url: str, path: str, rate: float, until: float, sent: list[int]) -> None:
    """``rate`` requests a second, paced by the clock, until ``until`` (monotonic)."""
    start = time.monotonic()
    with httpx.Client(base_url=url, trust_env=False, timeout=30) as client:
        while (now := time.monotonic()) < until:
            due = int((now - start) * rate)
            while sent[0] < due:
                client.get(path)
                sent[0] += 1
            time.sleep(min(0.01, 1 / rate))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", default="/leak")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
    parser.add_argument("--interval", type=float, default=5.0, help="memory_interval_s")
    parser.add_argument("--leak-bytes", type=int, default=10 * 1024)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    os.environ["BENCH_LEAK_BYTES"] = str(args.leak_bytes)
    options = json.dumps({"memory_interval_s": args.interval})
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server("asgi_perf", options, Path(tmp), [], app="leaky")
        try:
            wait_ready(server, "/")
            url = f"http://127.0.0.1:{server.port}"
            started = time.monotonic()
            until = started + args.minutes * 60
            sent = [0]
            load = threading.Thread(target=drive, args=(url, args.path, args.rate, until, sent))
            load.start()
            first_growing: float | None = None
            growing = polls = 0
            report: dict[str, object] = {}
            with httpx.Client(base_url=url, trust_env=False, timeout=30) as client:
                while time.monotonic() < until:
                    time.sleep(args.interval)
                    report = client.get("/_perf/memory").json()
                    polls += 1
                    if report["trend"] == "growing":
                        growing += 1
                        if first_growing is None:
                            first_growing = time.monotonic() - started
                    at = time.monotonic() - started
                    print(
                        f"{at:7.1f} s  rss {report['now']['rss_mb']:8.2f} MB"
                        f"  slope {report['slope_mb_per_h']} MB/h  {report['trend']}"
                        f"  ({report['reason']})",
                        flush=True,
                    )
            load.join()
            elapsed = time.monotonic() - started
        finally:
            stop(server)
    kept_mb_per_h = (
        sent[0] * args.leak_bytes / 2**20 / elapsed * 3600 if args.path == "/leak" else 0.0
    )
    cpu_share = float(report.get("cpu_share") or 0.0)  # type: ignore[arg-type]
    figures = {
        "path": args.path,
        "minutes": args.minutes,
        "rate": args.rate,
        "requests": sent[0],
        "polls": polls,
        "growing_polls": growing,
        "first_growing_s": None if first_growing is None else round(first_growing, 1),
        "slope_mb_per_h": report.get("slope_mb_per_h"),
        "kept_mb_per_h": round(kept_mb_per_h, 2),
        "timeline_cpu_share": round(cpu_share, 6),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
