"""sampler: asgi_perf's own sampling engine; no hook in the app's threads.

The thread that reads the stacks is ``Sampler`` (``_sampler_thread``), one
per process, shared by windows, the continuous ring and the loop monitor.
This module is the engine side: a window is a sink of that thread's samples
from start to stop, kept as seconds per labelled stack, bounded.
"""

from __future__ import annotations

import time

from asgi_perf.capture import Capture, FrameId, Stack
from asgi_perf.engines._sampler_thread import (
    REQUEST_SCOPE,
    SWITCH_INTERVAL_S,
    Sampler,
)
from asgi_perf.engines.base import Capabilities
from asgi_perf.labels import IDLE

__all__ = [
    "REQUEST_SCOPE",
    "SWITCH_INTERVAL_S",
    "Sampler",
    "SamplerEngine",
    "SamplerRecording",
    "StackCounts",
    "sink_capture",
]

_MAX_STACKS = 20_000  # distinct stacks one sink keeps; the rest are counted apart


class SamplerEngine:
    """Windows by sampling: what the app does under load, at the load it has."""

    name = "sampler"
    capabilities = Capabilities(async_aware=True, threads=True, clock="wall", exact_stacks=True)

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler

    def start_request(self) -> None:
        """Never: a request is too short for 100 samples a second to say much."""
        return None

    def start_window(self, interval_s: float) -> SamplerRecording:
        # The sampler keeps its own rate (sampler_hz): one thread serves
        # every window and the continuous ring alike.
        return SamplerRecording(self.sampler)


class StackCounts:
    """Seconds per labelled stack, bounded; the sink of a recording or a slice."""

    def __init__(self, max_stacks: int = _MAX_STACKS) -> None:
        self.stacks: dict[Stack, float] = {}
        self.samples = 0
        self.idle = 0
        self.dropped = 0
        self._max = max_stacks

    def add(self, stack: Stack, seconds: float) -> None:
        stacks = self.stacks
        self.samples += 1
        if stack[0].function == IDLE:
            self.idle += 1
        if stack in stacks:
            stacks[stack] += seconds
        elif len(stacks) < self._max:
            stacks[stack] = seconds
        else:
            # Past the bound a sample keeps its labels, not its frames.
            self.dropped += 1
            cut = (*(f for f in stack if f.line == 0), _TRUNCATED)
            stacks[cut] = stacks.get(cut, 0.0) + seconds


_TRUNCATED = FrameId("<more stacks than max_stacks>", "<asgi_perf>", 0)


class SamplerRecording:
    """One window of the sampler: a sink from start to stop."""

    def __init__(self, sampler: Sampler) -> None:
        self._sampler = sampler
        self._sink = StackCounts()
        self._started = time.perf_counter()
        self._cpu0 = sampler.cpu_s
        sampler.subscribe(self._sink)

    def stop(self) -> Capture:
        self._sampler.unsubscribe(self._sink)
        duration = time.perf_counter() - self._started
        capture = sink_capture(self._sink, duration, self._sampler)
        cpu_s = self._sampler.cpu_s - self._cpu0
        capture.meta["sampler_cpu_share"] = round(cpu_s / duration, 5) if duration > 0 else 0.0
        return capture

    def abort(self) -> None:
        self._sampler.unsubscribe(self._sink)


def sink_capture(sink: StackCounts, duration_s: float, sampler: Sampler) -> Capture:
    """A ``Capture`` of what ``sink`` collected over ``duration_s``."""
    total = sum(sink.stacks.values())
    return Capture(
        engine="sampler",
        stacks=dict(sink.stacks),
        duration_s=duration_s,
        meta={
            "samples": sink.samples,
            "idle_samples": sink.idle,
            "dropped_stacks": sink.dropped,
            "interval_s": round(total / sink.samples, 6) if sink.samples else sampler.interval_s,
            "hz": sampler.hz,
        },
    )
