"""The Locust plugin's summary with DB budgets: a real, short, headless run.

Locust runs as a subprocess (imported here it would monkey-patch this
process with gevent) against ``db_shop`` served by uvicorn: ``GET /orders``
runs ``1 + ORDERS`` queries a request and breaks ``max_queries = 5``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import db_shop
import pytest

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 90
ENOUGH = 5  # requests per route; -t is only a cap
LOCUSTFILE = f"""
import asgi_perf.integrations.locust  # noqa: F401
import gevent
from locust import HttpUser, constant, events, task


@events.test_start.add_listener
def stop_when_every_route_had_enough(environment, **_):
    def requests(route):
        entry = environment.runner.stats.entries.get((route, "GET"))
        return 0 if entry is None else entry.num_requests

    def watch():
        while any(requests(r) < {ENOUGH} for r in ("/orders", "/orders/joined")):
            gevent.sleep(0.05)
        environment.runner.quit()

    gevent.spawn(watch)


class Shopper(HttpUser):
    wait_time = constant(0.02)

    @task
    def orders(self):
        self.client.get("/orders")

    @task
    def joined(self):
        self.client.get("/orders/joined")
"""
BUDGETS = {
    "min_samples": 1,
    "GET /orders": {"max_queries": 5},
    "GET /orders/joined": {"max_queries": 5},
}
DB_OFF_NOTE = "no DB numbers: start the app with db=True (or ASGI_PERF_DB=1)"


@pytest.fixture
def shop(live_server: Any) -> Iterator[Callable[..., str]]:
    conns: list[sqlite3.Connection] = []

    def start(**perf: Any) -> str:
        conns.append(db_shop.connect())
        url: str = live_server(db_shop.make_app(conns[-1], **perf)).url
        return url

    yield start
    for conn in conns:
        conn.close()


def run_locust(tmp_path: Path, host: str) -> tuple[int, str, Path]:
    locustfile = tmp_path / "locustfile.py"
    locustfile.write_text(LOCUSTFILE)
    results = tmp_path / "res"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASGI_PERF_", "LOCUST_"))}
    cmd = [
        sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "-u", "2",
        "-r", "2", "-t", "30s", "--host", host, "--perf-results", str(results), "--only-summary",
    ]  # fmt: skip
    # cwd: a locust.conf or pyproject.toml of the checkout must not leak in.
    done = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )
    return done.returncode, done.stdout + done.stderr, results


def summary_row(out: str, route: str, metric: str) -> list[str]:
    for line in out.splitlines():
        cells = line.split()
        if line.startswith(route + " ") and metric in cells:
            return cells[len(route.split()) :]
    raise AssertionError(f"no {route} {metric} row in:\n{out}")


def test_the_summary_shows_a_broken_max_queries(shop: Callable[..., str], tmp_path: Path) -> None:
    code, out, results = run_locust(tmp_path, shop(db=True, budgets=BUDGETS))
    assert code == 1, out  # a broken budget fails the run
    assert "budgets FAILED: 1 fail, 1 pass, 0 insufficient" in out
    assert summary_row(out, "GET /orders", "max_queries") == [
        "max_queries", "5", str(db_shop.ORDERS + 1), "FAIL",
    ]  # fmt: skip
    assert summary_row(out, "GET /orders/joined", "max_queries") == [
        "max_queries", "5", "1", "PASS",
    ]  # fmt: skip
    (run,) = [p for p in results.iterdir() if p.is_dir()]
    stats = json.loads((run / "stats.json").read_text())
    orders = next(r for r in stats["routes"] if r["route"] == "GET /orders")
    assert orders["db"]["queries"]["max"] == db_shop.ORDERS + 1
    assert orders["db"]["n_plus_one"] == orders["count"]


def test_the_summary_says_why_with_db_off(shop: Callable[..., str], tmp_path: Path) -> None:
    code, out, _ = run_locust(tmp_path, shop(budgets=BUDGETS))
    assert code == 0, out  # nothing failed: nothing could be judged
    assert "budgets ok: 0 fail, 0 pass, 2 insufficient" in out
    assert summary_row(out, "GET /orders", "max_queries") == [
        "max_queries", "5", "-", "INSUFFICIENT",
    ]  # fmt: skip
    assert f"note: {DB_OFF_NOTE}" in out.splitlines()
