"""asgi_perf: per-route latency, memory, budgets and profiles for ASGI apps."""

from asgi_perf._version import __version__
from asgi_perf.config import PerfConfig
from asgi_perf.errors import ConfigError
from asgi_perf.middleware import PerfMiddleware

__all__ = ["ConfigError", "PerfConfig", "PerfMiddleware", "__version__"]
