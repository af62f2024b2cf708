"""The tracemalloc peak of a stretch of code, and where it was allocated.

Used by the pytest plugin's ``limit_memory`` marker and ``memory_budget``
fixture.
"""

from __future__ import annotations

import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from asgi_perf.memory import traced_start
from asgi_perf.units import number_text

TOP_SITES = 5
MB = float(1 << 20)
_POLL_S = 0.005  # the interpreter's default switch interval: finer polling gains nothing
_PLUGIN_FILE = str(Path(__file__).parent.parent / "pytest_plugin.py")
# Allocations by tracemalloc itself (snapshots) and by asgi_perf are not the test's.
_NOT_THE_TESTS = frozenset({tracemalloc.__file__, __file__, _PLUGIN_FILE, "<unknown>"})


def size_text(nbytes: float) -> str:
    """Bytes in MB, or KB below a tenth of a MB, as the budgets write them."""
    value, unit = (nbytes / MB, "MB") if nbytes >= MB / 10 else (nbytes / 1024, "KB")
    return f"{number_text(value)} {unit}"


class MemoryWatch:
    """The tracemalloc peak of a test body, and what was allocated near that peak.

    A snapshot taken after the body is useless: the test's locals are freed
    when it returns. So a daemon thread polls the traced size and the peak,
    and takes a snapshot when the size first passes the limit, then again
    each time it grows by another tenth, but never sooner than three times as
    long as the last snapshot took (a process traced since start-up takes
    seconds). A test under its limit only pays the polling.

    A snapshot's list of traces is not itself traced, so keeping one does not
    move the peak; its statistics are computed after the body.
    """

    def __init__(self, limit_mb: Callable[[], float | None]) -> None:
        # Read on every poll: the memory_budget fixture sets it during the body.
        self._limit_mb = limit_mb
        self._started = not tracemalloc.is_tracing()
        if self._started:
            tracemalloc.start()
        # Only when tracing was on before: allocations older than the body are
        # subtracted. The baseline is read after it, so its own size is not counted.
        self._before = None if self._started else tracemalloc.take_snapshot()
        self._baseline = traced_start()
        self._peak = 0
        self._snapshot: tracemalloc.Snapshot | None = None
        self._snapshot_at = 0
        self._next_snapshot = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="asgi_perf-memory", daemon=True)
        self._thread.start()

    def finish(self) -> int:
        """Stop watching; the peak growth in bytes over the body."""
        self._stop.set()
        self._thread.join()
        self._sample()
        if self._started:
            tracemalloc.stop()
        return self._peak

    def top_sites(self, root: Path, peak: int) -> list[str]:
        """The largest allocation sites near the peak, one line each; sites under
        1 % of the peak (pytest, this plugin's thread) are noise and left out."""
        if self._snapshot is None:
            held = f"{_POLL_S * 1000:g} ms"
            return [f"  (no allocation sites: the memory was held for less than {held})"]
        if self._before is None:
            stats = [(s.traceback[0], s.size, s.count) for s in self._snapshot.statistics("lineno")]
        else:
            diff = self._snapshot.compare_to(self._before, "lineno")
            stats = [(s.traceback[0], s.size_diff, s.count_diff) for s in diff]
        stats.sort(key=lambda s: -s[1])
        sites = [s for s in stats if s[0].filename not in _NOT_THE_TESTS][:TOP_SITES]
        lines = [
            f"  top allocation sites at {size_text(self._snapshot_at)} (tracemalloc, by line):"
        ]
        for frame, size, count in sites:
            if size >= peak / 100:
                where = f"{_relative(frame.filename, root)}:{frame.lineno}"
                lines.append(f"    {where}: {size_text(size)} in {count} block{'s' * (count != 1)}")
        return lines

    def _poll(self) -> None:
        while not self._stop.wait(_POLL_S):
            self._sample()

    def _sample(self) -> None:
        if not tracemalloc.is_tracing():  # the test stopped it: nothing more to see
            return
        current, peak = tracemalloc.get_traced_memory()
        grown = current - self._baseline
        # Both: PerfMiddleware(tracemalloc=True) resets the peak on every request.
        self._peak = max(self._peak, peak - self._baseline, grown)
        limit = self._limit_mb()
        if limit is None or grown <= limit * MB or grown <= self._snapshot_at * 1.1:
            return
        start = time.monotonic()
        if start < self._next_snapshot:
            return
        try:
            self._snapshot = tracemalloc.take_snapshot()
        except RuntimeError:  # tracing stopped between the check and the snapshot
            return
        self._snapshot_at = grown
        self._next_snapshot = start + 3 * (time.monotonic() - start)


def _relative(filename: str, root: Path) -> str:
    try:
        return str(Path(filename).relative_to(root))
    except ValueError:
        return filename
