"""Capture's conversions, checked against real cProfile output and pstats itself."""

from __future__ import annotations

import copy
import cProfile
import io
import json
import marshal
import pstats
from pathlib import Path
from typing import Any

import pytest

from asgi_perf.capture import (
    Capture,
    FrameId,
    PstatsDict,
    Stack,
    add_pstats,
    combine,
    pstats_to_stacks,
    stacks_to_pstats,
)


def _f(name: str) -> FrameId:
    return FrameId(name, "app.py", ord(name[0]))


A, B, C, D = (_f(n) for n in "abcd")


def _key(frame: FrameId) -> tuple[str, int, str]:
    return (frame.file, frame.line, frame.function)


# Plain loops: a builtin like sum() is one function for all its callers,
# and splitting its time between them would be inferred, not measured.
def _square_sum(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def _middle(n: int) -> int:
    return _square_sum(n) + _square_sum(n // 2)


def _outer() -> int:
    total = 0
    for _ in range(5):
        total += _middle(20_000)
    return total


def _ping(n: int) -> int:
    return _pong(n) if n else _middle(20_000)


def _pong(n: int) -> int:
    return _ping(n - 1)


def _cprofile(fn: Any, *args: Any) -> PstatsDict:
    prof = cProfile.Profile()
    prof.runcall(fn, *args)
    stats: PstatsDict = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    return stats


def _in_order(names: list[str], *wanted: str) -> bool:
    rest = iter(names)
    return all(w in rest for w in wanted)


def _load(stats: PstatsDict, tmp_path: Path) -> pstats.Stats:
    """What snakeviz does: the marshalled dict read back from a file."""
    path = tmp_path / "out.prof"
    path.write_bytes(marshal.dumps(stats))
    return pstats.Stats(str(path), stream=io.StringIO())


def _flat(stats: PstatsDict) -> dict[Any, Any]:
    """Every number of a stats dict, keyed by where it sits, for approx()."""
    out: dict[Any, Any] = {}
    for func, (cc, nc, tt, ct, callers) in stats.items():
        out.update({(func, i): v for i, v in enumerate((cc, nc, tt, ct))})
        for caller, value in callers.items():
            out.update({(func, caller, i): v for i, v in enumerate(value)})
    return out


# ------------------------------------------------------------ stacks_to_pstats


def test_stacks_to_pstats_counts_self_cumulative_and_callers() -> None:
    stacks: dict[Stack, float] = {(A, B, C): 1.0, (A, B): 0.5, (A, C, B, C): 0.25, (D,): 0.1}
    stats = stacks_to_pstats(stacks)
    a, b, c, d = (_key(f) for f in (A, B, C, D))
    assert stats[a][:4] == (3, 3, 0.0, 1.75)
    assert stats[b][:4] == (3, 3, 0.5, 1.75)
    # c recurses in the third stack: that stack counts once in its cumulative time.
    assert stats[c][:4] == (2, 2, 1.25, 1.25)
    assert stats[d] == (1, 1, 0.1, 0.1, {})
    # Self time goes to the edge from the frame right below the leaf only.
    assert stats[c][4] == {b: (2, 2, 1.25, 1.25), a: (1, 1, 0.0, 0.25)}
    assert stats[b][4] == {a: (2, 2, 0.5, 1.5), c: (1, 1, 0.0, 0.25)}
    assert stats[a][4] == {}
    assert sum(e[2] for e in stats.values()) == pytest.approx(sum(stacks.values()))


def test_stacks_to_pstats_is_what_pstats_and_its_printers_accept(tmp_path: Path) -> None:
    stacks: dict[Stack, float] = {(A, B, C): 1.0, (A, B, A, B): 0.5, (A, D): 0.25}
    loaded = _load(stacks_to_pstats(stacks), tmp_path)
    loaded.sort_stats("cumulative").print_stats()
    loaded.print_callers()
    loaded.print_callees()
    out = loaded.stream.getvalue()  # type: ignore[attr-defined]
    assert "function calls" in out and "app.py:98(b)" in out
    assert loaded.total_tt == pytest.approx(1.75)  # type: ignore[attr-defined]


def test_stacks_and_pstats_round_trip_for_a_call_tree() -> None:
    # Without a function reached along two paths, nothing is inferred.
    stacks: dict[Stack, float] = {(A, B, C): 1.0, (A, B): 0.5, (A, D): 0.25, (A,): 0.125}
    back = pstats_to_stacks(stacks_to_pstats(stacks))
    assert back.keys() == stacks.keys()
    assert back == {k: pytest.approx(v) for k, v in stacks.items()}


# ------------------------------------------------------------ pstats_to_stacks


def test_pstats_to_stacks_from_cprofile_keeps_all_self_time() -> None:
    stats = _cprofile(_outer)
    stacks = pstats_to_stacks(stats)
    assert sum(stacks.values()) == pytest.approx(sum(e[2] for e in stats.values()), rel=1e-6)
    busiest = [f.function for f in max(stacks, key=stacks.__getitem__)]
    # Root first: the caller before what it called.
    assert busiest[0] == "_outer"
    assert _in_order(busiest, "_outer", "_middle", "_square_sum")


def test_pstats_to_stacks_finds_a_root_inside_a_recursion_cycle() -> None:
    # _ping is called by _pong, _pong by _ping: nothing in the stats is
    # uncalled, yet the time is all there and starts at _ping.
    stats = _cprofile(_ping, 6)
    stacks = pstats_to_stacks(stats)
    assert sum(stacks.values()) == pytest.approx(sum(e[2] for e in stats.values()), rel=1e-6)
    busiest = max(stacks, key=stacks.__getitem__)
    assert [f.function for f in busiest[:2]] == ["_ping", "_middle"]


def test_pstats_to_stacks_drops_paths_below_min_share() -> None:
    stats = stacks_to_pstats({(A, B): 1.0, (A, C): 1e-7})
    assert set(pstats_to_stacks(stats, min_share=1e-3)) == {(A, B)}


# --------------------------------------------------------------------- combine


def _capture(fn: Any, *args: Any) -> Capture:
    stats = _cprofile(fn, *args)
    return Capture(
        engine="cprofile",
        stacks=pstats_to_stacks(stats),
        duration_s=0.5,
        pstats=stats,
        exact_stacks=False,
        meta={"route": "/x"},
    )


def test_combine_adds_pstats_exactly_as_pstats_does() -> None:
    one, two = _capture(_outer), _capture(_ping, 3)
    merged = combine([one, two], {"route": "/x"})
    assert one.pstats is not None and two.pstats is not None
    expected = pstats.Stats(_RawStats(one.pstats))  # type: ignore[arg-type]
    expected.add(_RawStats(two.pstats))  # type: ignore[arg-type]
    assert merged.pstats is not None
    assert _flat(merged.pstats) == pytest.approx(_flat(expected.stats))  # type: ignore[attr-defined]
    assert merged.engine == "cprofile" and merged.duration_s == 1.0
    assert merged.meta == {"kind": "merged", "parts": 2, "route": "/x"}
    assert merged.exact_stacks is False
    assert merged.total_s == pytest.approx(one.total_s + two.total_s)


def test_combine_without_pstats_everywhere_derives_them_from_stacks() -> None:
    sampled = Capture(engine="pyinstrument", stacks={(A, B): 1.0}, duration_s=1.0)
    merged = combine([_capture(_outer), sampled])
    assert merged.pstats is None and merged.engine == "mixed"
    assert merged.stacks[(A, B)] == 1.0
    assert _key(B) in merged.call_stats()


def test_add_pstats_leaves_its_sources_alone() -> None:
    one = stacks_to_pstats({(A, B): 1.0})
    two = stacks_to_pstats({(A, B): 2.0})
    before = copy.deepcopy(one)
    into: PstatsDict = {}
    add_pstats(into, one)
    add_pstats(into, two)
    assert into[_key(B)][4][_key(A)] == (2, 2, 3.0, 3.0)
    assert one == before


def test_capture_json_round_trip() -> None:
    original = combine([_capture(_outer), _capture(_ping, 2)], {"route": "/r"})
    again = Capture.from_json(json.loads(json.dumps(original.to_json())))
    assert again == original


class _RawStats:
    """pstats.Stats accepts any object with ``create_stats`` and ``stats``."""

    def __init__(self, stats: PstatsDict) -> None:
        self.stats = stats

    def create_stats(self) -> None:
        return None
