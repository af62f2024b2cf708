"""The ``asgi-perf`` command line, end to end against real uvicorn servers.

A few commands run as real subprocesses (``python -m asgi_perf``), the rest
in-process through ``main([...])``: the server runs in a thread of this
process, so both reach it over a real socket. Every error must be exactly
one line on stderr, never a traceback.
"""

from __future__ import annotations

import copy
import cProfile
import json
import os
import pstats
import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from asgi_perf.capture import Capture
from asgi_perf.stats.histogram import Histogram

BUDGETS = {
    "GET /items/{item_id}": {"p99_ms": 10_000},
    "GET /slow": {"p99_ms": 5},  # /slow sleeps 20+ ms: always broken
    "GET /users/{user_id}": {"p99_ms": 100},  # never called: insufficient
}
PERF = {"budgets": BUDGETS, "min_samples": 2, "sample_rate": 1.0, "profile_budget": 1.0}
ENV_TO_CLEAR = ("ASGI_PERF_TOKEN", "ASGI_PERF_PREFIX", "FORCE_COLOR", "TTY_COMPATIBLE", "COLUMNS")

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A token or prefix from the developer's shell must not change the tests.
    for name in ENV_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_TO_CLEAR}
    env.update(extra)
    return env


def run_subprocess(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asgi_perf", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(**env),
    )


