"""``make demo`` end to end: examples/demo.py with real uvicorn and Locust (issue #12).

The budget table used to be printed twice, by the Locust plugin's report and
again by the demo. It is printed once; the demo still ends by itself, and the
unindexed search is the route that breaks its budget. Since issue #14 the
orders' N+1 breaks one too, and the demo prints it with its line.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
_TABLE_HEADER = re.compile(r"^route\s+metric\s+limit\s+measured\s+verdict\s*$", re.MULTILINE)
_SAVED = re.compile(r"saved \d+ files in (perf-results/[^/\s]+)/")
_N_PLUS_ONE = re.compile(r"^N\+1: GET /api/orders runs one statement \d+ times per request", re.M)


def _per_order_line() -> int:
    """The line of examples/shop/app.py that runs one query per order."""
    source = (ROOT / "examples" / "shop" / "app.py").read_text().splitlines()
    return next(i for i, text in enumerate(source, 1) if "conn.execute(LINES_OF_ORDER" in text)


def test_the_demo_prints_the_budget_table_once_and_ends_by_itself() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASGI_PERF_")}
    env["SHOP_LOAD_SCALE"] = "0.5"  # about 15 s of load
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "examples/demo.py"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = done.stdout + done.stderr
    saved = _SAVED.search(done.stdout)
    if saved:
        shutil.rmtree(ROOT / saved[1], ignore_errors=True)
    assert done.returncode == 0, output
    assert len(_TABLE_HEADER.findall(output)) == 1, output
    assert "each one is in the Locust plugin's report above" in done.stdout
    assert "  FAIL GET /products/search: p50_ms " in done.stdout
    assert "breaks its budget on purpose" in done.stdout
    # Issue #14: the orders' N+1 breaks max_queries, and /_perf/db names its line.
    assert "  FAIL GET /api/orders: max_queries " in done.stdout
    assert _N_PLUS_ONE.search(done.stdout), done.stdout
    assert f"  called at examples/shop/app.py:{_per_order_line()}\n" in done.stdout
    assert "The demo itself succeeded (exit 0)." in done.stdout
