"""Profiling engines, chosen by name and imported only when chosen."""

from __future__ import annotations

import importlib
from typing import Any

from asgi_perf.engines.base import Engine, Recording
from asgi_perf.errors import ConfigError, EngineUnavailable

ENGINES: dict[str, str] = {
    "pyinstrument": "asgi_perf.engines.pyinstrument_impl:PyinstrumentEngine",
    "yappi": "asgi_perf.engines.yappi_impl:YappiEngine",
    "cprofile": "asgi_perf.engines.cprofile_impl:CProfileEngine",
    "sampler": "asgi_perf.engines.sampler_impl:SamplerEngine",
    "pyspy": "asgi_perf.engines.pyspy_impl:PyspyEngine",
}
# Engines that profile the whole process only (windows, never one request).
WINDOW_ONLY = frozenset({"sampler", "pyspy"})
# The package that provides each engine, for the error message.
# pyspy imports nothing of py-spy (a program): a missing py-spy is found by
# start_window, whose EngineUnavailable names the same command.
_PIP = {
    "pyinstrument": "pyinstrument",
    "yappi": "yappi",
    "cprofile": "",
    "sampler": "",
    "pyspy": "py-spy",
}

__all__ = ["ENGINES", "WINDOW_ONLY", "Engine", "Recording", "check_engine_name", "load_engine"]


def check_engine_name(name: object, option: str = "engine") -> str:
    if not isinstance(name, str) or name not in ENGINES:
        raise ConfigError(f"{option}: {name!r} is not one of {', '.join(sorted(ENGINES))}")
    return name


def load_engine(name: str, **options: Any) -> Engine:
    """The engine called ``name``; ``EngineUnavailable`` names the pip command."""
    module_name, _, class_name = ENGINES[check_engine_name(name)].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EngineUnavailable(
            f"engine {name!r} needs the {_PIP[name]!r} package: pip install {_PIP[name]}"
        ) from exc
    engine: Engine = getattr(module, class_name)(**options)
    return engine
