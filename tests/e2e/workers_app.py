"""The app served by several workers in test_workers.py (imported by uvicorn and gunicorn)."""

from __future__ import annotations

import os
import time

from fastapi import FastAPI

from asgi_perf import PerfMiddleware

app = FastAPI()


def worker_work() -> int:
    """CPU work every worker does, so a window of each has something to show."""
    total = 0
    deadline = time.perf_counter() + 0.002
    while time.perf_counter() < deadline:
        total += sum(range(200))
    return total


@app.get("/work")
async def work() -> dict[str, int]:
    return {"pid": os.getpid(), "work": worker_work()}


app.add_middleware(PerfMiddleware)
