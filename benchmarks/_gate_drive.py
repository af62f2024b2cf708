"""``python benchmarks/_gate_drive.py VARIANT N PATH``: ``benchmarks._drive``, repeatable.

The bench gate counts instructions with this instead of ``-m benchmarks._drive``,
which depends on the wall clock in two ways; under callgrind on a shared
machine a run lasts 15 to 40 s, so the same code gave 23 206 and 24 675
added instructions per request in two runs:

- asgi_perf's recent window is cut into time slices, and how many slices a
  run opens and folds depends on how long it took. Here the clocks are
  virtual: each read advances a fixed step, so every run reads the same times.
- asgi_perf's watcher thread (RSS readings, the loop's health) wakes ten
  times a second of real time, and each wake-up costs the requests' thread
  a GIL hand-over. Here that thread is started idle: it blocks for good and
  never asks for the GIL. Its work is not per request; the requests' own
  path is what the gate counts.

The ``benchmarks`` package, ``asgi_perf`` and the app come from the tree
in ``PYTHONPATH`` (the working directory); only this file is the gate's.
"""

from __future__ import annotations

import runpy
import sys
import threading
import time

STEP_NS = 1_000
# A fixed start, so that even the digits of a timestamp are the same in every run.
_START_NS = 1_000_000_000_000
_WALL_START_NS = 1_750_000_000 * 10**9
_ticks = [_START_NS]


def _perf_counter_ns() -> int:
    _ticks[0] += STEP_NS
    return _ticks[0]


def _perf_counter() -> float:
    return _perf_counter_ns() / 1e9


def _time_ns() -> int:
    return _WALL_START_NS + _perf_counter_ns() - _START_NS


def _time() -> float:
    return _time_ns() / 1e9


_thread_start = threading.Thread.start


def _idle() -> None:
    threading.Event().wait()


def _start_watchers_idle(self: threading.Thread) -> None:
    if self.name.startswith("asgi_perf-"):
        self._target = _idle  # type: ignore[attr-defined]
    _thread_start(self)


def install() -> None:
    """Replaces the clocks before anything binds them (asgi_perf binds them at import)."""
    time.perf_counter_ns = _perf_counter_ns
    time.perf_counter = _perf_counter
    time.monotonic_ns = _perf_counter_ns
    time.monotonic = _perf_counter
    time.time_ns = _time_ns
    time.time = _time
    threading.Thread.start = _start_watchers_idle  # type: ignore[method-assign]


def main() -> None:
    # The script's own directory comes first in sys.path; the tree's
    # benchmarks package must be found through PYTHONPATH instead.
    del sys.path[0]
    install()
    sys.argv = ["benchmarks._drive", *sys.argv[1:]]
    runpy.run_module("benchmarks._drive", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
