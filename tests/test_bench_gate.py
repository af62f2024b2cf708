"""``make bench-gate`` (benchmarks/gate.py): the verdict logic, the base worktree,
the clean-up on SIGTERM, a real callgrind count, and the workflows' schema check."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks._gate_report import (
    EXIT_FAIL,
    EXIT_PASS,
    Figure,
    GateError,
    callgrind_figures,
    exit_code,
    instructions_per_request,
    locust_figures,
    pytest_figures,
    table,
)
from benchmarks._gate_runs import Settings, Trees, count_instructions
from benchmarks._gate_tree import Processes, copy_tree, default_base, resolve_ref, worktree

ROOT = Path(__file__).resolve().parent.parent


def test_threshold_is_the_diff_rule_branch_over_base_times_one_plus_pct() -> None:
    assert not Figure("p", "x", "ms", 100.0, 103.0, 3.0).failed
    assert Figure("p", "x", "ms", 100.0, 103.1, 3.0).failed
    assert Figure("p", "x", "ms", 100.0, 103.1, 3.0).verdict == "FAIL"
    assert Figure("p", "x", "ms", 100.0, 90.0, 3.0).verdict == "PASS"
    assert Figure("p", "x", "ms", 100.0, 500.0).verdict == "info"
    assert Figure("p", "x", "ms", 100.0, 200.0, 25.0, advisory=True).verdict == "FAIL (advisory)"
    assert Figure("p", "x", "ms", 80.0, 100.0).ratio == 1.25
    assert Figure("p", "x", "ms", 0.0, 0.0, 3.0).ratio == 1.0
    zero = Figure("p", "x", "ms", 0.0, 1.0, 3.0)
    assert zero.failed and zero.ratio == float("inf")


def test_exit_code_ignores_advisory_and_shown_figures() -> None:
    ok = Figure("a", "x", "ms", 1.0, 1.0, 3.0)
    advisory = Figure("locust", "x", "ms", 1.0, 9.0, 25.0, advisory=True)
    shown = Figure("callgrind", "total", "instr", 1.0, 9.0)
    assert exit_code([ok, advisory, shown]) == EXIT_PASS
    assert exit_code([ok, Figure("a", "y", "ms", 1.0, 2.0, 15.0)]) == EXIT_FAIL


def test_table_has_a_row_per_figure_with_ratio_threshold_and_verdict() -> None:
    text = table(
        [
            Figure("callgrind", "GET / added by asgi_perf", "instr", 15_000, 16_650, 3.0),
            Figure("pytest", "test_request[bare-/]", "ms min", 7.0, 7.07, 15.0),
        ]
    )
    header, rule, first, second = text.splitlines()
    assert header.split() == ["figure", "base", "branch", "ratio", "threshold", "verdict"]
    assert set(rule.replace(" ", "")) == {"-"}
    assert first.split()[-5:] == ["15,000", "16,650", "1.110", "+3%", "FAIL"]
    assert second.split()[-5:] == ["7.000", "7.070", "1.010", "+15%", "PASS"]
    # Columns line up: every verdict starts at the same offset.
    assert first.index("FAIL") == second.index("PASS") == header.index("verdict")


def test_callgrind_gates_what_asgi_perf_adds_not_the_total() -> None:
    base = {("bare", "/"): 330_000.0, ("asgi_perf", "/"): 345_000.0}
    # asgi_perf's own cost 10 % higher: the total moves by less than 0.5 %.
    branch = {("bare", "/"): 330_000.0, ("asgi_perf", "/"): 346_500.0}
    added, total, bare = callgrind_figures({"base": base, "branch": branch}, 3.0)
    assert (added.base, added.branch, added.verdict) == (15_000.0, 16_500.0, "FAIL")
    assert total.verdict == "info" and total.ratio < 1.005
    assert bare.ratio == 1.0


def test_instructions_per_request_drops_start_up() -> None:
    assert instructions_per_request(2_000_000 + 100 * 300, 2_000_000 + 600 * 300, 100, 600) == 300
    with pytest.raises(ValueError):
        instructions_per_request(1, 2, 600, 100)


def _run(*benches: tuple[str, float]) -> dict[str, Any]:
    return {"benchmarks": [{"fullname": n, "stats": {"min": m}} for n, m in benches]}


def test_pytest_figures_take_the_fastest_round_of_every_run_of_a_tree() -> None:
    name = "benchmarks/test_overhead.py::test_request[asgi_perf-/]"
    base = [_run((name, 0.010), ("benchmarks/t.py::gone", 1.0)), _run((name, 0.008))]
    branch = [_run((name, 0.0095), ("benchmarks/t.py::new", 1.0)), _run((name, 0.0091))]
    figures, notes = pytest_figures(base, branch, 15.0)
    (figure,) = figures
    assert figure.name == "test_request[asgi_perf-/]"
    assert (figure.base, figure.branch) == pytest.approx((8.0, 9.1))
    assert figure.verdict == "PASS"  # +13.75 %
    assert notes == ["pytest: only in branch: new", "pytest: only in base: gone"]
    slower = pytest_figures(base, [_run((name, 0.0093))], 15.0)[0][0]
    assert slower.verdict == "FAIL"  # +16.25 %
    profiled = "benchmarks/p.py::test_profiled_request[profiled-yappi-/]"
    shown = pytest_figures([_run((profiled, 0.1))], [_run((profiled, 0.2))], 15.0)[0][0]
    assert shown.verdict == "info"


def _snapshot(p99s: dict[str, float]) -> dict[str, Any]:
    return {
        "routes": [
            {"route": r, "count": 500, "errors": 0, "latency_ms": {"p99": v, "p50": v / 2}}
            for r, v in p99s.items()
        ]
    }


def test_locust_figures_agree_with_asgi_perf_diff(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    base = _snapshot({"GET /a": 10.0, "GET /b": 20.0, "GET /gone": 1.0})
    branch = _snapshot({"GET /a": 12.4, "GET /b": 25.2, "GET /new": 1.0})
    figures = locust_figures(base, branch, 25.0, advisory=True)
    assert [(f.name, f.verdict) for f in figures] == [
        ("GET /a p99", "PASS"),
        ("GET /b p99", "FAIL (advisory)"),
    ]
    (tmp_path / "base.json").write_text(json.dumps(base))
    (tmp_path / "new.json").write_text(json.dumps(branch))
    code, out, _ = cli("diff", str(tmp_path / "base.json"), str(tmp_path / "new.json"),
                       "--fail", "p99:25%")  # fmt: skip
    assert code == 1
    assert "GET /b p99" in out.replace("\n", " ") and "GET /a p99" not in out


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.email", "gate@example.invalid")
    _git(repo, "config", "user.name", "gate")
    (repo / ".gitignore").write_text("ignored/\n")
    (repo / "hot.py").write_text("COST = 1\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "base")
    # The branch: a change not committed, a new file not added, an ignored one.
    (repo / "hot.py").write_text("COST = 2\n")
    (repo / "new.py").write_text("NEW = True\n")
    (repo / "ignored").mkdir()
    (repo / "ignored" / "big.bin").write_text("x")
    return repo


def test_worktree_holds_base_and_a_copy_of_the_branch_and_is_removed(repo: Path) -> None:
    with worktree(repo, "main") as (base, head):
        assert base.parent == head.parent
        assert (base / "hot.py").read_text() == "COST = 1\n"
        assert not (base / "new.py").exists()
        assert (head / "hot.py").read_text() == "COST = 2\n"
        assert (head / "new.py").exists()
        assert not (head / "ignored").exists()
        assert str(base) in _git(repo, "worktree", "list")
        scratch = base.parent
    assert not scratch.exists()
    assert len(_git(repo, "worktree", "list").splitlines()) == 1
    # The branch's own files are untouched.
    assert (repo / "hot.py").read_text() == "COST = 2\n"


def test_worktree_is_removed_when_the_gate_fails_inside(repo: Path) -> None:
    with pytest.raises(RuntimeError), worktree(repo, "HEAD") as (base, _):
        scratch = base.parent
        raise RuntimeError("a part crashed")
    assert not scratch.exists()
    assert len(_git(repo, "worktree", "list").splitlines()) == 1


def test_refs_default_to_origin_main_when_the_clone_has_it(repo: Path) -> None:
    assert default_base(repo) == "main"
    with pytest.raises(GateError, match="names no commit"):
        resolve_ref(repo, "no-such-branch")
    _git(repo, "update-ref", "refs/remotes/origin/main", "HEAD")
    assert default_base(repo) == "origin/main"
    assert resolve_ref(repo, "origin/main") == _git(repo, "rev-parse", "HEAD").strip()


def test_copy_tree_skips_a_file_deleted_but_still_in_the_index(repo: Path, tmp_path: Path) -> None:
    (repo / "hot.py").unlink()
    copy_tree(repo, tmp_path / "copy")
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == [".gitignore", "new.py"]


def test_stop_all_stops_a_child_and_what_it_started(tmp_path: Path) -> None:
    procs = Processes()
    pidfile = tmp_path / "grandchild.pid"
    script = f"sleep 60 & echo $! > {pidfile}; wait"
    child = procs.start(["sh", "-c", script], cwd=tmp_path, env=os.environ, log=tmp_path / "l")
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    grandchild = int(pidfile.read_text())
    procs.stop_all()
    assert child.poll() is not None
    with pytest.raises(ProcessLookupError):
        _wait_gone(grandchild)
    with pytest.raises(GateError):
        procs.start(["true"], cwd=tmp_path, env=os.environ, log=tmp_path / "l2")


def _wait_gone(pid: int) -> None:
    """Raises ProcessLookupError once ``pid`` is gone (a zombie counts as gone)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z":
            raise ProcessLookupError(pid)
        time.sleep(0.05)


