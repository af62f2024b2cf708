"""The three parts of the bench gate, each measuring the base tree and the branch's.

Each tree runs its own ``benchmarks/`` and ``asgi_perf`` (PYTHONPATH) in the
gate's own interpreter, so the venv is the same and only the code differs.
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._gate_report import (
    Figure,
    GateError,
    callgrind_figures,
    instructions_per_request,
    locust_figures,
    pytest_figures,
)
from benchmarks._gate_tree import Processes, tree_env
from benchmarks.callgrind_instructions import HOT_PATH_OPTIONS

# One file for both trees, so that both processes get the same argv.
DRIVE_SCRIPT = Path(__file__).resolve().parent / "_gate_drive.py"
_TOTAL_RE = re.compile(r"^(?:summary|totals):\s+(\d+)", re.MULTILINE)
CALLGRIND_VARIANTS = ("bare", "asgi_perf")
# The single-round summaries time a whole interleaved run: one number, no minimum.
PYTEST_SELECTION = ("-k", "not summary_interleaved")
SHOP_STARTUP_TIMEOUT_S = 120.0
LOCUST_SLACK_S = 60.0


# Two processes of the same code still differ by a few hundred thousand
# instructions that do not scale with the requests (seen: 340 000); over
# 500 requests that was 680 a request, 3 % of what asgi_perf adds. Over
# 2 000 and 4 000 it is well under 1 %.
@dataclass(frozen=True)
class Settings:
    """What a run measures; ``quick()`` and ``full()`` are the two presets."""

    callgrind_paths: tuple[str, ...]
    n1: int
    n2: int
    pytest_order: tuple[str, ...]
    shop_scale: float
    callgrind_pct: float = 3.0
    pytest_pct: float = 15.0
    locust_pct: float = 25.0

    @classmethod
    def full(cls) -> Settings:
        # ABBAAB: each tree runs first, last and in the middle once.
        order = ("base", "branch", "branch", "base", "base", "branch")
        return cls(("/", "/items/42"), 200, 4200, order, 1.0)

    @classmethod
    def quick(cls) -> Settings:
        # ABBA: one run is too few; a busy minute of the machine then
        # lands on one tree's every round (seen: bare 14.4 vs 17.5 ms).
        return cls(("/",), 100, 2100, ("base", "branch", "branch", "base"), 1 / 3)


@dataclass(frozen=True)
class Trees:
    base: Path
    branch: Path
    results: Path
    scratch: Path

    def get(self, label: str) -> Path:
        return self.base if label == "base" else self.branch


def aslr_off_prefix() -> list[str]:
    """``setarch <arch> -R`` when it works here: without address randomisation
    the hash tables and allocator of two identical runs line up exactly.
    Docker's default seccomp profile refuses it, so it is probed, not assumed."""
    setarch = shutil.which("setarch")
    if setarch is None:
        return []
    prefix = [setarch, platform.machine(), "-R"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, check=False)
    return prefix if probe.returncode == 0 else []


