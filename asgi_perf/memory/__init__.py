"""Memory: per-request RSS and tracemalloc reads, the process timeline, leaks.

``rss`` is what the hot path reads; ``routes`` decides which requests of a
route are measured; ``timeline`` is the soak view and ``trend`` its slope;
``tracing`` is tracemalloc on demand.
"""

from asgi_perf.memory.rss import (
    RSSHistory,
    process_memory,
    read_rss,
    traced_growth,
    traced_start,
)

__all__ = ["RSSHistory", "process_memory", "read_rss", "traced_growth", "traced_start"]