def _gate(*args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.gate", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("--base", "no-such-ref-15"), {}, "names no commit"),
        (("--base", "HEAD"), {"BENCH_GATE_ONLY": "callgrind,wrk"}, "expected some of"),
    ],
)
def test_usage_errors_exit_2(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    gate = _gate(*args, "--results", str(tmp_path / "r"), **env)
    out, _ = gate.communicate(timeout=60)
    assert gate.returncode == 2, out
    assert message in out


def _worktrees() -> set[str]:
    return {line.split()[0] for line in _git(ROOT, "worktree", "list").splitlines()}


@pytest.mark.slow
def test_sigterm_stops_the_runs_and_removes_the_worktree(tmp_path: Path) -> None:
    before = _worktrees()
    gate = _gate("--base", "HEAD", "--results", str(tmp_path / "r"), BENCH_GATE_ONLY="pytest",
                 BENCH_GATE_QUICK="1")  # fmt: skip
    try:
        log = tmp_path / "r" / "pytest" / "1-base.log"
        deadline = time.monotonic() + 60
        while not log.exists():
            assert gate.poll() is None, gate.communicate()[0]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        # Another gate may run beside this one: its worktree is not ours.
        (base,) = [Path(p) for p in _worktrees() - before if "bench-gate-" in p]
        gate.send_signal(signal.SIGTERM)
        out, _ = gate.communicate(timeout=30)
    finally:
        if gate.poll() is None:
            gate.kill()
            gate.communicate()
    assert gate.returncode == 128 + signal.SIGTERM, out
    assert not base.parent.exists()
    assert str(base) not in _worktrees()
    # No pytest-benchmark left running in the removed tree.
    for proc in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            assert str(base.parent) not in proc.read_bytes().decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="apt-get install valgrind")
