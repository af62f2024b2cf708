"""Capture: what any engine measured, in one engine-neutral shape.

A capture holds full call stacks (root first) with the seconds spent with
each stack on top, plus real call statistics (pstats) when the engine has
them. Every output format is rendered from a capture; merging captures is
adding their stacks and stats. Engines know nothing about HTTP; renderers
know nothing about engines.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypedDict, cast

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing's own from Python 3.11


class FrameId(NamedTuple):
    """One function: what pstats calls (file, line, name)."""

    function: str
    file: str
    line: int


Stack = tuple[FrameId, ...]
# What a stored profile was taken of (``meta["kind"]``).
ProfileKind = Literal["request", "window", "lifespan"]
PROFILE_KINDS: tuple[ProfileKind, ...] = ("request", "window", "lifespan")
# pstats' own layout: func -> (primitive calls, calls, self s, cumulative s, callers),
# callers: func -> (calls, primitive calls, self s, cumulative s) -- cProfile puts the
# two counts the other way round there, and pstats reads them so.
PstatsKey = tuple[str, int, str]
PstatsEntry = tuple[int, int, float, float, dict[PstatsKey, tuple[int, int, float, float]]]
PstatsDict = dict[PstatsKey, PstatsEntry]


class ProfileMeta(TypedDict, total=False):
    """What a capture says about itself (``Capture.meta``); every key is optional.

    Whoever makes a capture fills what it knows, ``ProfileStore.add`` adds the
    rest, and the store serves it as the profile's JSON description.
    """

    # Of a profile taken in the app (the request or window profiler).
    id: str  # 16 hex digits
    # merged: combine(); file: read by the CLI; loop_blocks: the loop's block stacks
    kind: ProfileKind | Literal["merged", "file", "loop_blocks"]
    engine: str
    route: str | None  # route key; "<process>" for a window; None for a merge by ids
    method: str  # the request's, or the window's kind upper-cased
    status: int | None  # None for a window
    duration_ms: float
    start: float  # time.time() when it started
    pid: int
    tag: str | None  # X-Perf-Tag, or the window's tag
    trigger: Literal["header", "sample"]  # why a request was profiled
    # Added by ProfileStore.add.
    created: float
    size_bytes: int  # of the capture's JSON
    # Only in what Windows.stop returns: whether the store kept the profile.
    stored: bool
    # Of a merge (combine): how many captures, and which.
    parts: int
    ids: list[str]
    files: list[str]
    instances: list[str]  # base URLs: `asgi-perf profile URL URL...`
    # From the engine.
    interval_s: float  # a sampling engine's interval (pyinstrument, py-spy)
    samples: int  # a sampling engine's sample count
    native: bool  # py-spy: native (C) frames were sampled too
    workers: list[int]  # pids of the workers a server window added up
    clock: str  # yappi's "wall" or "cpu"
    threads: int  # threads yappi saw in a window
    # The sampler's (and the continuous ring's).
    idle_samples: int  # the loop waiting for I/O: left out of views unless asked
    dropped_stacks: int  # samples past the bound on distinct stacks
    hz: float  # the rate asked for (interval_s is the mean one achieved)
    sampler_cpu_share: float  # the sampler thread's CPU over the window, of one core
    continuous: bool  # cut from the continuous ring (?last=N)
    last_s: float
    route_filter: str  # a view of one route's samples
    stopped_early: str  # why a window ended before its time (yappi's leak budget)


@dataclass
class Capture:
    """One profile: a request, a time window, a whole lifespan, or a merge."""

    engine: str
    stacks: dict[Stack, float]
    duration_s: float
    pstats: PstatsDict | None = None
    # False when the stacks were rebuilt from a call graph (cProfile, yappi):
    # their split between callers is then proportional, not observed.
    exact_stacks: bool = True
    # pyinstrument's own session (Session.to_json()), for its HTML viewer.
    session: dict[str, Any] | None = None
    meta: ProfileMeta = field(default_factory=ProfileMeta)

    @property
    def total_s(self) -> float:
        """Seconds covered by the stacks (samples, or self time of every call)."""
        return sum(self.stacks.values())

    def call_stats(self) -> PstatsDict:
        """pstats data: the engine's own, else derived from the stacks."""
        return self.pstats if self.pstats is not None else stacks_to_pstats(self.stacks)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (what the store writes beside the ``.prof``).

        Frames are listed once and stacks refer to them by index: a stack
        repeats most of its neighbour's frames, so this is several times
        smaller and faster than spelling every frame out.
        """
        frames, stacks = indexed(self.stacks)
        return {
            "schema": 2,
            "engine": self.engine,
            "duration_s": self.duration_s,
            "exact_stacks": self.exact_stacks,
            "meta": self.meta,
            "frames": [list(f) for f in frames],
            "stacks": [[ids, t] for ids, t in stacks],
            "pstats": None if self.pstats is None else _pstats_to_json(self.pstats),
            "session": self.session,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Capture:
        frames = [FrameId(str(f[0]), str(f[1]), int(f[2])) for f in data.get("frames", ())]
        stacks: dict[Stack, float] = {}
        for refs, t in data["stacks"]:
            stack = tuple(
                frames[r] if isinstance(r, int) else FrameId(str(r[0]), str(r[1]), int(r[2]))
                for r in refs
            )
            stacks[stack] = stacks.get(stack, 0.0) + float(t)
        raw = data.get("pstats")
        return cls(
            engine=str(data["engine"]),
            stacks=stacks,
            duration_s=float(data["duration_s"]),
            pstats=None if raw is None else _pstats_from_json(raw),
            exact_stacks=bool(data.get("exact_stacks", True)),
            session=data.get("session"),
            # As to_json wrote it; keys this version does not know are kept.
            meta=cast(ProfileMeta, dict(data.get("meta") or {})),
        )


def combine(captures: Iterable[Capture], meta: ProfileMeta | None = None) -> Capture:
    """One capture adding up several (a route's profiles, a list of ids)."""
    parts = list(captures)
    stacks: dict[Stack, float] = {}
    for c in parts:
        for stack, t in c.stacks.items():
            stacks[stack] = stacks.get(stack, 0.0) + t
    engines = {c.engine for c in parts}
    pstats: PstatsDict | None = None
    if parts and all(c.pstats is not None for c in parts):
        pstats = {}
        for c in parts:
            add_pstats(pstats, c.call_stats())
    return Capture(
        engine=engines.pop() if len(engines) == 1 else "mixed",
        stacks=stacks,
        duration_s=sum(c.duration_s for c in parts),
        pstats=pstats,
        exact_stacks=all(c.exact_stacks for c in parts),
        meta={"kind": "merged", "parts": len(parts), **(meta or {})},
    )


def indexed(stacks: Mapping[Stack, float]) -> tuple[list[FrameId], list[tuple[list[int], float]]]:
    """Each distinct frame once, and every stack as indexes into that list."""
    index: dict[FrameId, int] = {}
    out = []
    for stack, t in stacks.items():
        out.append(([index.setdefault(f, len(index)) for f in stack], t))
    return list(index), out


def pstats_key(frame: FrameId) -> PstatsKey:
    return (frame.file, frame.line, frame.function)


def stacks_to_pstats(stacks: Mapping[Stack, float]) -> PstatsDict:
    """Call statistics from sampled stacks.

    Each stack counts as one call of every function on it; a function's
    cumulative time counts a stack once even when it recurses; caller edges
    come from adjacent frames. Enough for snakeviz and gprof2dot to draw it.
    """
    # Functions become small ints first: a minute of a busy app is ~10^6
    # frames, and hashing an int is much cheaper than hashing a tuple.
    frames, indexed_stacks = indexed(stacks)
    funcs = [pstats_key(frame) for frame in frames]
    self_s = [0.0] * len(funcs)
    cum_s = [0.0] * len(funcs)
    calls = [0] * len(funcs)
    # callee << 32 | caller -> [calls, self s on top of this edge, cumulative s]
    edges: dict[int, list[float]] = {}
    for ids, t in indexed_stacks:
        if not ids:
            continue
        self_s[ids[-1]] += t
        for i in set(ids):
            cum_s[i] += t
            calls[i] += 1
        for pair in {(callee << 32) | caller for caller, callee in pairwise(ids)}:
            edge = edges.get(pair)
            if edge is None:
                edges[pair] = [1, 0.0, t]
            else:
                edge[0] += 1
                edge[2] += t
        if len(ids) > 1:
            # Self time belongs to the one call on top, so only its caller's
            # edge gets it (the leaf can appear higher up when it recurses).
            edges[(ids[-1] << 32) | ids[-2]][1] += t
    callers: list[dict[PstatsKey, tuple[int, int, float, float]]] = [{} for _ in funcs]
    for pair, (n, own, cum) in edges.items():
        callers[pair >> 32][funcs[pair & 0xFFFFFFFF]] = (int(n), int(n), own, cum)
    return {
        key: (calls[i], calls[i], self_s[i], cum_s[i], callers[i]) for i, key in enumerate(funcs)
    }


def add_pstats(into: PstatsDict, other: Mapping[PstatsKey, PstatsEntry]) -> None:
    """Add ``other`` into ``into`` the way ``pstats.Stats.add`` does."""
    for func, (cc, nc, tt, ct, callers) in other.items():
        if func not in into:
            into[func] = (cc, nc, tt, ct, dict(callers))
            continue
        occ, onc, ott, oct_, ocallers = into[func]
        merged = dict(ocallers)
        for caller, value in callers.items():
            old = merged.get(caller)
            merged[caller] = (
                value if old is None else tuple(a + b for a, b in zip(old, value, strict=True))  # type: ignore[assignment]
            )
        into[func] = (occ + cc, onc + nc, ott + tt, oct_ + ct, merged)


def pstats_to_stacks(
    stats: Mapping[PstatsKey, PstatsEntry], max_depth: int = 128, min_share: float = 1e-5
) -> dict[Stack, float]:
    """Full stacks rebuilt from a call graph (cProfile, yappi).

    Walks from the roots (functions nobody called) down the caller edges: a
    path's time flows to a child in proportion to the cumulative time of
    that edge, and each function keeps the self-time share of what reaches
    it. How time splits between callers is inferred, not observed; paths
    below ``min_share`` of the total are dropped to keep the result small.
    A function keeps the time of callees the stats do not list (see
    ``with_unlisted_time_as_own``), so the same stats give the same stacks
    wherever they are read: in the app, or from a ``.prof`` file.
    """
    # Functions still running when the stats were taken (the frame that
    # started the profile) have no time yet: leave them out, so that what
    # they called becomes a root.
    stats = {f: e for f, e in with_unlisted_time_as_own(stats).items() if e[3] > 0 or e[2] > 0}
    children: dict[PstatsKey, list[tuple[PstatsKey, float]]] = {}
    for func, (_, _, _, _, callers) in stats.items():
        for caller, edge in callers.items():
            if caller != func and caller in stats:
                children.setdefault(caller, []).append((func, edge[3]))
    # Roots: nobody in these stats called them (their callers may have been
    # filtered out, like the frame that started a tagged request).
    roots = [f for f, entry in stats.items() if not any(c in stats for c in entry[4] if c != f)]
    # A cycle nobody outside calls (mutual recursion started by the profile
    # itself) has no such root; its outermost member, the one with the most
    # cumulative time, stands in.
    reached = _reachable(roots, children)
    for func in sorted(stats, key=lambda f: stats[f][3], reverse=True):
        if func not in reached:
            roots.append(func)
            reached |= _reachable([func], children)
    total = sum(max(stats[r][3], stats[r][2]) for r in roots) or 1.0
    floor = total * min_share
    stacks: dict[Stack, float] = {}

    def walk(stack: Stack, path: frozenset[PstatsKey], func: PstatsKey, seconds: float) -> None:
        _, _, tt, ct, _ = stats[func]
        ct = max(ct, tt)
        own = seconds * tt / ct
        if own > 0:
            stacks[stack] = stacks.get(stack, 0.0) + own
        if len(stack) >= max_depth:
            return
        for child, edge_ct in children.get(func, ()):
            flow = seconds * min(edge_ct / ct, 1.0)
            # Recursion is already inside this frame's time: an edge back into
            # the path is cut, which also drops what recursion counted twice.
            if flow >= floor and child not in path:
                walk((*stack, _frame_id(child)), path | {child}, child, flow)

    for root in roots:
        walk((_frame_id(root),), frozenset((root,)), root, max(stats[root][3], stats[root][2]))
    return stacks


def with_unlisted_time_as_own(stats: Mapping[PstatsKey, PstatsEntry]) -> PstatsDict:
    """Own time that includes the callees the stats leave out.

    yappi without builtins (and any profiler told to skip C functions)
    drops the time of C calls from the caller's own time, where cProfile
    adds it: a function waiting in ``time.sleep``, on SQLite or hashing
    would show no time of its own and vanish from the flame graph. Own time
    becomes the cumulative time less what the listed callees took, never
    less than what was measured; with every callee listed (cProfile) it is
    what was measured. Waits of idle threads and of the event loop stay
    out, as py-spy leaves idle threads out: with a wall clock, forty idle
    pool threads would otherwise fill the flame graph.
    """
    called: dict[PstatsKey, float] = {}
    for func, (_, _, _, _, callers) in stats.items():
        for caller, edge in callers.items():
            if caller != func:
                called[caller] = called.get(caller, 0.0) + edge[3]
    out: PstatsDict = {}
    for func, (cc, nc, tt, ct, callers) in stats.items():
        if not _is_idle_wait(func):
            tt = min(ct, max(tt, ct - called.get(func, 0.0)))
        out[func] = (cc, nc, tt, ct, callers)
    return out


# Where a thread or the event loop blocks in C while it has nothing to do.
_IDLE_WAITS = (
    ("threading.py", "Condition.wait"),
    ("concurrent/futures/thread.py", "_worker"),
    ("selectors.py", ".select"),
)


def _is_idle_wait(func: PstatsKey) -> bool:
    file, _, name = func
    return any(file.endswith(f) and name.endswith(n) for f, n in _IDLE_WAITS)


def _reachable(
    starts: Iterable[PstatsKey], children: Mapping[PstatsKey, list[tuple[PstatsKey, float]]]
) -> set[PstatsKey]:
    seen = set(starts)
    todo = list(seen)
    while todo:
        for child, _ in children.get(todo.pop(), ()):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def _frame_id(key: PstatsKey) -> FrameId:
    return FrameId(key[2], key[0], key[1])


def _pstats_to_json(stats: PstatsDict) -> list[Any]:
    return [
        [list(func), cc, nc, tt, ct, [[list(c), *v] for c, v in callers.items()]]
        for func, (cc, nc, tt, ct, callers) in stats.items()
    ]


def _pstats_from_json(raw: Iterable[Any]) -> PstatsDict:
    out: PstatsDict = {}
    for func, cc, nc, tt, ct, callers in raw:
        key = (str(func[0]), int(func[1]), str(func[2]))
        out[key] = (
            int(cc),
            int(nc),
            float(tt),
            float(ct),
            {
                (str(c[0]), int(c[1]), str(c[2])): (int(a), int(b), float(x), float(y))
                for c, a, b, x, y in callers
            },
        )
    return out


def replace_meta(capture: Capture, **meta: Unpack[ProfileMeta]) -> Capture:
    """A copy with ``meta`` updated (captures are shared by the store)."""
    return dataclasses.replace(capture, meta={**capture.meta, **meta})
