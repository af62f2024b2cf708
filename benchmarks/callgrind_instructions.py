"""CPU instructions per request of each variant, counted by callgrind.

Wall-clock time on a shared machine wanders by tens of percent; the number
of instructions executed does not (two identical runs differ by a few
hundred out of 10**9). Each variant is run twice under callgrind, serving N1
and then N2 requests in-process (``benchmarks/_drive.py``); start-up, imports
and app construction are the same in both runs, so

    instructions per request = (I(N2) - I(N1)) / (N2 - N1)

is the steady-state cost of one request, periodic work (RSS sampling, garbage
collection, histogram folding) included at its average rate. Instructions are
not time (cache misses and system calls weigh more), but they are the
repeatable half of the picture.

    python benchmarks/callgrind_instructions.py [--path /items/42] [--options '{...}']
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("bare", "asgi_perf", "clock", "prometheus")
TARGET_ADDED = 20_000
# The per-request path only. The loop monitor is a thread that wakes 50
# times a second whatever the load: under callgrind, which runs the process
# ~50x slower, it wakes ~50x more often per request and would be counted as
# ~2 800 instructions a request it does not cost at full speed. Its cost is
# measured in real time instead (benchmarks/README.md, issue #9).
HOT_PATH_OPTIONS = '{"loop_monitor": false}'
_TOTAL_RE = re.compile(r"^(?:summary|totals):\s+(\d+)", re.MULTILINE)
_COLLECTED_RE = re.compile(r"Collected\s*:\s*(\d+)")


def count_instructions(variant: str, n: int, path: str, options: str, workdir: Path) -> int:
    """Instructions executed by one process that builds ``variant`` and serves ``n`` requests."""
    out = workdir / f"callgrind.{variant}.{n}.out"
    env = dict(os.environ, PYTHONHASHSEED="0", BENCH_OPTIONS=options)
    # Bytecode files written by the first run would make the second one
    # cheaper to start; the difference would leak into the per-request count.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    cmd = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        "-m",
        "benchmarks._drive",
        variant,
        str(n),
        path,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    match = _TOTAL_RE.search(out.read_text()) if out.exists() else None
    if match is None:
        match = _COLLECTED_RE.search(proc.stderr)
    if match is None:
        raise RuntimeError(f"no instruction total in {out} nor in valgrind's output")
    return int(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--path", default="/", help="request path (default /)")
    parser.add_argument("--n1", type=int, default=200, help="requests in the short run")
    parser.add_argument("--n2", type=int, default=1200, help="requests in the long run")
    parser.add_argument(
        "--options",
        default=os.environ.get("BENCH_OPTIONS", HOT_PATH_OPTIONS),
        help=f"PerfMiddleware options, JSON (default {HOT_PATH_OPTIONS})",
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel valgrinds")
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.n2 <= args.n1:
        parser.error("--n2 must be larger than --n1")
    try:
        options_ok = not args.options or isinstance(json.loads(args.options), dict)
    except ValueError:
        options_ok = False
    if not options_ok:  # fail here, not in eight valgrind runs
        parser.error(f"--options must be a JSON object, got {args.options!r}")
    if shutil.which("valgrind") is None:
        print("valgrind not found: apt-get install -y valgrind", file=sys.stderr)
        return 1

    print(
        f"callgrind: GET {args.path}, I({args.n2}) - I({args.n1}) requests, "
        f"options {args.options or '{}'}, {args.jobs} parallel runs (takes a few minutes)"
    )
    started = time.monotonic()
    runs = [(v, n) for v in variants for n in (args.n1, args.n2)]
    with (
        tempfile.TemporaryDirectory(prefix="asgi-perf-callgrind-") as tmp,
        ThreadPoolExecutor(args.jobs) as pool,
    ):
        futures = {
            run: pool.submit(count_instructions, *run, args.path, args.options, Path(tmp))
            for run in runs
        }
        try:
            totals = {run: future.result() for run, future in futures.items()}
        except RuntimeError as exc:
            # Minutes of valgrind runs still queued would measure nothing useful.
            for future in futures.values():
                future.cancel()
            print(exc, file=sys.stderr)
            return 1

    per_request = {
        v: (totals[v, args.n2] - totals[v, args.n1]) / (args.n2 - args.n1) for v in variants
    }
    base = per_request.get("bare")
    print(f"{'variant':<11} {'instr/request':>14} {'added vs bare':>14}")
    for variant in variants:
        added = "-" if base is None or variant == "bare" else f"{per_request[variant] - base:+,.0f}"
        print(f"{variant:<11} {per_request[variant]:>14,.0f} {added:>14}")
    if base is not None and "asgi_perf" in per_request:
        added_perf = per_request["asgi_perf"] - base
        verdict = "met" if added_perf <= TARGET_ADDED else "MISSED"
        print(
            f"asgi_perf adds {added_perf:,.0f} instructions/request "
            f"(target <= {TARGET_ADDED:,}: {verdict})"
        )
        if "prometheus" in per_request and per_request["prometheus"] > base:
            share = added_perf / (per_request["prometheus"] - base)
            print(f"asgi_perf/prometheus added instructions: {share:.2f}")
    print(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
