"""What sharing numbers between workers costs, and how long a window of all of them takes.

Serves an app with ``--routes`` routes under ``uvicorn --workers 3`` with
asgi_perf's defaults (the workers find each other on their own), drives
``wrk`` against every route for ``--duration`` seconds, then reads
``/_perf/stats``: its ``shared.cpu_share`` is the CPU the answering worker's
writer thread used (writing its state every second, polling for requests
from the others), as a share of one core since it started. Then it times
``GET /_perf/profile?seconds=N`` across the three workers.

    python -m benchmarks.workers_flush [--routes 20] [--duration 20] [--window 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

from benchmarks.wrk_throughput import ensure_wrk, free_port

TARGET_CPU_SHARE = 0.01
WORKERS = 3


def app_source(routes: int) -> str:
    return textwrap.dedent(
        f"""
        from fastapi import FastAPI
        from asgi_perf import PerfMiddleware

        app = FastAPI()
        for i in range({routes}):
            async def endpoint(i: int = i) -> dict[str, int]:
                return {{"route": i}}
            app.add_api_route(f"/r{{i}}", endpoint, methods=["GET"])
        app.add_middleware(PerfMiddleware)
        """
    )


def lua_rotation(routes: int) -> str:
    paths = ", ".join(f'"/r{i}"' for i in range(routes))
    return textwrap.dedent(
        f"""
        local paths = {{{paths}}}
        local n = 0
        request = function()
          n = n + 1
          return wrk.format("GET", paths[(n % #paths) + 1])
        end
        """
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routes", type=int, default=20)
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--window", type=int, default=2)
    args = parser.parse_args()
    if not ensure_wrk():
        print("wrk is needed: apt-get install wrk", file=sys.stderr)
        return 2
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "flush_app.py").write_text(app_source(args.routes))
        (work / "rotate.lua").write_text(lua_rotation(args.routes))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{work}")
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "flush_app:app", "--workers", str(WORKERS),
             "--port", str(port), "--log-level", "warning", "--no-access-log"],
            cwd=work, env=env,
        )  # fmt: skip
        try:
            with httpx.Client(base_url=url, trust_env=False, timeout=60) as client:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    try:
                        if len(client.get("/_perf/stats").json()["workers"]) >= WORKERS:
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.2)
                subprocess.run(
                    ["wrk", "-t2", "-c32", f"-d{args.duration}s", "-s", str(work / "rotate.lua"),
                     url],
                    check=True, capture_output=True,
                )  # fmt: skip
                shares = []
                for _ in range(9):  # reaches every worker, whichever answers
                    snap = client.get("/_perf/stats").json()
                    shares.append((snap["pid"], snap["shared"]["cpu_share"], snap["requests"]))
                started = time.monotonic()
                window = client.get("/_perf/profile", params={"seconds": args.window})
                took = time.monotonic() - started
        finally:
            server.terminate()
            server.wait(20)
    per_worker = {pid: share for pid, share, _ in shares}
    requests = shares[-1][2]
    print(f"{WORKERS} workers, {args.routes} routes, {requests} requests over {args.duration} s")
    for pid, share in sorted(per_worker.items()):
        print(f"  worker {pid}: writer thread {share * 100:.3f} % of a core")
    worst = max(per_worker.values())
    verdict = "ok" if worst <= TARGET_CPU_SHARE else "MISSED"
    print(f"sharing: worst {worst * 100:.3f} % of a core (target <= 1 %: {verdict})")
    ok = window.status_code == 200 and took <= args.window + 2
    print(
        f"window of {args.window} s over {WORKERS} workers: answered in {took:.2f} s, "
        f"{window.status_code} (target <= {args.window + 2} s: {'ok' if ok else 'MISSED'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
