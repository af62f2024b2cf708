"""PerfCore: everything asgi_perf measures and keeps, for one process."""

from asgi_perf.core.perf_core import PerfCore

__all__ = ["PerfCore"]