def assert_one_line_error(err: str, *fragments: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("asgi-perf: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def get(url: str, path: str, n: int = 1) -> None:
    with httpx.Client(base_url=url, trust_env=False, timeout=30) as client:
        for _ in range(n):
            client.get(path).raise_for_status()


@pytest.fixture
def server(live_server: Any, fastapi_app: Any) -> str:
    """A FastAPI app with budgets and every request profiled, after some traffic."""
    url: str = live_server(fastapi_app(perf=PERF)).url
    # The first requests pay for imports and the first profile; cleared so
    # that p99 of /items reflects the route, not the server's warm-up.
    get(url, "/items/7", 2)
    httpx.post(f"{url}/_perf/reset", trust_env=False, timeout=30).raise_for_status()
    get(url, "/items/7", 5)
    get(url, "/slow?ms=20", 3)
    get(url, "/slow?ms=40")  # the slowest, and the latest profile
    return url


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def traffic(server: str) -> Iterator[None]:
    """Requests in the background, so a profile window has something to record."""
    stop = threading.Event()

    def loop() -> None:
        with httpx.Client(base_url=server, trust_env=False, timeout=30) as client:
            while not stop.is_set():
                client.get("/slow?ms=5")

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(10)


def profile_file(path: Path, *functions: Callable[[], object]) -> Path:
    """A real cProfile ``.prof`` of calling ``functions``."""
    profiler = cProfile.Profile()
    profiler.enable()
    for f in functions:
        f()
    profiler.disable()
    profiler.dump_stats(path)
    return path


def alpha_function() -> int:
    return sum(i * i for i in range(20_000))


def beta_function() -> int:
    return sum(len(str(i)) for i in range(20_000))


def function_names(path: Path) -> set[str]:
    stats: dict[tuple[str, int, str], Any] = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    return {name for _, _, name in stats}


# --------------------------------------------------------------------------- stats


def test_stats_prints_a_table_sorted_by_p99_with_verdicts(server: str, cli: Run) -> None:
    code, out, err = cli("stats", server)
    assert (code, err) == (0, "")
    for column in ("route", "count", "rps", "p50", "p90", "p99", "max", "errors", "budget"):
        assert column in out
    lines = out.splitlines()
    slow = next(i for i, line in enumerate(lines) if "GET /slow" in line)
    items = next(i for i, line in enumerate(lines) if "GET /items/{item_id}" in line)
    assert slow < items  # /slow has the larger p99
    assert "fail" in lines[slow] and "pass" in lines[items]
    assert "budgets: 1 failed" in out


def test_stats_json_is_the_snapshot(server: str, cli: Run) -> None:
    code, out, err = cli("stats", server + "/_perf/", "--json")  # a URL with the prefix works
    assert (code, err) == (0, "")
    snapshot = json.loads(out)
    routes = {r["route"]: r for r in snapshot["routes"]}
    assert routes["GET /items/{item_id}"]["count"] == 5
    assert routes["GET /slow"]["budget"] == "fail"


# --------------------------------------------------------------------------- profile / fetch


@pytest.mark.slow
def test_profile_shows_a_progress_bar_and_saves_a_prof(
    server: str, traffic: None, tmp_path: Path
) -> None:
    output = tmp_path / "window.prof"
    # TTY_COMPATIBLE makes rich draw the live bar although stderr is a pipe.
    done = run_subprocess(
        "profile", server, "--seconds", "1", "-o", str(output), TTY_COMPATIBLE="1"
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "profiling" in done.stderr and "━" in done.stderr and "1/1 s" in done.stderr
    assert f"saved {output}" in done.stdout
    assert function_names(output)  # pstats reads it


def test_profile_names_the_file_like_the_server(
    server: str, traffic: None, cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("profile", server, "--seconds", "1", "--format", "collapsed")
    assert (code, err) == (0, ""), err
    [saved] = tmp_path.iterdir()
    assert saved.name.startswith("process-") and saved.suffix == ".collapsed"
    assert f"saved {saved.name}" in out
    assert all(line.rsplit(" ", 1)[1].isdigit() for line in saved.read_text().splitlines())


def test_profile_keeps_one_route_with_route(server: str, cli: Run, tmp_path: Path) -> None:
    # A sync endpoint waits in the threadpool: the sampler sees it there.
    sender = threading.Thread(target=get, args=(server, "/sync?ms=20", 60), daemon=True)
    sender.start()
    output = tmp_path / "sync.collapsed"
    code, _, err = cli(
        "profile", server, "--seconds", "1", "--route", "GET /sync", "-o", str(output)
    )
    sender.join(30)
    assert (code, err) == (0, ""), err
    roots = {line.split(";", 1)[0] for line in output.read_text().splitlines()}
    assert roots == {"GET /sync (<route>)"}


def test_profile_last_needs_the_apps_continuous_sampler(
    live_server: Any, fastapi_app: Any, cli: Run, tmp_path: Path
) -> None:
    plain = live_server(fastapi_app(perf=PERF)).url
    code, _, err = cli("profile", plain, "--last", "5")
    assert code != 0
    assert_one_line_error(err, "409", "continuous")

    continuous = live_server(fastapi_app(perf={**PERF, "continuous": True})).url
    output = tmp_path / "recent.collapsed"
    # Sampled, not traced: on a loaded machine 150 ms of requests can fall
    # between samples, so ask again (bounded) rather than fail on chance.
    for _ in range(10):
        get(continuous, "/sync?ms=30", 5)
        code, _, err = cli("profile", continuous, "--last", "5", "-o", str(output))
        assert (code, err) == (0, ""), err
        if "GET /sync (<route>)" in output.read_text():
            break
    assert "GET /sync (<route>)" in output.read_text()

    code, _, err = cli("profile", continuous, "--last", "5", "--seconds", "3")
    assert code == 2 and "not allowed with" in err  # argparse: one or the other
    code, _, err = cli("profile", continuous, "--last", "5", "--engine", "yappi")
    assert code != 0
    assert_one_line_error(err, "--engine")


def test_fetch_latest_and_slowest(server: str, cli: Run, tmp_path: Path) -> None:
    code, out, err = cli("fetch", server, "latest", "-o", str(tmp_path / "latest.prof"))
    assert (code, err) == (0, ""), err
    assert function_names(tmp_path / "latest.prof")

    # A directory keeps the server's file name; the format comes from --format.
    code, out, err = cli(
        "fetch", server, "slowest", "--route", "GET /slow", "--format", "svg", "-o", str(tmp_path)
    )
    assert (code, err) == (0, ""), err
    [svg] = tmp_path.glob("get-slow-*.svg")
    assert f"saved {svg}" in out
    assert ET.parse(svg).getroot().tag.endswith("svg")

    # Without --format, -o's extension picks it.
    code, _, err = cli("fetch", server, "latest", "-o", str(tmp_path / "x.speedscope.json"))
    assert code == 0, err
    assert "speedscope" in json.loads((tmp_path / "x.speedscope.json").read_text())["$schema"]


def test_fetch_errors_are_one_line(server: str, cli: Run) -> None:
    code, _, err = cli("fetch", server, "latest", "--route", "GET /nowhere")
    assert code == 3
    assert_one_line_error(err, "404", "no profiles for route 'GET /nowhere'")
    code, _, err = cli("fetch", server, "not-an-id")
    assert code == 3
    assert_one_line_error(err, "400", "is not a profile id")


def test_fetch_with_nothing_kept_says_how_to_get_a_profile(
    live_server: Any, fastapi_app: Any, cli: Run, tmp_path: Path
) -> None:
    # The defaults keep no profile: a new user's first fetch.
    url = live_server(fastapi_app(perf={})).url
    get(url, "/items/7", 3)
    for args in (("slowest",), ("latest", "--route", "GET /items/{item_id}")):
        code, out, err = cli("fetch", url, *args)
        assert (code, out) == (3, "")
        assert_one_line_error(
            err,
            "no profiles",
            "yet",
            "'X-Perf-Profile: 1'",
            f"curl -H 'X-Perf-Profile: 1' {url}/",
            "sample_rate",
            f"asgi-perf profile {url} --seconds 30",
        )
    code, _, err = cli("view", url, "--ref", "slowest")
    assert code == 3
    assert_one_line_error(err, "no profiles", "'X-Perf-Profile: 1'")
    # Following the advice works (on a route long enough to be sampled: a
    # sub-millisecond request can end between two samples and record nothing).
    with httpx.Client(base_url=url, trust_env=False, timeout=30) as client:
        client.get("/sync?ms=30", headers={"X-Perf-Profile": "1"}).raise_for_status()
    code, _, err = cli("fetch", url, "slowest", "-o", str(tmp_path / "slowest.prof"))
    assert (code, err) == (0, "")
    # An unknown id is another error, with no such advice.
    code, _, err = cli("fetch", url, "0123456789abcdef")
    assert code == 3 and "X-Perf-Profile" not in err


# --------------------------------------------------------------------------- check


def test_check_url_exits_1_on_a_broken_budget_and_writes_junit(
    server: str, cli: Run, tmp_path: Path
) -> None:
    junit = tmp_path / "budgets.xml"
    code, out, err = cli("check", server, "--junit", str(junit))
    assert (code, err) == (1, "")
    assert "budgets broken" in out and "1 fail" in out
    lines = out.splitlines()
    assert "fail" in next(line for line in lines if "GET /slow" in line)

    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("3", "1", "1")
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert set(cases) == {
        "GET /slow p99_ms",
        "GET /items/{item_id} p99_ms",
        "GET /users/{user_id} p99_ms",
    }
    failure = cases["GET /slow p99_ms"].find("failure")
    assert failure is not None and "limit 5 ms" in (failure.get("message") or "")
    assert cases["GET /users/{user_id} p99_ms"].find("skipped") is not None
    assert list(cases["GET /items/{item_id} p99_ms"]) == []


def test_check_url_passes_when_budgets_hold(live_server: Any, fastapi_app: Any, cli: Run) -> None:
    url = live_server(fastapi_app(perf={"budgets": {"GET /": {"p99_ms": 10_000}}})).url
    get(url, "/", 25)
    code, out, err = cli("check", url)
    assert (code, err) == (0, "")
    assert "budgets ok: 1 pass" in out


def test_check_url_against_a_budgets_file(server: str, cli: Run, tmp_path: Path) -> None:
    lenient = tmp_path / "lenient.toml"
    lenient.write_text('min_samples = 1\n["*"]\np99_ms = "10 s"\n')
    code, out, err = cli("check", server, "--budgets", str(lenient))
    assert (code, err) == (0, "")  # the app's own (broken) budgets are not used
    assert str(lenient) in out


def test_check_a_saved_snapshot(server: str, cli: Run, tmp_path: Path) -> None:
    _, snapshot, _ = cli("stats", server, "--json")
    saved = tmp_path / "stats.json"
    saved.write_text(snapshot)
    strict = tmp_path / "strict.toml"
    strict.write_text('["GET /slow"]\np99_ms = 1\n')

    code, out, err = cli("check", str(saved), "--budgets", str(strict), "--min-samples", "1")
    assert (code, err) == (1, "")
    code, out, err = cli("check", str(saved), "--budgets", str(strict), "--min-samples", "1000")
    assert (code, err) == (0, "")
    assert "1 insufficient" in out

    code, _, err = cli("check", str(saved))
    assert code == 2
    assert_one_line_error(err, "needs --budgets")
    bad = tmp_path / "bad.toml"
    bad.write_text('["GET /slow"]\np99_msec = 1\n')
    code, _, err = cli("check", str(saved), "--budgets", str(bad))
    assert code == 2
    assert_one_line_error(err, "unknown field 'p99_msec'")


# --------------------------------------------------------------------------- several instances


def stats_of(url: str) -> dict[str, Any]:
    """A server's own snapshot, with histograms, asked directly."""
    response = httpx.get(f"{url}/_perf/stats?histograms=1", trust_env=False, timeout=30)
    response.raise_for_status()
    snapshot: dict[str, Any] = response.json()
    return snapshot


def buckets(route: dict[str, Any], name: str) -> Counter[int]:
    return Counter({i: n for i, n in route["histograms"][name]["buckets"]})


def test_stats_of_several_urls_adds_them_up_exactly(
    live_server: Any, fastapi_app: Any, cli: Run
) -> None:
    a, b, c = (live_server(fastapi_app(perf=PERF)).url for _ in range(3))
    get(a, "/items/1", 7)
    get(a, "/slow?ms=1", 3)
    get(b, "/items/2", 5)
    get(c, "/slow?ms=30", 4)
    get(c, "/users/x", 2)

    code, out, err = cli("stats", a, b, c, "--json", "--histograms")
    assert (code, err) == (0, ""), err
    merged = json.loads(out)
    assert merged["instances"] == [a, b, c]
    routes = {r["route"]: r for r in merged["routes"]}
    counts = {key: r["count"] for key, r in routes.items()}
    assert counts == {"GET /items/{item_id}": 12, "GET /slow": 7, "GET /users/{user_id}": 2}
    assert merged["requests"] == 21

    parts = [{r["route"]: r for r in stats_of(url)["routes"]} for url in (a, b, c)]
    for key, route in routes.items():
        for name in ("latency_ns", "ttfb_ns"):
            # Bucket by bucket, the merge is the sum of what each server counted.
            expected: Counter[int] = Counter()
            for part in parts:
                if key in part:
                    expected += buckets(part[key], name)
            assert buckets(route, name) == expected, (key, name)
        # Percentiles are read from the merged histogram, not averaged.
        latency = Histogram.from_dict(route["histograms"]["latency_ns"])
        assert route["latency_ms"] == latency.summary(1e6)
    assert routes["GET /slow"]["latency_ms"]["max"] >= 30  # c's slow requests are in it

    # Without --histograms the merged snapshot is the usual shape: what diff reads.
    code, out, err = cli("stats", a, b, "--json")
    assert (code, err) == (0, "")
    plain = json.loads(out)
    assert plain["instances"] == [a, b] and plain["requests"] == 15
    assert all("histograms" not in r for r in plain["routes"])

    code, out, err = cli("stats", a, b)
    assert (code, err) == (0, "")
    assert f"{a}, {b}" in out and "2 instances merged, 15 requests" in out
    items = next(line for line in out.splitlines() if "GET /items/{item_id}" in line)
    assert " 12 " in items


def test_check_several_urls_judges_the_merged_numbers(
    live_server: Any, fastapi_app: Any, cli: Run, tmp_path: Path
) -> None:
    fast, slow = (live_server(fastapi_app(perf={"min_samples": 10})).url for _ in range(2))
    get(fast, "/slow?ms=1", 6)
    get(slow, "/slow?ms=40", 6)
    budgets = tmp_path / "budgets.toml"
    budgets.write_text('min_samples = 10\n["GET /slow"]\np99_ms = 25\n')

    # Alone, neither has enough samples to judge; together they break the budget.
    for url in (fast, slow):
        code, out, err = cli("check", url, "--budgets", str(budgets))
        assert (code, err) == (0, "")
        assert "1 insufficient" in out
    junit = tmp_path / "merged.xml"
    code, out, err = cli("check", fast, slow, "--budgets", str(budgets), "--junit", str(junit))
    assert (code, err) == (1, "")
    assert "budgets broken: 1 fail" in out
    assert ET.parse(junit).getroot().get("failures") == "1"

    lenient = tmp_path / "lenient.toml"
    lenient.write_text('min_samples = 10\n["GET /slow"]\np99_ms = "5 s"\n')
    code, out, err = cli("check", fast, slow, "--budgets", str(lenient))
    assert (code, err) == (0, "")
    assert "budgets ok: 1 pass" in out

    # Each app judges only its own numbers: the budgets must come from a file.
    code, out, err = cli("check", fast, slow)
    assert (code, out) == (2, "")
    assert_one_line_error(err, "merged numbers", "--budgets FILE")
    code, out, err = cli("check", fast, str(budgets), "--budgets", str(budgets))
    assert (code, out) == (2, "")
    assert_one_line_error(err, "budgets.toml: several targets must all be URLs")


def test_an_unreachable_instance_fails_the_merge(server: str, cli: Run, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    budgets = tmp_path / "budgets.toml"
    budgets.write_text('["*"]\np99_ms = "5 s"\n')
    for args in (
        ("stats", server, dead),
        ("stats", server, dead, "--json"),
        ("check", server, dead, "--budgets", str(budgets)),
        ("profile", dead, server, "--last", "5"),
    ):
        code, out, err = cli(*args)
        assert (code, out) == (3, ""), args
        # The message names the URL that failed, and says the rest was not merged.
        assert_one_line_error(
            err, f"cannot reach {dead}/_perf/", "1 of 2 instances failed: nothing merged"
        )

    code, out, err = cli("stats", server, server + "/_perf")
    assert (code, out) == (2, "")
    assert_one_line_error(err, f"{server} is given twice")


@pytest.fixture
def app_process(tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Factory: a uvicorn process serving ``tests/cpu_app.py``; returns its URL."""
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> str:
        port = closed_port()
        log = tmp_path / f"uvicorn-{port}.log"
        command = [sys.executable, "-m", "uvicorn", "cpu_app:app", "--app-dir"]
        command += [str(Path(__file__).parent), "--host", "127.0.0.1", "--port", str(port)]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*command, "--log-level", "warning"], env=cli_env(), stdout=out, stderr=out
            )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                httpx.get(f"{url}/_perf/stats", trust_env=False, timeout=5).raise_for_status()
                return url
            except httpx.TransportError:
                assert time.monotonic() < deadline, "uvicorn did not start within 60 s"
                time.sleep(0.1)

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def busy() -> Iterator[Callable[[str, str], None]]:
    """``busy(url, path)``: requests in a loop until the test ends."""
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start(url: str, path: str) -> None:
        def loop() -> None:
            with httpx.Client(base_url=url, trust_env=False, timeout=30) as client:
                while not stop.is_set():
                    client.get(path)

        thread = threading.Thread(target=loop, daemon=True)
        threads.append(thread)
        thread.start()

    yield start
    stop.set()
    for thread in threads:
        thread.join(10)


def stack_functions(capture: Capture) -> set[str]:
    return {frame.function for stack in capture.stacks for frame in stack}


@pytest.mark.slow
def test_profile_of_several_urls_holds_the_work_of_each(
    app_process: Callable[[], str],
    busy: Callable[[str, str], None],
    cli: Run,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = app_process(), app_process()
    busy(a, "/alpha")
    busy(b, "/beta")

    # One process sees only its own work...
    code, _, err = cli("profile", a, "--seconds", "1", "-o", str(tmp_path / "a.collapsed"))
    assert (code, err) == (0, ""), err
    alone = (tmp_path / "a.collapsed").read_text()
    assert "alpha_work" in alone and "beta_work" not in alone

    # ...a window on each at once holds both, merged from the lossless captures.
    merged = tmp_path / "merged.collapsed"
    code, out, err = cli("profile", a, b, "--seconds", "1", "-o", str(merged))
    assert (code, err) == (0, ""), err
    assert f"saved {merged}" in out
    text = merged.read_text()
    assert "alpha_work" in text and "beta_work" in text

    # The capture itself says what it was made of.
    start = time.monotonic()
    code, _, err = cli("profile", a, b, "--seconds", "2", "-o", str(tmp_path / "merged.json"))
    assert (code, err) == (0, ""), err
    assert time.monotonic() - start < 2 * 2  # at the same time: one after the other takes 4 s
    capture = Capture.from_json(json.loads((tmp_path / "merged.json").read_text()))
    assert capture.meta["kind"] == "merged" and capture.meta["parts"] == 2
    assert capture.meta["instances"] == [a, b]
    assert capture.meta["route"] == "<process>"
    assert {"alpha_work", "beta_work"} <= stack_functions(capture)

    # --last: the recent past of each, at once; the name says what it is.
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("profile", a, b, "--last", "5", "--format", "svg")
    assert (code, err) == (0, ""), err
    svg = tmp_path / "merged-last-5s-2-instances.svg"
    assert f"saved {svg.name}" in out
    assert "alpha_work" in svg.read_text() and "beta_work" in svg.read_text()

    # An unreachable instance fails at once, without waiting for the others' windows.
    dead = f"http://127.0.0.1:{closed_port()}"
    start = time.monotonic()
    done = run_subprocess("profile", a, dead, "--seconds", "30")
    assert time.monotonic() - start < 15
    assert (done.returncode, done.stdout) == (3, "")
    assert_one_line_error(done.stderr, f"cannot reach {dead}/_perf/profile", "nothing merged")


# --------------------------------------------------------------------------- diff


@pytest.fixture
def snapshots(server: str, cli: Run, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A real saved snapshot, and a copy to turn into the "new" run."""
    _, out, _ = cli("stats", server, "--json")
    base = tmp_path / "base.json"
    base.write_text(out)
    return base, json.loads(out)


def _write(path: Path, snapshot: dict[str, Any]) -> str:
    path.write_text(json.dumps(snapshot))
    return str(path)


def test_diff_thresholds(snapshots: tuple[Path, dict[str, Any]], cli: Run, tmp_path: Path) -> None:
    base, snapshot = snapshots
    new = copy.deepcopy(snapshot)
    for route in new["routes"]:
        if route["route"] == "GET /slow":
            route["latency_ms"]["p99"] *= 1.15  # +15 %
    new_path = _write(tmp_path / "new.json", new)

    code, out, err = cli("diff", str(base), new_path, "--fail", "p99:10%")
    assert (code, err) == (1, "")
    assert "REGRESSION" in out and "+15.0%" in out
    assert "1 regression(s) past --fail thresholds: GET /slow p99 +15.0%" in out

    code, out, err = cli("diff", str(base), new_path, "--fail", "p99:20%", "--fail", "p50:1")
    assert (code, err) == (0, "")
    assert "no regression" in out

    code, out, err = cli("diff", str(base), str(base))
    assert (code, err) == (0, "")  # no thresholds: a report only
    for column in ("base", "new", "change"):
        assert column in out


def test_diff_error_rate_and_routes_new_and_gone(
    snapshots: tuple[Path, dict[str, Any]], cli: Run, tmp_path: Path
) -> None:
    base, snapshot = snapshots
    new = copy.deepcopy(snapshot)
    new["routes"] = [r for r in new["routes"] if r["route"] != "GET /items/{item_id}"]
    extra = copy.deepcopy(new["routes"][0])
    extra["route"] = "GET /brand-new"
    new["routes"].append(extra)
    for route in new["routes"]:
        if route["route"] == "GET /slow":
            route["errors"] = 1  # from no errors to some: any percentage is passed
    code, out, err = cli(
        "diff", str(base), _write(tmp_path / "new.json", new), "--fail", "error_rate:50%"
    )
    assert (code, err) == (1, "")
    assert "new routes (not in" in out and "GET /brand-new" in out
    assert "gone routes (not in" in out and "GET /items/{item_id}" in out
    assert "GET /slow error_rate" in out


@pytest.mark.parametrize(
    ("threshold", "fragment"),
    [
        ("p99:ten", "bad threshold 'p99:ten'"),
        ("p42:10%", "unknown metric 'p42'"),
        ("p99", ""),
    ],
)
def test_diff_bad_threshold_syntax(
    snapshots: tuple[Path, dict[str, Any]], cli: Run, threshold: str, fragment: str
) -> None:
    base, _ = snapshots
    code, out, err = cli("diff", str(base), str(base), "--fail", threshold)
    assert (code, out) == (2, "")
    assert_one_line_error(err, "--fail", fragment)


@pytest.mark.slow
def test_diff_bad_threshold_in_a_real_process(snapshots: tuple[Path, dict[str, Any]]) -> None:
    base, _ = snapshots
    done = run_subprocess("diff", str(base), str(base), "--fail", "p99:ten")
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "bad threshold")


def test_diff_bad_files(snapshots: tuple[Path, dict[str, Any]], cli: Run, tmp_path: Path) -> None:
    base, _ = snapshots
    not_json = tmp_path / "notes.json"
    not_json.write_text("hello")
    not_snapshot = tmp_path / "list.json"
    not_snapshot.write_text("[1, 2]")
    for other, fragment in [
        (tmp_path / "missing.json", "no such file"),
        (not_json, "not JSON"),
        (not_snapshot, "not an asgi_perf stats snapshot"),
    ]:
        code, _, err = cli("diff", str(base), str(other))
        assert code == 2
        assert_one_line_error(err, str(other), fragment)


# --------------------------------------------------------------------------- files


def test_flamegraph_from_prof_and_collapsed(cli: Run, tmp_path: Path) -> None:
    prof = profile_file(tmp_path / "run.prof", alpha_function)
    out_svg = tmp_path / "run.svg"
    code, out, err = cli("flamegraph", str(prof), "-o", str(out_svg))
    assert (code, err) == (0, "")
    assert f"saved {out_svg}" in out
    root = ET.parse(out_svg).getroot()
    assert root.tag.endswith("svg")
    assert "alpha_function" in out_svg.read_text()

    collapsed = tmp_path / "stacks.collapsed"
    collapsed.write_text(
        "main (app/main.py:1);handler (app/views.py:10);slow_query (app/db.py:42) 30000\n"
        "main (app/main.py:1);handler (app/views.py:10) 5000\n"
        "main (app/main.py:1);plain_name 1000\n"
    )
    code, _, err = cli("flamegraph", str(collapsed), "-o", str(tmp_path / "stacks.svg"))
    assert (code, err) == (0, "")
    text = (tmp_path / "stacks.svg").read_text()
    ET.fromstring(text)
    assert "slow_query" in text and "app/db.py:42" in text and "plain_name" in text


def test_flamegraph_bad_files(cli: Run, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.prof"
    bogus.write_text("this is not marshal data\n")
    garbled = tmp_path / "garbled.collapsed"
    garbled.write_text("a;b;c no-count-here\n")
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    for path, fragment in [
        (bogus, "not a pstats .prof file"),
        (garbled, "expected 'frame;frame;... COUNT'"),
        (other, "unsupported file"),
        (tmp_path / "missing.prof", "no such file"),
    ]:
        code, out, err = cli("flamegraph", str(path), "-o", str(tmp_path / "x.svg"))
        assert (code, out) == (2, "")
        assert_one_line_error(err, fragment)


def test_merge_two_prof_files(cli: Run, tmp_path: Path) -> None:
    a = profile_file(tmp_path / "a.prof", alpha_function)
    b = profile_file(tmp_path / "b.prof", beta_function)
    merged = tmp_path / "merged.prof"
    code, out, err = cli("merge", str(a), str(b), "-o", str(merged))
    assert (code, err) == (0, "")
    assert "2 profiles merged" in out
    assert {"alpha_function", "beta_function"} <= function_names(merged)

    # Mixed inputs go through captures; the output's extension picks the format.
    collapsed = tmp_path / "c.collapsed"
    collapsed.write_text("main (app.py:1);gamma_function (app.py:9) 2000\n")
    svg = tmp_path / "merged.svg"
    code, out, err = cli("merge", str(a), str(collapsed), "-o", str(svg))
    assert (code, err) == (0, "")
    text = svg.read_text()
    ET.fromstring(text)
    assert "alpha_function" in text and "gamma_function" in text

    code, _, err = cli("merge", str(a), "-o", str(tmp_path / "out.txt"))
    assert code == 2
    assert_one_line_error(err, "unknown output type")


def test_merge_capture_json_from_profile_dir(
    live_server: Any, fastapi_app: Any, cli: Run, tmp_path: Path
) -> None:
    profile_dir = tmp_path / "profiles"
    url = live_server(fastapi_app(perf={"sample_rate": 1.0, "profile_dir": str(profile_dir)})).url
    get(url, "/slow?ms=30", 2)
    deadline = time.monotonic() + 10
    while len(list(profile_dir.glob("*.json"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    captures = sorted(profile_dir.glob("*.json"))
    assert len(captures) == 2
    merged = tmp_path / "merged.prof"
    code, _, err = cli("merge", *map(str, captures), "-o", str(merged))
    assert (code, err) == (0, "")
    assert function_names(merged)


# --------------------------------------------------------------------------- view


def test_view_error_paths(cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = cli("view", str(tmp_path / "missing.prof"))
    assert (code, out) == (2, "")
    assert_one_line_error(err, "missing.prof: no such file")

    bogus = tmp_path / "bogus.prof"
    bogus.write_bytes(b"\x00\x01not a profile")
    code, out, err = cli("view", str(bogus))
    assert (code, out) == (2, "")
    assert_one_line_error(err, "not a pstats .prof file")

    prof = profile_file(tmp_path / "run.prof", alpha_function)
    # None in sys.modules is how Python spells "cannot be imported".
    monkeypatch.setitem(sys.modules, "snakeviz", None)
    code, out, err = cli("view", str(prof))
    assert (code, out) == (2, "")
    assert_one_line_error(err, "pip install snakeviz")


def test_view_url_without_asgi_perf(live_server: Any, fastapi_app: Any, cli: Run) -> None:
    url = live_server(fastapi_app(perf=None)).url
    code, _, err = cli("view", url)
    assert code == 3
    assert_one_line_error(err, "404: no asgi_perf at", "is PerfMiddleware installed")


# --------------------------------------------------------------------------- errors


def test_unreachable_server(cli: Run) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    code, out, err = cli("stats", url)
    assert (code, out) == (3, "")
    assert_one_line_error(err, "cannot reach", "connection refused")


@pytest.mark.slow
def test_unreachable_server_in_a_real_process() -> None:
    done = run_subprocess("check", f"http://127.0.0.1:{closed_port()}")
    assert done.returncode == 3
    assert done.stdout == ""
    assert_one_line_error(done.stderr, "cannot reach")


def test_a_token_protected_server(
    live_server: Any, fastapi_app: Any, cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = live_server(fastapi_app(perf={"token": "s3cret"})).url
    code, out, err = cli("stats", url)
    assert (code, out) == (3, "")
    assert_one_line_error(err, "401", "token", "--token or ASGI_PERF_TOKEN")

    code, _, err = cli("stats", url, "--token", "wrong")
    assert code == 3
    assert_one_line_error(err, "401")

    code, out, err = cli("stats", url, "--token", "s3cret")
    assert (code, err) == (0, "")
    monkeypatch.setenv("ASGI_PERF_TOKEN", "s3cret")
    code, out, err = cli("stats", url, "--json")
    assert (code, err) == (0, "")
    assert json.loads(out)["schema"] == 1


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ((), "required: COMMAND"),
        (("stats",), "required: URL"),
        (("profile", "http://127.0.0.1:1"), "--seconds"),
        (("fetch", "http://127.0.0.1:1", "latest", "--format", "gif"), "invalid choice: 'gif'"),
        (("check", "x.json", "--min-samples", "-3"), "whole number"),
        # Whole numbers are ASCII digits, as the server reads them.
        (("check", "x.json", "--min-samples", "٣"), "whole number"),
        (("profile", "http://127.0.0.1:1", "--last", "٣"), "whole number"),
        (("profile", "http://127.0.0.1:1", "--last", "1_0"), "whole number"),
        (("profile", "http://127.0.0.1:1", "--last", " 5"), "whole number"),
        (("leaks", "http://127.0.0.1:1", "--seconds", "1", "--top", "+5"), "whole number"),
        (("leaks", "http://127.0.0.1:1", "--seconds", "1", "--frames", "²"), "whole number"),
        (("memory", "http://127.0.0.1:1", "--watch", "--count", "\u0661"), "whole number"),
        # Seconds and minutes are ASCII decimals: float() would take these.
        (("stats", "http://127.0.0.1:1", "--timeout", "inf"), "a number such as"),
        (("profile", "http://127.0.0.1:1", "--seconds", "nan"), "a number such as"),
        (("soak", "http://127.0.0.1:1", "--minutes", "1e3"), "a number such as"),
        (("leaks", "http://127.0.0.1:1", "--seconds", "\uff11"), "a number such as"),
        # Past this a timer overflows time_t: a traceback, before.
        (("stats", "http://127.0.0.1:1", "--timeout", "9" * 18), "at most"),
        (("merge", "a.prof"), "-o/--output"),
        (("no-such-command",), "invalid choice"),
    ],
)
def test_usage_errors_are_one_line(cli: Run, args: tuple[str, ...], fragment: str) -> None:
    code, out, err = cli(*args)
    assert (code, out) == (2, "")
    assert_one_line_error(err, fragment)


def test_help_and_version(cli: Run) -> None:
    code, out, _ = cli("--help")
    assert code == 0
    for name in ("stats", "profile", "fetch", "view", "check", "diff", "flamegraph", "merge"):
        assert name in out
    code, out, _ = cli("--version")
    assert code == 0 and out.startswith("asgi-perf ")
