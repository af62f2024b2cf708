"""The ``/_perf`` app: built from a core and a gate by ``make_perf_app``."""

from asgi_perf.api.app import PerfAPI, make_perf_app
from asgi_perf.api.gate import Gate

__all__ = ["Gate", "PerfAPI", "make_perf_app"]
