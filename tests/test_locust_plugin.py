"""The Locust plugin in real, short, headless Locust runs against real uvicorn servers.

Locust always runs as a subprocess: importing it into the pytest process would
monkey-patch it with gevent.
"""

from __future__ import annotations

import json
import os
import pstats
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import httpx
import pytest
from fastapi import FastAPI, Request

from asgi_perf import PerfMiddleware

# Every test runs Locust in a subprocess: outside the quick loop (-m "not slow").
pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 90
# The run stops itself once every route had this many requests; -t is only a
# cap. gevent reads its clock when its loop runs, not while Locust imports the
# locustfile: on a busy machine a run time of a few seconds could end the run
# before the test had started, with nothing the plugin could report.
ENOUGH_REQUESTS = 3
# /burn more often: the window's sampler must see burn_cpu, and three 20 ms
# calls (some before the window opened) were once not enough on a busy machine.
ENOUGH_BURNS = 15
MAX_RUN_S = 30

LOCUSTFILE = f"""
import asgi_perf.integrations.locust  # noqa: F401
import gevent
from locust import FastHttpUser, HttpUser, constant, events, task
from locust.runners import WorkerRunner

ENOUGH = {{"/fast": {ENOUGH_REQUESTS}, "/burn": {ENOUGH_BURNS}, "/fast-client": {ENOUGH_REQUESTS}}}


@events.test_start.add_listener
def stop_when_every_route_had_enough(environment, **_):
    if isinstance(environment.runner, WorkerRunner):
        return  # the master counts the workers' requests, and stops them

    def requests(route):
        entry = environment.runner.stats.entries.get((route, "GET"))
        return 0 if entry is None else entry.num_requests

    def watch():
        while any(requests(route) < n for route, n in ENOUGH.items()):
            gevent.sleep(0.05)
        environment.runner.quit()

    gevent.spawn(watch)


class Shopper(HttpUser):
    wait_time = constant(0.02)

    @task(3)
    def fast(self):
        self.client.get("/fast")

    @task
    def burn(self):
        self.client.get("/burn")


class FastShopper(FastHttpUser):
    wait_time = constant(0.02)

    @task
    def fast(self):
        self.client.get("/fast-client")
"""

BROKEN = {"GET /burn": {"p99_ms": 5, "min_samples": 1}, "*": {"p99_ms": 5000, "min_samples": 1}}


def shop_app(perf: dict[str, Any] | None, seen: set[tuple[str, str | None]]) -> FastAPI:
    """``/burn`` holds the event loop for 20 ms (so a window samples it); every
    route records the ``X-Perf-Tag`` it got in ``seen``."""
    app = FastAPI()

    @app.middleware("http")
    async def record_tag(request: Request, call_next: Any) -> Any:
        seen.add((request.url.path, request.headers.get("x-perf-tag")))
        return await call_next(request)

    @app.get("/fast")
    async def fast() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/fast-client")
    async def fast_client() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/burn")
    async def burn_cpu() -> dict[str, int]:
        end = time.perf_counter() + 0.02
        n = 0
        while time.perf_counter() < end:
            n += 1
        return {"n": n}

    if perf is not None:
        app.add_middleware(PerfMiddleware, **perf)
    return app


def locust_cmd(locustfile: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(locustfile), *args]


def headless(host: str, results: Path, *extra: str) -> list[str]:
    return [
        "--headless", "-u", "4", "-r", "4", "-t", f"{MAX_RUN_S}s", "--host", host,
        "--perf-results", str(results), "--only-summary", *extra,
    ]  # fmt: skip


def locust_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASGI_PERF_", "LOCUST_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


