"""``make bench-gate``: this tree against a base ref, measured in the same run.

A git worktree of the base (``origin/main`` if the clone has it, else
``main``; ``--base``/``BASE=`` for another) is made in a temp dir, and both
trees are measured by the same interpreter, one after the other or
interleaved:

1. callgrind: CPU instructions per request that asgi_perf adds to the bare
   app, ``GET /`` (and ``/items/42``); fails past +3 %.
2. pytest-benchmark: the suites of ``benchmarks/`` in interleaved runs
   (base, branch, branch, base, base, branch); each benchmark's fastest
   round on either side; fails past +15 %.
3. Locust: the shop under its load shape with the asgi_perf plugin on each
   tree, ``asgi-perf diff base new --fail p99:25%``; advisory (printed, not
   failing) unless ``BENCH_GATE_LOCUST_STRICT=1``.

Exit 0: every gated figure within its threshold; 1: one past it; 2: a
usage or set-up error. Knobs: ``BENCH_GATE_QUICK=1`` (fewer runs),
``BENCH_GATE_ONLY=callgrind,pytest,locust``, ``BENCH_GATE_LOCUST_STRICT=1``,
``BENCH_GATE_RESULTS`` (default ``bench-gate-results/``).

    python -m benchmarks.gate [--base REF] [--results DIR] [--only PARTS] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from types import FrameType

from benchmarks._gate_report import (
    EXIT_FAIL,
    EXIT_SETUP,
    Figure,
    GateError,
    exit_code,
    table,
)
from benchmarks._gate_runs import Settings, Trees, run_callgrind, run_locust, run_pytest
from benchmarks._gate_tree import Processes, default_base, resolve_ref, worktree

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("callgrind", "pytest", "locust")
# What a run leaves in the results dir; only these are removed before a run,
# so --results pointing at a directory with other files is safe.
OUTPUTS = ("callgrind", "pytest", "locust", "table.txt", "summary.json")


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def parse_parts(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise GateError(f"BENCH_GATE_ONLY/--only: {text!r}: expected some of {','.join(PARTS)}")
    return parts


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gate", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--base", default=os.environ.get("BASE") or None, help="base git ref")
    parser.add_argument(
        "--results",
        type=Path,
        default=Path(os.environ.get("BENCH_GATE_RESULTS") or ROOT / "bench-gate-results"),
    )
    parser.add_argument("--only", default=os.environ.get("BENCH_GATE_ONLY") or ",".join(PARTS))
    parser.add_argument("--quick", action="store_true", default=_flag("BENCH_GATE_QUICK"))
    return parser


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # SystemExit unwinds through every finally: processes stopped, worktree removed.
    raise SystemExit(128 + signum)


def _prepare(results: Path) -> None:
    results.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        path = results / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def measure(
    procs: Processes, trees: Trees, parts: Sequence[str], settings: Settings, strict: bool
) -> tuple[list[Figure], int]:
    figures: list[Figure] = []
    code = 0
    if "callgrind" in parts:
        figures += run_callgrind(procs, trees, settings)
    if "pytest" in parts:
        figures += run_pytest(procs, trees, settings)
    if "locust" in parts:
        locust, diff_code = run_locust(procs, trees, settings, strict)
        figures += locust
        if diff_code and strict:
            code = EXIT_FAIL
        elif diff_code:
            print("locust: past the p99 threshold, advisory only (BENCH_GATE_LOCUST_STRICT=1)")
    return figures, max(code, exit_code(figures))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    procs = Processes()
    started = time.monotonic()
    try:
        parts = parse_parts(args.only)
        settings = Settings.quick() if args.quick else Settings.full()
        base = args.base or default_base(ROOT)
        commit = resolve_ref(ROOT, base)
        results = args.results.resolve()
        _prepare(results)
        mode = "quick" if args.quick else "full"
        print(
            f"bench gate ({mode}): base {base} ({commit[:12]}) against {ROOT}; {', '.join(parts)}"
        )
        with worktree(ROOT, commit) as (base_tree, head_tree):
            trees = Trees(base_tree, head_tree, results, base_tree.parent)
            strict = _flag("BENCH_GATE_LOCUST_STRICT")
            figures, code = measure(procs, trees, parts, settings, strict)
    except GateError as exc:
        print(f"bench gate: error: {exc}", file=sys.stderr)
        return EXIT_SETUP
    finally:
        procs.stop_all()
    text = table(figures)
    verdict = "FAILED" if code else "passed"
    footer = f"bench gate {verdict} in {time.monotonic() - started:.0f} s; results in {results}"
    print(f"\n{text}\n{footer}")
    (results / "table.txt").write_text(f"{text}\n{footer}\n")
    summary = {
        "base": base, "base_commit": commit, "mode": mode, "parts": list(parts), "exit": code,
        "figures": [{**asdict(f), "ratio": f.ratio, "verdict": f.verdict} for f in figures],
    }  # fmt: skip
    (results / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