def count_instructions(
    procs: Processes, trees: Trees, label: str, variant: str, n: int, path: str, aslr: list[str]
) -> int:
    tree = trees.get(label)
    slug = path.strip("/").replace("/", "_") or "root"
    # Names of one length for both trees ("head" for the branch): the two
    # processes then differ in nothing but the code they run.
    tag = "base" if label == "base" else "head"
    out = trees.results / "callgrind" / f"{tag}.{variant}.{slug}.{n}.out"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        *aslr, "valgrind", "--tool=callgrind", "--separate-threads=yes",
        f"--callgrind-out-file={out}",
        sys.executable, str(DRIVE_SCRIPT), variant, str(n), path,
    ]  # fmt: skip
    env = tree_env(
        tree,
        # Bytecode written by the first run would make the next start cheaper.
        {"PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "BENCH_OPTIONS": HOT_PATH_OPTIONS},
    )
    log = out.with_suffix(".log")
    code = procs.run(cmd, cwd=tree, env=env, log=log, timeout=1800)
    if code != 0:
        raise GateError(f"callgrind of {label} {variant} {path} exited {code} (log: {log})")
    # The main thread's count only: the requests run there. asgi_perf's
    # watcher thread wakes ten times a second of real time, and under
    # callgrind a run lasts as long as the machine's other work lets it.
    main_thread = out.with_name(f"{out.name}-01")
    match = _TOTAL_RE.search(main_thread.read_text()) if main_thread.exists() else None
    if match is None:
        raise GateError(f"no instruction total in {main_thread} (log: {log})")
    return int(match.group(1))


def run_callgrind(procs: Processes, trees: Trees, settings: Settings) -> list[Figure]:
    if shutil.which("valgrind") is None:
        raise GateError("valgrind not found: apt-get install valgrind (or BENCH_GATE_ONLY=...)")
    aslr = aslr_off_prefix()
    if not aslr:
        print("callgrind: setarch -R refused here; address randomisation stays on")
    jobs = [
        (label, variant, n, path)
        for path in settings.callgrind_paths
        for label in ("base", "branch")
        for variant in CALLGRIND_VARIANTS
        for n in (settings.n1, settings.n2)
    ]
    print(f"callgrind: {len(jobs)} valgrind runs, I({settings.n2}) - I({settings.n1}) requests")
    # Instructions do not depend on what else runs, so the runs share the cores.
    pool = ThreadPoolExecutor(2)
    try:
        futures = {
            job: pool.submit(count_instructions, procs, trees, *job, aslr=aslr) for job in jobs
        }
        totals = {job: future.result() for job, future in futures.items()}
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    per_request: dict[str, dict[tuple[str, str], float]] = {"base": {}, "branch": {}}
    for label, variant, n, path in jobs:
        if n == settings.n1:
            per_request[label][variant, path] = instructions_per_request(
                totals[label, variant, settings.n1, path],
                totals[label, variant, settings.n2, path],
                settings.n1,
                settings.n2,
            )
    return callgrind_figures(per_request, settings.callgrind_pct)


def run_pytest(procs: Processes, trees: Trees, settings: Settings) -> list[Figure]:
    runs: dict[str, list[dict[str, Any]]] = {"base": [], "branch": []}
    for i, label in enumerate(settings.pytest_order):
        tree = trees.get(label)
        out = trees.results / "pytest" / f"{i + 1}-{label}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "pytest", "benchmarks", "--benchmark-only", "-p", "no:randomly",
            "-p", "no:cacheprovider", "-o", "testpaths=benchmarks", "-q", *PYTEST_SELECTION,
            f"--benchmark-json={out}",
        ]  # fmt: skip
        print(f"pytest-benchmark: round {i + 1}/{len(settings.pytest_order)}, {label}")
        log = out.with_suffix(".log")
        env = tree_env(tree, {"PYTHONDONTWRITEBYTECODE": "1"})
        code = procs.run(cmd, cwd=tree, env=env, log=log, timeout=1800)
        if code != 0 or not out.exists():
            raise GateError(f"pytest-benchmark on {label} exited {code} (log: {log})")
        runs[label].append(json.loads(out.read_text()))
    figures, notes = pytest_figures(runs["base"], runs["branch"], settings.pytest_pct)
    for note in notes:
        print(note)
    return figures


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_shop(server: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + SHOP_STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise GateError(f"the shop exited {server.returncode} before answering (log: {log})")
        try:
            with urllib.request.urlopen(f"{url}/_perf/budgets", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise GateError(f"the shop did not answer on {url} in {SHOP_STARTUP_TIMEOUT_S:.0f} s")


def locust_once(procs: Processes, trees: Trees, label: str, scale: float) -> Path:
    """Serves ``label``'s shop, runs its locustfile with the plugin; the saved stats.json."""
    tree = trees.get(label)
    results = trees.results / "locust"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    # Each tree seeds its own catalog: the trees may disagree on the schema.
    env = tree_env(tree, {"SHOP_DB": str(trees.scratch / f"shop-{label}.db")})
    server_log = results / f"{label}-server.log"
    server = procs.start(
        [
            sys.executable, "-m", "uvicorn", "examples.shop.app:app", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning", "--lifespan", "on",
        ],
        cwd=tree, env=env, log=server_log,
    )  # fmt: skip
    try:
        _wait_for_shop(server, url, server_log)
        cap = int(30 * scale + LOCUST_SLACK_S)
        cmd = [
            sys.executable, "-m", "locust", "-f", "examples/shop/locustfile.py", "--headless",
            "--host", url, "--perf-results", str(results), "--perf-run-id", label,
            "--only-summary", "-t", f"{cap}s",
        ]  # fmt: skip
        print(f"locust: {label}, the shop's load shape at scale {scale:.2g}")
        log = results / f"{label}-locust.log"
        locust_env = tree_env(tree, {"SHOP_LOAD_SCALE": f"{scale:g}"})
        # Exit 1 is expected: the shop's search breaks its budget on purpose.
        code = procs.run(cmd, cwd=tree, env=locust_env, log=log, timeout=cap + LOCUST_SLACK_S)
        stats = results / label / "stats.json"
        if code not in (0, 1) or not stats.exists():
            raise GateError(f"locust on {label} exited {code}, no {stats} (log: {log})")
        return stats
    finally:
        procs.stop(server)


def run_locust(
    procs: Processes, trees: Trees, settings: Settings, strict: bool
) -> tuple[list[Figure], int]:
    """The p99 figures and ``asgi-perf diff``'s exit code (0 or 1)."""
    base = locust_once(procs, trees, "base", settings.shop_scale)
    branch = locust_once(procs, trees, "branch", settings.shop_scale)
    cmd = [
        sys.executable, "-m", "asgi_perf", "diff", str(base), str(branch),
        "--fail", f"p99:{settings.locust_pct:g}%",
    ]  # fmt: skip
    log = trees.results / "locust" / "diff.txt"
    env = tree_env(trees.branch, {"COLUMNS": "160"})
    code = procs.run(cmd, cwd=trees.branch, env=env, log=log, timeout=120)
    print(log.read_text(), end="")
    if code not in (0, 1):
        raise GateError(f"asgi-perf diff exited {code} (see {log})")
    figures = locust_figures(
        json.loads(base.read_text()), json.loads(branch.read_text()), settings.locust_pct,
        advisory=not strict,
    )  # fmt: skip
    return figures, code
