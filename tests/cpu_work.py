"""CPU work that only one endpoint of the profiling tests does.

Each function burns ``CHUNK_S`` of CPU per call; endpoints call it
``CHUNKS`` times and yield to the event loop in between, so concurrent
requests interleave and a profile shows whose work it holds by name.
"""

from __future__ import annotations

import time

CHUNKS = 5
CHUNK_S = 0.004


def alpha_work() -> int:
    """CPU work that only ``GET /alpha`` does."""
    total = 0
    deadline = time.perf_counter() + CHUNK_S
    while time.perf_counter() < deadline:
        for i in range(300):
            total += i * i
    return total


def beta_work() -> int:
    """CPU work that only ``GET /beta`` does."""
    total = 0
    deadline = time.perf_counter() + CHUNK_S
    while time.perf_counter() < deadline:
        for i in range(300):
            total ^= i * 7
    return total


def sync_work() -> int:
    """CPU work that only the ``def`` endpoint ``GET /sync`` does (in the threadpool)."""
    total = 0
    deadline = time.perf_counter() + CHUNK_S
    while time.perf_counter() < deadline:
        for i in range(300):
            total -= i
    return total
