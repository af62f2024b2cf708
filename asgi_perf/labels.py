"""Labels on sampled stacks: which route, thread and request a sample belongs to.

The sampler puts a few pseudo-frames at the root of every stack it records:
the route key, then the request's tag and id when it has them, then the
thread. Every format renders them as ordinary frames (the route becomes the
root of the flame graph, the way py-spy shows thread names), merging adds
them up, and a view of one route is a filter on the first frame.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from asgi_perf.capture import Capture, FrameId, Stack

ROUTE_FILE = "<route>"
TAG_FILE = "<tag>"
REQUEST_FILE = "<request>"
THREAD_FILE = "<thread>"
LABEL_FILES = frozenset((ROUTE_FILE, TAG_FILE, REQUEST_FILE, THREAD_FILE))

# Route labels that are not routes.
IDLE = "<idle>"  # the event loop waiting for I/O
NO_REQUEST = "<no request>"  # the server, the loop, tasks outside any request
OWN = "<asgi_perf>"  # asgi_perf's own endpoints

LOOP_THREAD = FrameId("loop", THREAD_FILE, 0)
WORKER_THREAD = FrameId("worker", THREAD_FILE, 0)
OTHER_THREAD = FrameId("thread", THREAD_FILE, 0)


class NotAttributed(Exception):
    """A route view of a profile whose engine does not attribute samples."""


def route_frame(route: str) -> FrameId:
    return FrameId(route, ROUTE_FILE, 0)


def tag_frame(tag: str) -> FrameId:
    return FrameId(f"tag {tag}", TAG_FILE, 0)


def request_frame(profile_id: str) -> FrameId:
    return FrameId(f"request {profile_id}", REQUEST_FILE, 0)


def is_label(frame: FrameId) -> bool:
    return frame.line == 0 and frame.file in LABEL_FILES


def route_of(stack: Stack) -> str | None:
    """The route label of a sampled stack; None for an unlabelled one."""
    if stack and stack[0].file == ROUTE_FILE:
        return stack[0].function
    return None


def is_attributed(capture: Capture) -> bool:
    """Whether ``capture`` was taken by an engine that labels its samples."""
    return any(route_of(stack) is not None for stack in capture.stacks)


def view(capture: Capture, *, route: str | None = None, idle: bool = False) -> Capture:
    """``capture`` reduced to one route's samples, idle left out unless asked.

    A profile that carries no labels (one request, or a window of an engine
    that does not attribute) has one route at most: the one in its metadata.
    Raises ``KeyError`` when ``route`` has no samples, ``NotAttributed`` when
    the profile cannot say.
    """
    if not is_attributed(capture):
        if route is None or route == capture.meta.get("route"):
            return capture
        raise NotAttributed(
            f"engine {capture.engine!r} does not attribute samples to routes; "
            "profile a window with engine=sampler for per-route views"
        )
    if route is None and (idle or not any(route_of(s) == IDLE for s in capture.stacks)):
        return capture
    stacks = {
        stack: seconds
        for stack, seconds in capture.stacks.items()
        if (route_of(stack) == route if route is not None else idle or route_of(stack) != IDLE)
    }
    if route is not None and not stacks:
        raise KeyError(route)
    if not stacks:
        # Idle all along: that is the whole story, and shown as such.
        return capture
    meta = dict(capture.meta)
    if route is not None:
        meta["route_filter"] = route
    # Call statistics are rebuilt from the kept stacks.
    return dataclasses.replace(capture, stacks=stacks, pstats=None, meta=meta)  # type: ignore[arg-type]


def route_table(capture: Capture, *, top: int = 10, idle: bool = False) -> list[dict[str, Any]]:
    """Per route: its samples, its share, and the functions it spends most in."""
    by_route: dict[str, dict[Stack, float]] = {}
    for stack, seconds in capture.stacks.items():
        route = route_of(stack) or str(capture.meta.get("route") or NO_REQUEST)
        if route == IDLE and not idle:
            continue
        frames = tuple(f for f in stack if not is_label(f))
        into = by_route.setdefault(route, {})
        into[frames] = into.get(frames, 0.0) + seconds
    total = sum(sum(s.values()) for s in by_route.values()) or 1.0
    interval = _interval(capture)
    rows: list[tuple[float, dict[str, Any]]] = []
    for route, stacks in by_route.items():
        seconds = sum(stacks.values())
        rows.append(
            (
                seconds,
                {
                    "route": route,
                    "samples": max(1, round(seconds / interval)) if interval else 0,
                    "seconds": round(seconds, 6),
                    "share": round(seconds / total, 4),
                    "top": _top_functions(stacks, seconds, top),
                },
            )
        )
    rows.sort(key=lambda r: r[0], reverse=True)
    return [row for _, row in rows]


def _interval(capture: Capture) -> float:
    interval = capture.meta.get("interval_s")
    return float(interval) if isinstance(interval, (int, float)) and interval > 0 else 0.0


def _top_functions(stacks: dict[Stack, float], total: float, top: int) -> list[dict[str, Any]]:
    own: dict[FrameId, float] = {}
    cumulative: dict[FrameId, float] = {}
    for stack, seconds in stacks.items():
        if not stack:
            continue
        own[stack[-1]] = own.get(stack[-1], 0.0) + seconds
        for frame in set(stack):
            cumulative[frame] = cumulative.get(frame, 0.0) + seconds
    total = total or 1.0
    ranked = sorted(cumulative, key=lambda f: (own.get(f, 0.0), cumulative[f]), reverse=True)
    return [
        {
            "function": f.function,
            "file": f.file,
            "line": f.line,
            "self_share": round(own.get(f, 0.0) / total, 4),
            "total_share": round(cumulative[f] / total, 4),
        }
        for f in ranked[:top]
    ]
