"""The bench gate's figures: base against branch, the ratio, the threshold, the verdict.

Pure functions over numbers and saved JSON, so the logic that decides a
gate is tested without running a benchmark (``tests/test_bench_gate.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_SETUP = 2

# A profiled request's cost is the profiler library's (pyinstrument, yappi,
# cProfile), over 12 rounds of 30 requests: the same code measured 11.5 and
# 17.4 ms. Shown, not gated.
PROFILED = "[profiled-"
HEADER = ("figure", "base", "branch", "ratio", "threshold", "verdict")


class GateError(Exception):
    """A usage or set-up error (bad ref, missing valgrind, a run that crashed): exit 2."""


@dataclass(frozen=True)
class Figure:
    """One gated (or only shown) number, measured on both trees in the same run.

    Lower is better for every figure. ``threshold_pct`` None shows the figure
    without gating it; ``advisory`` prints a failure without failing the gate.
    """

    part: str
    name: str
    unit: str
    base: float
    branch: float
    threshold_pct: float | None = None
    advisory: bool = False

    @property
    def ratio(self) -> float:
        if self.base == 0:
            return 1.0 if self.branch == 0 else math.inf
        return self.branch / self.base

    @property
    def failed(self) -> bool:
        """``branch > base * (1 + pct/100)``, the rule of ``asgi-perf diff --fail``."""
        if self.threshold_pct is None:
            return False
        return self.branch > self.base * (1 + self.threshold_pct / 100)

    @property
    def verdict(self) -> str:
        if self.threshold_pct is None:
            return "info"
        if not self.failed:
            return "PASS"
        return "FAIL (advisory)" if self.advisory else "FAIL"


def exit_code(figures: Iterable[Figure]) -> int:
    """1 when a figure that is not advisory failed, else 0."""
    return EXIT_FAIL if any(f.failed and not f.advisory for f in figures) else EXIT_PASS


def _number(value: float, unit: str) -> str:
    if unit == "instr":
        return f"{value:,.0f}"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def rows(figures: Sequence[Figure]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for f in figures:
        ratio = "inf" if math.isinf(f.ratio) else f"{f.ratio:.3f}"
        threshold = "-" if f.threshold_pct is None else f"+{f.threshold_pct:g}%"
        out.append(
            (
                f"{f.part}: {f.name} ({f.unit})",
                _number(f.base, f.unit),
                _number(f.branch, f.unit),
                ratio,
                threshold,
                f.verdict,
            )
        )
    return out


def table(figures: Sequence[Figure]) -> str:
    """A plain-text table, aligned, the same in a terminal and in a CI log."""
    body = rows(figures)
    widths = [max(len(r[i]) for r in [HEADER, *body]) for i in range(len(HEADER))]
    lines = []
    for n, row in enumerate([HEADER, *body]):
        cells = [
            cell.ljust(widths[i]) if i in (0, 5) else cell.rjust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def callgrind_figures(
    per_request: Mapping[str, Mapping[tuple[str, str], float]], threshold_pct: float
) -> list[Figure]:
    """From ``{tree: {(variant, path): instructions per request}}``, per path:
    what asgi_perf adds to the bare app (gated), and both totals (shown).

    The added figure is gated rather than the total: the framework's own
    ~300 000 instructions would hide a 10 % slowdown of asgi_perf's ~15 000
    under a 3 % threshold, and the difference cancels what an import moves
    in both variants alike (garbage collection walks the whole heap).
    """
    base, branch = per_request["base"], per_request["branch"]
    paths = sorted({path for _, path in base} & {path for _, path in branch})
    figures = []
    for path in paths:
        added_base = base["asgi_perf", path] - base["bare", path]
        added_branch = branch["asgi_perf", path] - branch["bare", path]
        figures.append(
            Figure(
                "callgrind",
                f"GET {path} added by asgi_perf",
                "instr",
                added_base,
                added_branch,
                threshold_pct,
            )
        )
        for variant in ("asgi_perf", "bare"):
            figures.append(
                Figure(
                    "callgrind",
                    f"GET {path} {variant} total",
                    "instr",
                    base[variant, path],
                    branch[variant, path],
                )
            )
    return figures


def instructions_per_request(total_n1: int, total_n2: int, n1: int, n2: int) -> float:
    """``(I(N2) - I(N1)) / (N2 - N1)``: start-up is the same in both runs and drops out."""
    if n2 <= n1:
        raise ValueError("n2 must be larger than n1")
    return (total_n2 - total_n1) / (n2 - n1)


def benchmark_minimums(runs: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """The fastest round of each benchmark over several pytest-benchmark JSON files.

    The minimum is the round the machine disturbed least: over interleaved
    runs of both trees, a slow minute of a shared runner raises the median of
    whichever tree it hit, and rarely the minimum of both.
    """
    best: dict[str, float] = {}
    for run in runs:
        for bench in run.get("benchmarks") or ():
            name, value = bench["fullname"], float(bench["stats"]["min"])
            best[name] = min(value, best.get(name, math.inf))
    return best


def pytest_figures(
    base_runs: Sequence[Mapping[str, Any]],
    branch_runs: Sequence[Mapping[str, Any]],
    threshold_pct: float,
) -> tuple[list[Figure], list[str]]:
    """Gated ``min`` figures (ms per round) of the benchmarks in both trees, and notes
    naming those in one tree only (new or removed benchmarks are shown, not gated)."""
    base, branch = benchmark_minimums(base_runs), benchmark_minimums(branch_runs)
    figures = [
        Figure(
            "pytest",
            _short(name),
            "ms min",
            base[name] * 1e3,
            branch[name] * 1e3,
            None if PROFILED in name else threshold_pct,
        )
        for name in sorted(set(base) & set(branch))
    ]
    notes = [f"pytest: only in branch: {_short(n)}" for n in sorted(set(branch) - set(base))]
    notes += [f"pytest: only in base: {_short(n)}" for n in sorted(set(base) - set(branch))]
    return figures, notes


def _short(fullname: str) -> str:
    # The test's name with its parameters: unique across benchmarks/ files.
    return fullname.rpartition("::")[2]


def locust_figures(
    base: Mapping[str, Any], branch: Mapping[str, Any], threshold_pct: float, advisory: bool
) -> list[Figure]:
    """p99 per route in both snapshots, by the rule ``asgi-perf diff --fail p99:N%`` applies."""

    def p99s(snapshot: Mapping[str, Any]) -> dict[str, float]:
        out = {}
        for route in snapshot.get("routes") or ():
            value = (route.get("latency_ms") or {}).get("p99")
            if isinstance(value, (int, float)):
                out[str(route["route"])] = float(value)
        return out

    b, n = p99s(base), p99s(branch)
    return [
        Figure("locust", f"{route} p99", "ms", b[route], n[route], threshold_pct, advisory)
        for route in sorted(set(b) & set(n))
    ]
