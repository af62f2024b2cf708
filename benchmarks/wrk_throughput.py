"""Throughput under uvicorn + wrk: each variant against the bare app, same run.

Every variant gets its own uvicorn server on a free loopback port for the
whole run. Each round runs wrk once against each server, in alternating
order (bare first, then last), so drift of a shared machine (other jobs,
thermal limits) hits both sides alike; the result is the median over rounds
of each variant's req/s divided by bare's req/s in the same round.

    python benchmarks/wrk_throughput.py [--rounds 5] [--duration 5] [--connections 32]
        [--variants bare,asgi_perf] [--path /] [--options '{"sample_rate": 0.01}']

``--options`` (or ``BENCH_OPTIONS``) is a JSON object of PerfMiddleware
options for the asgi_perf variant.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
TARGET_LOSS_PCT = 3.0
_RPS_RE = re.compile(r"Requests/sec:\s+([\d.]+)")
_NON_2XX_RE = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS_RE = re.compile(r"Socket errors:.*")


@dataclass
class Server:
    variant: str
    port: int
    proc: subprocess.Popen[bytes]
    log: IO[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _apt_get(*args: str) -> bool:
    try:
        done = subprocess.run(["apt-get", *args], capture_output=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"  apt-get {' '.join(args)}: {exc}", file=sys.stderr)
        return False
    return done.returncode == 0


def ensure_wrk() -> bool:
    """wrk is a Debian package; install it when missing rather than fail."""
    if shutil.which("wrk"):
        return True
    print("wrk not found on PATH; trying: apt-get install -y wrk", flush=True)
    # A stale or empty package list is the usual reason install fails.
    if not _apt_get("install", "-y", "-q", "wrk") and _apt_get("update", "-q"):
        _apt_get("install", "-y", "-q", "wrk")
    if shutil.which("wrk"):
        return True
    print("could not install wrk; install it yourself: apt-get install -y wrk", file=sys.stderr)
    return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_prefixes(pin: bool) -> tuple[list[str], list[str]]:
    """``taskset`` prefixes that put every server on CPU 0 and wrk on CPU 1.

    Unpinned, the scheduler keeps each server on the core it started on; a
    server that shares its core with some other busy process then loses for
    the whole run, a bias that interleaving cannot cancel. Pinned, all
    servers share the same core and the same neighbours.
    """
    if not pin or (os.cpu_count() or 1) < 2 or shutil.which("taskset") is None:
        return [], []
    return ["taskset", "-c", "0"], ["taskset", "-c", "1"]


def start_server(variant: str, options: str, logdir: Path, prefix: list[str]) -> Server:
    port = free_port()
    env = dict(os.environ, BENCH_VARIANT=variant, BENCH_OPTIONS=options)
    log = (logdir / f"uvicorn-{variant}.log").open("w+b")
    cmd = [
        *prefix,
        sys.executable,
        "-m",
        "uvicorn",
        "benchmarks.serve:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    # The server's output goes to a file: a pipe nobody reads would block it.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return Server(variant, port, proc, log)


def wait_ready(server: Server, path: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            server.log.seek(0)
            output = server.log.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"uvicorn ({server.variant}) exited:\n{output}")
        try:
            with urllib.request.urlopen(server.url + path, timeout=2) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            # Up but broken: measuring error pages would be meaningless.
            raise RuntimeError(f"uvicorn ({server.variant}) answered {exc.code}") from exc
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"uvicorn ({server.variant}) not ready after {timeout_s:g} s")


def stop(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(timeout=10)
    server.log.close()


@dataclass
class Wrk:
    path: str
    connections: int
    threads: int
    prefix: list[str]

    def run(self, server: Server, duration_s: int) -> float:
        """Requests per second that wrk measured; warns on errors it saw."""
        cmd = [
            *self.prefix,
            "wrk",
            f"-t{self.threads}",
            f"-c{self.connections}",
            f"-d{duration_s}s",
            "--timeout",
            "5s",
            server.url + self.path,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60)
        match = _RPS_RE.search(done.stdout)
        if done.returncode != 0 or match is None:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
        for pattern in (_NON_2XX_RE, _SOCKET_ERRORS_RE):
            problem = pattern.search(done.stdout)
            if problem:
                print(f"  warning ({server.variant}): {problem.group(0)}", file=sys.stderr)
        return float(match.group(1))


def perf_requests(server: Server) -> int | None:
    """Requests asgi_perf counted, proving the middleware was in the path."""
    try:
        with urllib.request.urlopen(server.url + "/_perf/stats", timeout=10) as response:
            requests: int = json.load(response)["requests"]
            return requests
    except (OSError, ValueError, KeyError):
        return None


def describe_stack() -> str:
    # uvicorn picks uvloop and httptools when installed; the denominator of
    # every ratio depends on which, so say it.
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return f"uvicorn ({loop}, {http}), 1 worker"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    # wrk takes whole seconds.
    parser.add_argument("--duration", type=int, default=5, help="seconds of wrk per run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of wrk before round 1")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--variants", default="bare,asgi_perf", help="comma-separated, bare first")
    parser.add_argument("--path", default="/")
    parser.add_argument(
        "--options",
        default=os.environ.get("BENCH_OPTIONS", ""),
        help="PerfMiddleware options for the asgi_perf variant, JSON",
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="let the scheduler place servers and wrk"
    )
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if len(variants) < 2 or args.rounds < 1 or args.duration < 1:
        parser.error("need a baseline and a variant, one round and a duration of 1 s or more")
    try:
        options_ok = not args.options or isinstance(json.loads(args.options), dict)
    except ValueError:
        options_ok = False
    if not options_ok:
        parser.error(f"--options must be a JSON object, got {args.options!r}")
    if not ensure_wrk():
        return 1

    base = variants[0]
    server_cpu, wrk_cpu = cpu_prefixes(not args.no_pin)
    wrk = Wrk(args.path, args.connections, args.threads, wrk_cpu)
    pinned = "servers on CPU 0, wrk on CPU 1" if server_cpu else "not pinned"
    print(
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s GET {args.path}, "
        f"{args.rounds} rounds, {describe_stack()}, options {args.options or '{}'}, "
        f"baseline {base}, {pinned}",
        flush=True,
    )
    servers: list[Server] = []
    results: dict[str, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="asgi-perf-wrk-") as tmp:
        try:
            for variant in variants:
                servers.append(start_server(variant, args.options, Path(tmp), server_cpu))
            for server in servers:
                wait_ready(server, args.path)
                if args.warmup > 0:
                    wrk.run(server, args.warmup)
            for round_ in range(args.rounds):
                order = servers if round_ % 2 == 0 else servers[::-1]
                for server in order:
                    results[server.variant].append(wrk.run(server, args.duration))
                print(
                    f"round {round_ + 1}  " + "  ".join(_cell(results, v, base) for v in variants)
                )
            counted = {s.variant: perf_requests(s) for s in servers if s.variant == "asgi_perf"}
        finally:
            for server in servers:
                stop(server)

    print(
        f"{'variant':<11} {'median req/s':>12} {'median ratio':>12} {'loss %':>7}  "
        "interval of the median ratio"
    )
    for variant in variants:
        ratios = [v / b for v, b in zip(results[variant], results[base], strict=True)]
        ratio = statistics.median(ratios)
        low, high, coverage = median_interval(ratios)
        loss = "-" if variant == base else f"{(1 - ratio) * 100:.1f}"
        print(
            f"{variant:<11} {statistics.median(results[variant]):>12,.0f} {ratio:>12.3f} "
            f"{loss:>7}  {low:.3f}..{high:.3f} ({coverage:.0%})"
        )
        if variant == "asgi_perf":
            limit = 1 - TARGET_LOSS_PCT / 100
            verdict = "met" if ratio >= limit else "MISSED"
            if low < limit <= high:
                verdict += f", but the interval spans {limit:.2f}: not resolved by this run"
            print(f"asgi_perf throughput loss target <= {TARGET_LOSS_PCT:g} %: {verdict}")
    for variant, count in counted.items():
        print(f"{variant} counted {count} requests in /_perf/stats")
    return 0


def median_interval(values: list[float]) -> tuple[float, float, float]:
    """A distribution-free interval around the median: (low, high, coverage).

    The k-th smallest and k-th largest of n values bracket the true median
    with a probability that depends on n alone (binomial, p = 1/2); k is
    the largest that keeps it at 95 %, or 1 (min..max) when n is too small.
    """
    xs = sorted(values)
    n = len(xs)

    def at_most(j: int) -> float:
        return sum(math.comb(n, i) for i in range(j + 1)) / 2**n

    k = 1
    while k + 1 <= (n + 1) // 2 and 1 - 2 * at_most(k) >= 0.95:
        k += 1
    return xs[k - 1], xs[n - k], 1 - 2 * at_most(k - 1)


def _cell(results: dict[str, list[float]], variant: str, base: str) -> str:
    rps = results[variant][-1]
    ratio = rps / results[base][-1]
    return f"{variant} {rps:>9,.0f} req/s ({ratio:.3f})"


if __name__ == "__main__":
    sys.exit(main())
