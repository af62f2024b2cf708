"""``make demo`` end to end: examples/demo.py with real uvicorn and Locust (issue #12).

The budget table used to be printed twice, by the Locust plugin's report and
again by the demo. It is printed once; the demo still ends by itself, and the
unindexed search is the route that breaks its budget.
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
    assert "The demo itself succeeded (exit 0)." in done.stdout
