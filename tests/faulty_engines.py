"""Real engines with one injected fault each, for the fault-injection tests.

Each is a subclass of a real engine: its profiler really starts (cProfile's
hook really is installed), and then the fault strikes where a real bug
would. ``install(monkeypatch)`` adds them to asgi_perf's engine table, the
way ``?engine=`` and ``window_engine`` find engines.
"""

from __future__ import annotations

from typing import Any

import pytest

from asgi_perf.capture import Capture, FrameId
from asgi_perf.engines import ENGINES
from asgi_perf.engines.cprofile_impl import CProfileEngine


class InjectedFault(RuntimeError):
    """The failure an engine below raises on purpose."""


class _Faulty:
    """A real recording whose ``stop`` (and maybe ``abort``) fails."""

    def __init__(self, recording: Any, *, abort_fails: bool) -> None:
        self._recording = recording
        self._abort_fails = abort_fails

    def stop(self) -> Capture:
        # The profiler's hook stays installed: the bug being injected.
        raise InjectedFault("injected: the engine failed while stopping")

    def abort(self) -> None:
        if self._abort_fails:
            raise InjectedFault("injected: the engine failed while aborting too")
        self._recording.abort()


class StopFails(CProfileEngine):
    """cProfile whose recordings fail to stop; aborting them works."""

    name = "stop_fails"
    abort_fails = False

    def start_request(self) -> Any:
        recording = super().start_request()
        return None if recording is None else _Faulty(recording, abort_fails=self.abort_fails)

    def start_window(self, interval_s: float) -> Any:
        recording = super().start_window(interval_s)
        return None if recording is None else _Faulty(recording, abort_fails=self.abort_fails)


class StopAndAbortFail(StopFails):
    """cProfile that can be neither stopped nor aborted: only unhooking is left."""

    name = "stop_and_abort_fail"
    abort_fails = True


class StartFails(CProfileEngine):
    """cProfile that fails before its profiler starts."""

    name = "start_fails"

    def start_request(self) -> Any:
        raise InjectedFault("injected: the engine failed to start")

    def start_window(self, interval_s: float) -> Any:
        raise InjectedFault("injected: the engine failed to start")


class RenderFails(CProfileEngine):
    """cProfile whose captures fail when a format is rendered from them."""

    name = "render_fails"

    def start_window(self, interval_s: float) -> Any:
        recording = super().start_window(interval_s)
        return None if recording is None else _BadStacks(recording)

    def start_request(self) -> Any:
        recording = super().start_request()
        return None if recording is None else _BadStacks(recording)


class _BadStacks:
    def __init__(self, recording: Any) -> None:
        self._recording = recording

    def stop(self) -> Capture:
        capture: Capture = self._recording.stop()
        # Stored like any profile (it is valid JSON), but no format can be
        # made of it: a frame's line is not a number.
        capture.stacks = {(FrameId("broken", "broken.py", "not-a-line"),): 1.0}  # type: ignore[arg-type]
        capture.pstats = None
        return capture

    def abort(self) -> None:
        self._recording.abort()


FAULTY = (StopFails, StopAndAbortFail, StartFails, RenderFails)


def install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the faulty engines choosable by name, for this test only."""
    for engine in FAULTY:
        monkeypatch.setitem(ENGINES, engine.name, f"{__name__}:{engine.__name__}")