def test_callgrind_counts_a_real_request_cost(tmp_path: Path) -> None:
    # Both "trees" are this one: the count is the part of the gate tested here.
    trees = Trees(ROOT, ROOT, tmp_path, tmp_path)
    procs = Processes()
    try:
        short, long_ = (
            count_instructions(procs, trees, "base", "bare", n, "/", aslr=[]) for n in (5, 45)
        )
    finally:
        procs.stop_all()
    per_request = instructions_per_request(short, long_, 5, 45)
    # A FastAPI request in CPython: hundreds of thousands of instructions.
    assert 20_000 < per_request < 5_000_000, per_request
    assert (tmp_path / "callgrind" / "base.bare.root.45.out-01").exists()


def test_quick_settings_measure_less_than_full() -> None:
    quick, full = Settings.quick(), Settings.full()
    assert len(quick.callgrind_paths) < len(full.callgrind_paths)
    assert len(quick.pytest_order) < len(full.pytest_order)
    assert full.pytest_order.count("base") == full.pytest_order.count("branch")
    assert (full.callgrind_pct, full.pytest_pct, full.locust_pct) == (3.0, 15.0, 25.0)


CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"


def _check_workflows(*files: Path) -> subprocess.CompletedProcess[str]:
    cmd = [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.github-workflows", *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)


@pytest.mark.slow
def test_the_workflows_match_the_github_schema(tmp_path: Path) -> None:
    files = sorted(
        [*(ROOT / ".github" / "workflows").glob("*.yml"), *(ROOT / "examples" / "ci").glob("*.yml")]
    )
    assert {f.name for f in files} >= {"ci.yml", "benchmarks.yml", "perf.yml"}
    ok = _check_workflows(*files)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text("on: [push]\njobs:\n  a:\n    runs-onn: ubuntu-latest\n    steps: []\n")
    bad = _check_workflows(broken)
    assert bad.returncode == 1
    assert "runs-on" in bad.stdout
