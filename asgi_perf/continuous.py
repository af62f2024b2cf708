"""Continuous profiling: the sampler always on, the recent past kept in slices.

A ring of ``SLICE_S``-second slices covers the last ``minutes``; ``last(N)``
adds up the slices that overlap the last N seconds, so the profile of a
spike that already happened is there at once, without having asked for it
in advance.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from asgi_perf.capture import Capture, Stack
from asgi_perf.engines.sampler_impl import Sampler, StackCounts, sink_capture

SLICE_S = 10.0
# Distinct stacks one slice keeps: a ring holds many slices.
_SLICE_STACKS = 5_000


@dataclass
class _Slice:
    start: float  # the clock's time (time.time)
    end: float
    counts: StackCounts


class Ring:
    """The sampler's samples of the last ``minutes``, in bounded slices."""

    def __init__(
        self, sampler: Sampler, minutes: int, clock: Callable[[], float] = time.time
    ) -> None:
        self._sampler = sampler
        self._clock = clock
        self.seconds = minutes * 60
        self._slices: deque[_Slice] = deque(maxlen=max(1, int(self.seconds // SLICE_S)))
        self._current = _Slice(self._clock(), 0.0, StackCounts(_SLICE_STACKS))
        self.running = False

    def start(self) -> None:
        if self.running:
            return
        self.running = True
        self._current = _Slice(self._clock(), 0.0, StackCounts(_SLICE_STACKS))
        self._sampler.subscribe(self)
        self._sampler.add_hook(self._rotate)

    def stop(self) -> None:
        self.running = False
        self._sampler.unsubscribe(self)
        self._sampler.remove_hook(self._rotate)

    def add(self, stack: Stack, seconds: float) -> None:
        """A sample (on the sampler's thread)."""
        self._current.counts.add(stack, seconds)

    def _rotate(self, now: float) -> None:
        wall = self._clock()
        current = self._current
        if wall - current.start >= SLICE_S:
            current.end = wall
            self._slices.append(current)
            self._current = _Slice(wall, 0.0, StackCounts(_SLICE_STACKS))

    def last(self, seconds: float) -> Capture:
        """The samples of the slices that overlap the last ``seconds``."""
        now = self._clock()
        since = now - seconds
        current = self._current
        parts = [s for s in list(self._slices) if s.end > since]
        merged = StackCounts(max_stacks=1 << 30)
        start = current.start
        for part in [*parts, current]:
            # dict() copies in one C call: the sampler may add meanwhile.
            for stack, t in dict(part.counts.stacks).items():
                merged.stacks[stack] = merged.stacks.get(stack, 0.0) + t
            merged.samples += part.counts.samples
            merged.idle += part.counts.idle
            merged.dropped += part.counts.dropped
            start = min(start, part.start)
        capture = sink_capture(merged, now - start, self._sampler)
        capture.meta.update({"start": start})
        return capture

    def stats(self) -> dict[str, object]:
        covered = self._clock() - (self._slices[0].start if self._slices else self._current.start)
        return {
            "running": self.running,
            "minutes": self.seconds / 60,
            "slice_s": SLICE_S,
            "slices": len(self._slices) + 1,
            "covers_s": round(min(covered, self.seconds + SLICE_S), 1) if self.running else 0.0,
        }
