"""What every engine offers: start a recording, stop it into a Capture."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from asgi_perf.capture import Capture


@dataclass(frozen=True)
class Capabilities:
    """What an engine can see; shown in metadata and the README's table."""

    async_aware: bool  # keeps concurrent requests on one event loop apart
    threads: bool  # sees threadpool work (sync ``def`` endpoints)
    clock: str  # "wall" or "cpu"
    exact_stacks: bool  # full stacks observed, not rebuilt from a call graph


class Recording(Protocol):
    """One running capture: a request's or a window's."""

    def stop(self) -> Capture: ...

    def abort(self) -> None:
        """Stop and throw away (a failed request, a client that left)."""


class Engine(Protocol):
    name: str
    capabilities: Capabilities

    def start_request(self) -> Recording | None:
        """Start profiling the current request; None when the engine is busy."""

    def start_window(self, interval_s: float) -> Recording | None:
        """Start profiling the whole process; None when the engine is busy."""
