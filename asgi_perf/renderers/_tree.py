"""Stacks merged into a call tree (a node is a path prefix), in flat lists.

A busy minute is tens of thousands of stacks and hundreds of thousands of
tree nodes. Nodes live in parallel lists of numbers, not one container
each: the cyclic garbage collector would otherwise walk the growing tree
again and again while it is built, which costs several times the build.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from asgi_perf.capture import FrameId, Stack

_SHIFT = 32  # node keys: parent and frame packed into one int


@dataclass
class CallTree:
    """``frame``, ``parent`` and ``seconds`` (inclusive) are indexed by node."""

    frames: list[FrameId] = field(default_factory=list)
    frame: list[int] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    total: float = 0.0

    def children(self, floor: float) -> dict[int, list[int]]:
        """Nodes of at least ``floor`` seconds under each parent (-1 holds the roots).

        Widest first, ties by frame, so a capture always draws the same way.
        A child is never wider than its parent, so what is kept is a tree.
        """
        seconds, parent, frame, frames = self.seconds, self.parent, self.frame, self.frames
        kids: dict[int, list[int]] = {}
        for n in [n for n, s in enumerate(seconds) if s >= floor]:
            kids.setdefault(parent[n], []).append(n)
        for nodes in kids.values():
            nodes.sort(key=lambda n: (-seconds[n], frames[frame[n]]))
        return kids

    def pruned_stacks(self, floor: float) -> dict[Stack, float]:
        """The stacks again, cut where a path falls under ``floor`` seconds.

        What is cut off counts as time of the last frame kept, as a flame
        graph shows it; the total stays the same.
        """
        kids = self.children(floor)
        out: dict[Stack, float] = {}
        todo: list[tuple[int, Stack]] = [(n, ()) for n in kids.get(-1, ())]
        while todo:
            n, above = todo.pop()
            stack = (*above, self.frames[self.frame[n]])
            below = kids.get(n, ())
            own = self.seconds[n] - sum(self.seconds[c] for c in below)
            # Rounding leaves crumbs where the children took all the time.
            if own > self.total * 1e-12:
                out[stack] = own
            todo.extend((c, stack) for c in below)
        return out


def merge(stacks: Mapping[Stack, float]) -> CallTree:
    """One tree of every stack with positive time."""
    tree = CallTree()
    ids: dict[FrameId, int] = {}
    node: dict[int, int] = {}
    frames, frame, parent, seconds = tree.frames, tree.frame, tree.parent, tree.seconds
    total = 0.0
    for stack, t in stacks.items():
        if t <= 0 or not stack:
            continue
        total += t
        p = -1
        for f in stack:
            i = ids.get(f)
            if i is None:
                i = ids[f] = len(frames)
                frames.append(f)
            key = ((p + 1) << _SHIFT) | i
            n = node.get(key)
            if n is None:
                n = node[key] = len(frame)
                frame.append(i)
                parent.append(p)
                seconds.append(t)
            else:
                seconds[n] += t
            p = n
    tree.total = total
    return tree
