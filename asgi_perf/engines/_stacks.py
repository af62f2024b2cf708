"""Helpers shared by engines: trimming stacks to the part that is the app's."""

from __future__ import annotations

from collections.abc import Mapping

from asgi_perf.capture import FrameId, Stack

# Frames of asgi_perf's own request wrapper: everything above them (the
# server, the event loop) is the same for every request and is cut off.
_OWN_FILE_SUFFIXES = ("asgi_perf/middleware.py", "asgi_perf/profiling.py")


def trim_to_app(stack: Stack) -> Stack:
    """The part of ``stack`` below asgi_perf's outermost frames (all if none).

    Only the first run of own frames is cut: the app calling back into
    asgi_perf (its ``send`` wrapper) stays visible where it happens.
    """
    return stack[app_start(stack) :]


def app_start(stack: Stack) -> int:
    """Where ``trim_to_app`` cuts ``stack``: the index of its first app frame."""
    start = next((i for i, f in enumerate(stack) if is_own_frame(f)), -1)
    if start < 0:
        return 0
    end = start
    while end < len(stack) and is_own_frame(stack[end]):
        end += 1
    return end


def is_own_frame(frame: FrameId) -> bool:
    return frame.file.endswith(_OWN_FILE_SUFFIXES)


def trim_all(stacks: Mapping[Stack, float]) -> dict[Stack, float]:
    """``trim_to_app`` on every stack, adding up the ones that become equal."""
    out: dict[Stack, float] = {}
    for stack, seconds in stacks.items():
        cut = trim_to_app(stack)
        if cut:
            out[cut] = out.get(cut, 0.0) + seconds
    return out