_started: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_stray_locust() -> Iterator[None]:
    """A failed assertion must not leave a Locust process running."""
    yield
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def start(
    cwd: Path, cmd: Sequence[str], env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    # cwd: a locust.conf or pyproject.toml of the checkout must not leak in.
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env={**locust_env(), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _started.append(proc)
    return proc


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"locust did not end within {RUN_TIMEOUT_S} s:\n{out}")
    return proc.returncode, out


def run_locust(cwd: Path, cmd: Sequence[str]) -> tuple[int, str]:
    return finish(start(cwd, cmd))


def perf_get(server: Any, path: str, **params: str) -> Any:
    answer = httpx.get(f"{server.url}/_perf{path}", params=params, trust_env=False, timeout=30)
    answer.raise_for_status()
    return answer.json()


def windows(server: Any) -> list[dict[str, Any]]:
    return list(perf_get(server, "/profiles", kind="window")["profiles"])


def one_run_dir(results: Path) -> Path:
    runs = [p for p in results.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def plugin_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if "asgi_perf" in line]


@pytest.fixture
def locustfile(tmp_path: Path) -> Path:
    path = tmp_path / "locustfile.py"
    path.write_text(LOCUSTFILE)
    return path


ServerFactory = Callable[..., Any]


def test_broken_budget_saves_the_run_and_exits_1(
    live_server: ServerFactory, locustfile: Path, tmp_path: Path
) -> None:
    seen: set[tuple[str, str | None]] = set()
    server = live_server(shop_app({"budgets": BROKEN}, seen))
    results = tmp_path / "res"

    code, out = run_locust(tmp_path, locust_cmd(locustfile, *headless(server.url, results)))

    assert code == 1, out
    run = one_run_dir(results)
    run_id = run.name
    assert sorted(p.name for p in run.iterdir()) == [
        "budgets.json", "routes.json", "stats.json", "window.prof", "window.svg",
    ]  # fmt: skip
    functions = {func for (_, _, func) in pstats.Stats(str(run / "window.prof")).stats}  # type: ignore[attr-defined]
    assert "burn_cpu" in functions
    assert ElementTree.parse(run / "window.svg").getroot().tag.endswith("svg")
    stats = json.loads((run / "stats.json").read_text())
    counts = {r["route"]: r["count"] for r in stats["routes"]}
    assert counts["GET /burn"] > 0 and counts["GET /fast"] > 0 and counts["GET /fast-client"] > 0
    verdicts = json.loads((run / "budgets.json").read_text())
    assert verdicts["ok"] is False
    failing = [(v["route"], v["metric"]) for v in verdicts["verdicts"] if v["verdict"] == "fail"]
    assert failing == [("GET /burn", "p99_ms")]

    # The summary on stdout: the table with the broken budget, and the files.
    assert "budgets FAILED: 1 fail" in out
    assert any(
        "GET /burn" in line and "p99_ms" in line and "FAIL" in line for line in out.splitlines()
    )
    assert f"snakeviz {run / 'window.prof'}" in out

    # One window on the server, tagged with the run id; every request tagged too.
    assert [(w["tag"], w["kind"]) for w in windows(server)] == [(run_id, "window")]
    assert {tag for _, tag in seen} == {run_id}
    assert {path for path, _ in seen} == {"/fast", "/burn", "/fast-client"}


def test_budgets_file_passing_run_exits_0_and_is_a_new_run(
    live_server: ServerFactory, locustfile: Path, tmp_path: Path
) -> None:
    seen: set[tuple[str, str | None]] = set()
    server = live_server(shop_app({"budgets": BROKEN}, seen))
    budgets = tmp_path / "generous.toml"
    budgets.write_text('min_samples = 1\n["*"]\np99_ms = "5 s"\n')
    results = tmp_path / "res"

    first, out = run_locust(tmp_path, locust_cmd(locustfile, *headless(server.url, results)))
    assert first == 1, out
    first_stats = json.loads((one_run_dir(results) / "stats.json").read_text())
    second, out = run_locust(
        tmp_path,
        locust_cmd(
            locustfile,
            *headless(server.url, results, "--perf-budgets", str(budgets), "--perf-run-id", "ci-2"),
        ),
    )

    assert second == 0, out
    verdicts = json.loads((results / "ci-2" / "budgets.json").read_text())
    assert verdicts["ok"] is True and verdicts["source"] == str(budgets)
    assert {v["verdict"] for v in verdicts["verdicts"]} == {"pass"}
    assert "budgets ok: 0 fail" in out
    # The second run started from reset stats and got its own window.
    stats = json.loads((results / "ci-2" / "stats.json").read_text())
    assert stats["reset_at"] > first_stats["reset_at"] and stats["requests"] > 0
    tags = sorted(w["tag"] for w in windows(server))
    assert len(tags) == 2 and "ci-2" in tags
    assert "ci-2" in {tag for _, tag in seen}


def test_no_perf_window_still_collects_stats_and_tags_requests(
    live_server: ServerFactory, locustfile: Path, tmp_path: Path
) -> None:
    seen: set[tuple[str, str | None]] = set()
    # Every request is profiled while no window runs: the profiles keep the tag.
    server = live_server(shop_app({"budgets": BROKEN, "sample_rate": 1.0}, seen))
    results = tmp_path / "res"

    code, out = run_locust(
        tmp_path, locust_cmd(locustfile, *headless(server.url, results, "--no-perf-window"))
    )

    assert code == 1, out
    run = one_run_dir(results)
    assert sorted(p.name for p in run.iterdir()) == ["budgets.json", "stats.json"]
    assert json.loads((run / "stats.json").read_text())["requests"] > 0
    assert windows(server) == []
    tagged = perf_get(server, "/profiles", kind="request", tag=run.name)["profiles"]
    assert tagged and {p["tag"] for p in tagged} == {run.name}
    assert {tag for _, tag in seen} == {run.name}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_targets_without_asgi_perf_get_one_warning_and_the_test_runs(
    live_server: ServerFactory, locustfile: Path, tmp_path: Path
) -> None:
    plain_seen: set[tuple[str, str | None]] = set()
    plain = live_server(shop_app(None, plain_seen))
    targets = {"404": plain.url, "unreachable": f"http://127.0.0.1:{closed_port()}"}
    procs = {
        name: start(
            tmp_path,
            locust_cmd(locustfile, *headless(url, tmp_path / name, "--exit-code-on-error", "0")),
        )
        for name, url in targets.items()
    }
    outs = {name: finish(proc) for name, proc in procs.items()}

    for name, (code, out) in outs.items():
        assert code == 0, out
        lines = plugin_lines(out)
        assert len(lines) == 1, lines
        assert lines[0].endswith("the load test runs without it")
        assert targets[name] in lines[0]
        assert not (tmp_path / name).exists()
    assert "404" in plugin_lines(outs["404"][1])[0]
    assert "connection refused" in plugin_lines(outs["unreachable"][1])[0]
    # No tag on a target that has no asgi_perf: the plugin stays out of the way.
    assert plain_seen and {tag for _, tag in plain_seen} == {None}


def test_a_token_protected_app_needs_the_token(
    live_server: ServerFactory, locustfile: Path, tmp_path: Path
) -> None:
    seen: set[tuple[str, str | None]] = set()
    server = live_server(shop_app({"token": "s3cret", "budgets": BROKEN}, seen))
    without = start(tmp_path, locust_cmd(locustfile, *headless(server.url, tmp_path / "no")))
    # ASGI_PERF_TOKEN is --perf-token's default, as it is the app's.
    with_env = start(
        tmp_path,
        locust_cmd(locustfile, *headless(server.url, tmp_path / "yes")),
        env={"ASGI_PERF_TOKEN": "s3cret"},
    )
    (code_without, out_without), (code_with, out_with) = finish(without), finish(with_env)

    assert code_without == 0, out_without
    [warning] = plugin_lines(out_without)
    assert "401" in warning and "--perf-token" in warning
    assert not (tmp_path / "no").exists()
    assert code_with == 1, out_with
    run = one_run_dir(tmp_path / "yes")
    assert (run / "window.prof").is_file()
    assert {tag for _, tag in seen} == {None, run.name}


def test_a_bad_budgets_file_stops_locust_before_the_load(locustfile: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('["GET /x"]\np99_msec = 5\n')
    code, out = run_locust(
        tmp_path,
        locust_cmd(
            locustfile, *headless("http://127.0.0.1:9", tmp_path, "--perf-budgets", str(bad))
        ),
    )
    assert code == 2, out
    assert "--perf-budgets" in out and "p99_msec" in out


def test_distributed_run_starts_one_window_from_the_master(
    live_server: ServerFactory, locustfile: Path, tmp_path: Path
) -> None:
    seen: set[tuple[str, str | None]] = set()
    server = live_server(shop_app({"budgets": BROKEN}, seen))
    results = tmp_path / "res"
    port = str(closed_port())
    master = start(
        tmp_path,
        locust_cmd(
            locustfile,
            *headless(server.url, results, "--master", "--expect-workers", "1"),
            "--expect-workers-max-wait", "20",
            "--master-bind-host", "127.0.0.1", "--master-bind-port", port,
        ),
    )  # fmt: skip
    worker = start(
        tmp_path,
        locust_cmd(locustfile, "--worker", "--master-host", "127.0.0.1", "--master-port", port),
    )
    code, out = finish(master)
    assert code == 1, out
    worker_code, worker_out = finish(worker)
    assert worker_code == 0, worker_out
    run = one_run_dir(results)
    assert (run / "window.prof").is_file() and (run / "stats.json").is_file()
    assert [w["tag"] for w in windows(server)] == [run.name]
    # Only the worker sent requests: the id reached it from the master.
    assert {tag for _, tag in seen} == {run.name}
    assert plugin_lines(worker_out) == []


def test_a_run_id_is_matched_whole() -> None:
    # The id names a directory: "ci-2\n" passed a `$` pattern before. In a
    # process of its own: importing locust here would monkey-patch pytest's.
    code = (
        "import argparse\n"
        "from asgi_perf.integrations._locust_options import _run_id_arg\n"
        "assert _run_id_arg('ci-2') == 'ci-2'\n"
        "for value in ['ci-2\\n', '', '.hidden', 'a/b', 'x' * 65]:\n"
        "    try:\n"
        "        _run_id_arg(value)\n"
        "    except argparse.ArgumentTypeError:\n"
        "        continue\n"
        "    raise SystemExit(f'accepted {value!r}')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
