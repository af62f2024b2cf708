"""PerfRun, the run behind the Locust plugin, driven directly against real uvicorn servers.

Locust itself stays out of this process (importing it patches the process with
gevent): the requests of a run are sent with httpx, carrying the run's tag as
the plugin's users do. ``test_locust_plugin.py`` runs the same through Locust.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import httpx
import pytest
from helpers import closed_port, function_names, load_stats

# The app of the Locust runs: /fast, /fast-client and /burn (20 ms of CPU),
# recording the X-Perf-Tag each request carried.
from test_locust_plugin import BROKEN, shop_app

from asgi_perf.client import PerfClient
from asgi_perf.integrations._perf_run import TAG_HEADER, PerfRun, Settings

ServerFactory = Callable[..., Any]
Seen = set[tuple[str, str | None]]


def new_run(url: str, **settings: Any) -> PerfRun:
    return PerfRun(Settings(**settings), PerfClient(url), url)


def send(url: str, run: PerfRun, paths: Iterable[str]) -> None:
    """The load of a run: every request tagged with the run id."""
    headers = {TAG_HEADER: run.id}
    with httpx.Client(base_url=url, headers=headers, trust_env=False, timeout=30) as client:
        for path in paths:
            client.get(path).raise_for_status()


def plugin_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "asgi_perf.locust"]


def test_a_broken_budget_saves_the_run_and_asks_for_exit_1(
    live_server: ServerFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: Seen = set()
    # Six requests, 60 ms of CPU: the sampler may spend more of a core than
    # its default 1 % (coverage traces its thread) to see them for sure.
    perf = {"budgets": BROKEN, "sampler_hz": 500, "sampler_max_cpu": 0.2}
    server = live_server(shop_app(perf, seen))
    results = tmp_path / "res"
    run = new_run(server.url, results=results, run_id="ci-1")

    assert run.start()
    assert run.window_id is not None
    send(server.url, run, ["/fast", "/burn"] * 3)
    assert run.finish() == 1
    assert seen == {("/fast", "ci-1"), ("/burn", "ci-1")}

    out = results / "ci-1"
    assert sorted(p.name for p in out.iterdir()) == [
        "budgets.json", "routes.json", "stats.json", "window.prof", "window.svg",
    ]  # fmt: skip
    assert "burn_cpu" in function_names(load_stats((out / "window.prof").read_bytes(), tmp_path))
    assert ElementTree.parse(out / "window.svg").getroot().tag.endswith("svg")
    routes = json.loads((out / "routes.json").read_text())
    assert "GET /burn" in {r["route"] for r in routes["routes"]}
    stats = json.loads((out / "stats.json").read_text())
    assert {r["route"]: r["count"] for r in stats["routes"]} == {"GET /fast": 3, "GET /burn": 3}
    verdicts = json.loads((out / "budgets.json").read_text())
    assert verdicts["ok"] is False
    failing = [(v["route"], v["metric"]) for v in verdicts["verdicts"] if v["verdict"] == "fail"]
    assert failing == [("GET /burn", "p99_ms")]

    printed = capsys.readouterr().out
    assert "asgi_perf: run ci-1 on " in printed and "budgets FAILED: 1 fail" in printed
    assert f"snakeviz {out / 'window.prof'}" in printed
    with PerfClient(server.url) as client:
        assert [w["tag"] for w in client.profiles(kind="window")] == ["ci-1"]
        assert {p["tag"] for p in client.profiles(kind="window", tag="ci-1")} == {"ci-1"}

    # Locust fires quitting and test_stop: the second finish collects nothing.
    assert run.finish() is None
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(("set_before", "expected"), [(None, 1), (0, 1), (3, 3)])
def test_the_exit_code_set_before_wins_unless_it_is_unset_or_0(
    live_server: ServerFactory, tmp_path: Path, set_before: int | None, expected: int
) -> None:
    server = live_server(shop_app({"budgets": BROKEN}, set()))
    run = new_run(server.url, results=tmp_path, window=False)

    assert run.start()
    send(server.url, run, ["/burn"])
    assert run.finish(set_before) == expected


def test_a_budgets_file_that_holds_keeps_the_exit_code(
    live_server: ServerFactory, tmp_path: Path
) -> None:
    server = live_server(shop_app({"budgets": BROKEN}, set()))
    budgets = tmp_path / "generous.toml"
    budgets.write_text('min_samples = 1\n["*"]\np99_ms = "5 s"\n')
    run = new_run(server.url, results=tmp_path / "res", budgets=str(budgets), window=False)

    assert run.start()
    send(server.url, run, ["/fast", "/burn"])
    assert run.finish() is None

    out = tmp_path / "res" / run.id
    assert sorted(p.name for p in out.iterdir()) == ["budgets.json", "stats.json"]
    verdicts = json.loads((out / "budgets.json").read_text())
    assert verdicts["ok"] is True and verdicts["source"] == str(budgets)


def test_a_window_longer_than_the_app_allows_is_cut_with_a_warning(
    live_server: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = live_server(shop_app({"max_window_seconds": 10}, set()))
    run = new_run(server.url, results=tmp_path, run_time=60)

    with caplog.at_level(logging.INFO, logger="asgi_perf.locust"):
        assert run.start()
    assert run.window_id is not None
    [warning] = [r for r in plugin_records(caplog) if r.levelno == logging.WARNING]
    assert "covers the first 10 s of the 60 s run" in warning.getMessage()
    assert run.finish() is None


@pytest.mark.parametrize("target", ["unreachable", "without asgi_perf"])
def test_a_target_without_asgi_perf_gets_one_warning_and_no_run(
    live_server: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture, target: str
) -> None:
    if target == "unreachable":
        url, cause = f"http://127.0.0.1:{closed_port()}", "connection refused"
    else:
        url, cause = live_server(shop_app(None, set())).url, "404"
    run = new_run(url, results=tmp_path / "res")

    with caplog.at_level(logging.INFO, logger="asgi_perf.locust"):
        assert run.start() is False
        assert run.finish() is None

    [record] = plugin_records(caplog)
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert message.endswith("the load test runs without it")
    assert url in message and cause in message
    assert not (tmp_path / "res").exists()
