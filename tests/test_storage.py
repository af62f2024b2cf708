"""ProfileStore: retention, bounds, files on disk, look-ups.

Real captures built from FrameId stacks, a real directory (tmp_path), a fake
clock; nothing mocked.
"""

from __future__ import annotations

import json
import os
import pstats
import re
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from asgi_perf.capture import Capture, FrameId
from asgi_perf.errors import ConfigError
from asgi_perf.storage import ID_RE, ProfileStore, is_profile_id, route_slug

ROUTE = "GET /items/{item_id}"
START = 1_800_000_000.0
NAME_RE = re.compile(
    r"^(?P<utc>\d{8}T\d{6}Z)-(?P<method>[A-Z0-9]+)-(?P<slug>[a-z0-9-]+)-(?P<ms>\d+)ms-"
    r"(?P<id>[0-9a-f]{16})\.(?P<ext>prof|json)$"
)


class FakeClock:
    def __init__(self) -> None:
        self.now = START + 100

    def __call__(self) -> float:
        return self.now


def capture(
    duration_ms: float = 10.0,
    *,
    route: str | None = ROUTE,
    kind: str = "request",
    method: str | None = "GET",
    tag: str | None = None,
    status: int = 200,
    padding: int = 0,
) -> Capture:
    handler = FrameId("read_item", "/srv/app/main.py", 12)
    stacks = {
        (FrameId("run", "/srv/app/server.py", 3), handler): duration_ms / 2000,
        (FrameId("run", "/srv/app/server.py", 3), handler, FrameId("query", "/srv/db.py", 40)): (
            duration_ms / 2000
        ),
    }
    # Extra distinct frames make a capture bigger, for the byte bound.
    for i in range(padding):
        stacks[(FrameId(f"pad_{i}", "/srv/pad.py", i),)] = 0.001
    meta: dict[str, Any] = {
        "kind": kind,
        "engine": "pyinstrument",
        "method": method if kind == "request" else None,
        "route": route,
        "status": status,
        "duration_ms": duration_ms,
        "start": START,
        "pid": 4242,
        "tag": tag,
    }
    return Capture("pyinstrument", stacks, duration_ms / 1000, meta=meta)


def window(duration_ms: float = 1000.0, kind: str = "window", padding: int = 0) -> Capture:
    return capture(duration_ms, route=None, kind=kind, method=None, padding=padding)


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ------------------------------------------------------------------ ids and metadata


@pytest.mark.parametrize(
    "text",
    ["0123456789abcdef\n", "0123456789abcdef\r", "0123456789abcdef0", "0123456789ABCDEF", ""],
    ids=repr,
)
def test_an_id_is_exactly_16_hex_digits(text: str) -> None:
    store = ProfileStore()
    first = capture()
    first.meta["id"] = "0123456789abcdef"
    assert store.add(first) == "0123456789abcdef"
    assert not is_profile_id(text)
    assert not ID_RE.match(text)
    # Not looked up as an unknown id: refused as no id at all.
    with pytest.raises(ValueError, match="not a profile id"):
        store.meta(text)
    # Nor chosen as the id of a new profile.
    again = capture()
    again.meta["id"] = text
    other = store.add(again)
    assert other is not None and other != text and is_profile_id(other)


def test_add_assigns_a_valid_id_and_fills_metadata() -> None:
    clock = FakeClock()
    store = ProfileStore(clock=clock)
    original = capture(12.5, tag="locust-1")
    pid = store.add(original)
    assert pid is not None
    assert ID_RE.match(pid)
    meta = store.meta(pid)
    assert meta["id"] == pid
    assert meta["created"] == clock.now
    assert meta["size_bytes"] > 0
    assert (meta["route"], meta["tag"], meta["duration_ms"]) == (ROUTE, "locust-1", 12.5)
    assert store.stats()["bytes"] == meta["size_bytes"]
    # The caller's capture is left as it was; the store keeps its own copy.
    assert "id" not in original.meta
    assert store.get(pid).stacks == original.stacks


def test_size_is_the_length_of_the_serialised_capture() -> None:
    store = ProfileStore()
    pid = store.add(capture(padding=50))
    assert pid is not None
    stored = store.get(pid)
    without_size = {k: v for k, v in stored.meta.items() if k != "size_bytes"}
    text = json.dumps({**stored.to_json(), "meta": without_size}, separators=(",", ":"))
    assert store.meta(pid)["size_bytes"] == len(text)


def test_missing_kind_and_duration_are_filled_from_the_capture() -> None:
    store = ProfileStore()
    bare = Capture("cprofile", {(FrameId("f", "m.py", 1),): 0.25}, 0.25, meta={"route": "GET /"})
    pid = store.add(bare)
    assert pid is not None
    assert store.meta(pid)["kind"] == "request"
    assert store.meta(pid)["duration_ms"] == 250.0


@pytest.mark.parametrize("bad", ["", "abc", "0123456789ABCDEF", "../../etc/passwd", "0" * 17])
def test_malformed_ids_are_rejected(bad: str) -> None:
    store = ProfileStore()
    for lookup in (store.get, store.meta, store.path_of):
        with pytest.raises(ValueError):
            lookup(bad)
    with pytest.raises(ValueError):
        store.rendered(bad, "svg", lambda c: b"")
    assert bad not in store


def test_unknown_ids_raise_key_error() -> None:
    store = ProfileStore()
    with pytest.raises(KeyError):
        store.get("0123456789abcdef")
    with pytest.raises(KeyError):
        store.meta("0123456789abcdef")


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_profiles": 0}, "max_profiles"),
        ({"max_bytes": -1}, "max_bytes"),
        ({"keep_slowest": -1}, "keep_slowest"),
        ({"keep_last": 1.5}, "keep_last"),
        ({"max_rendered_bytes": True}, "max_rendered_bytes"),
    ],
)
def test_invalid_options_name_the_option(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        ProfileStore(**kwargs)


# ------------------------------------------------------------------ per-route retention


def test_route_keeps_its_k_slowest_and_last_m() -> None:
    store = ProfileStore(keep_slowest=2, keep_last=2)
    ids = {ms: store.add(capture(ms)) for ms in (50, 10, 40, 5, 20, 30, 1)}
    assert all(ids.values())
    kept = {ids[ms] for ms in (50, 40, 30, 1)}
    assert set(store.ids_for_route(ROUTE)) == kept
    assert store.stats()["superseded"] == 3
    assert store.stats()["evicted"] == 0


def test_routes_are_retained_independently() -> None:
    store = ProfileStore(keep_slowest=1, keep_last=1)
    other = store.add(capture(1, route="GET /other"))
    for ms in range(20, 10, -1):
        store.add(capture(ms))
    assert store.ids_for_route("GET /other") == [other]
    assert len(store.ids_for_route(ROUTE)) == 2


def test_pinned_profiles_survive_the_route_choice() -> None:
    store = ProfileStore(keep_slowest=1, keep_last=1)
    store.add(capture(100))
    failed = store.add(capture(2, status=503), keep=True)
    for _ in range(5):
        store.add(capture(50))
    assert failed in store
    assert len(store.ids_for_route(ROUTE)) == 3


def test_a_profile_neither_slow_nor_recent_enough_is_not_retained() -> None:
    store = ProfileStore(keep_slowest=1, keep_last=0)
    assert store.add(capture(100)) is not None
    assert store.add(capture(5)) is None
    assert store.add(capture(5), keep=True) is not None
    slower = store.add(capture(200))
    assert slower is not None
    assert store.slowest(ROUTE) == slower
    assert len(store) == 2


def test_windows_and_lifespans_are_not_subject_to_route_retention() -> None:
    store = ProfileStore(keep_slowest=0, keep_last=0)
    ids = [store.add(window()) for _ in range(3)] + [store.add(window(kind="lifespan"))]
    assert all(ids)
    assert len(store) == 4


# ------------------------------------------------------------------ global bounds


def test_count_bound_evicts_oldest_first() -> None:
    store = ProfileStore(max_profiles=3)
    ids = [store.add(window()) for _ in range(5)]
    assert [m["id"] for m in store.list()] == ids[:1:-1]
    assert store.stats()["evicted"] == 2


def test_byte_bound_evicts_oldest_first() -> None:
    # A fixed clock: "created" is serialised too, so sizes are then equal.
    probe = ProfileStore(clock=FakeClock())
    size = probe.meta(probe.add(window(padding=40)) or "")["size_bytes"]
    store = ProfileStore(max_bytes=size * 5 // 2, clock=FakeClock())
    ids = [store.add(window(padding=40)) for _ in range(3)]
    assert ids[0] not in store
    assert ids[1] in store
    assert ids[2] in store
    assert store.stats()["bytes"] == 2 * size <= store.max_bytes


def test_a_capture_larger_than_the_byte_bound_is_refused() -> None:
    store = ProfileStore(max_bytes=2000)
    kept = store.add(window())
    assert store.add(window(padding=200)) is None
    assert kept in store
    assert store.stats()["evicted"] == 1


def test_kept_slowest_are_protected_from_eviction() -> None:
    store = ProfileStore(max_profiles=3, keep_slowest=1, keep_last=1)
    slow = store.add(capture(500))
    windows = [store.add(window()) for _ in range(4)]
    assert slow in store
    assert [w in store for w in windows] == [False, False, True, True]


def test_bounds_are_hard_even_when_only_protected_profiles_are_left() -> None:
    store = ProfileStore(max_profiles=2, keep_slowest=1, keep_last=0)
    first, second, third = (store.add(capture(10, route=f"GET /r{i}")) for i in range(3))
    assert first not in store
    assert second in store
    assert third in store
    assert len(store) == 2


def test_the_new_profile_is_not_evicted_to_make_room_for_itself() -> None:
    store = ProfileStore(max_profiles=2, keep_slowest=1, keep_last=0)
    protected = [store.add(capture(10, route=f"GET /r{i}")) for i in range(2)]
    new = store.add(window())
    assert new in store
    assert protected[0] not in store
    assert protected[1] in store


def test_eviction_of_a_kept_slowest_promotes_the_next() -> None:
    store = ProfileStore(max_profiles=2, keep_slowest=1, keep_last=1)
    slow = store.add(capture(90))
    other = store.add(capture(80, route="GET /b"))
    # Only protected profiles were left: the oldest goes, and 50 ms becomes
    # the route's kept-slowest ...
    mid = store.add(capture(50))
    assert slow not in store
    # ... so it is spared next time, and the other route's older one goes.
    store.add(window())
    assert mid in store
    assert other not in store


# ------------------------------------------------------------------ disk


def test_files_are_named_by_time_method_route_duration_and_id(tmp_path: Path) -> None:
    store = ProfileStore(profile_dir=tmp_path / "profiles")
    pid = store.add(capture(12.4))
    wid = store.add(window(2500.0))
    lid = store.add(window(60_000.0, kind="lifespan"))
    names = files(tmp_path / "profiles")
    assert len(names) == 6
    parsed = [m.groupdict() for m in map(NAME_RE.match, names) if m]
    assert len(parsed) == 6
    utc = datetime.fromtimestamp(START, tz=timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    assert {p["utc"] for p in parsed} == {utc}
    by_id = {(p["id"], p["ext"]): (p["method"], p["slug"], p["ms"]) for p in parsed}
    assert by_id[(pid, "prof")] == ("GET", "items-item-id", "12")
    assert by_id[(wid, "json")] == ("WINDOW", "process", "2500")
    assert by_id[(lid, "prof")] == ("LIFESPAN", "process", "60000")


def test_prof_loads_in_pstats_and_json_rebuilds_the_capture(tmp_path: Path) -> None:
    store = ProfileStore(profile_dir=tmp_path)
    pid = store.add(capture(30))
    assert pid is not None
    prof = store.path_of(pid)
    assert prof is not None
    assert prof.parent == tmp_path
    assert prof.suffix == ".prof"
    stats = pstats.Stats(str(prof))
    assert ("/srv/app/main.py", 12, "read_item") in stats.stats  # type: ignore[attr-defined]
    assert abs(stats.total_tt - 0.03) < 1e-9  # type: ignore[attr-defined]
    rebuilt = Capture.from_json(json.loads(prof.with_suffix(".json").read_text()))
    assert rebuilt.stacks == store.get(pid).stacks
    assert rebuilt.meta["id"] == pid


def test_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    store = ProfileStore(profile_dir=tmp_path, max_profiles=5)
    for i in range(12):
        store.add(capture(i, route=f"GET /r{i % 3}"))
    names = files(tmp_path)
    assert names
    assert all(NAME_RE.match(n) for n in names)
    assert len(names) == 2 * len(store)


def test_eviction_and_supersession_delete_files(tmp_path: Path) -> None:
    store = ProfileStore(profile_dir=tmp_path, max_profiles=2, keep_slowest=0, keep_last=1)
    first = store.add(capture(5))
    assert first is not None
    assert store.path_of(first) is not None
    second = store.add(capture(6))
    assert not any(first in n for n in files(tmp_path))
    store.add(window())
    store.add(window())
    assert second not in store
    assert len(files(tmp_path)) == 4
    assert store.stats()["disk_errors"] == 0


def test_files_removed_by_someone_else_are_not_an_error(tmp_path: Path) -> None:
    store = ProfileStore(profile_dir=tmp_path, max_profiles=1)
    store.add(window())
    for path in tmp_path.iterdir():
        path.unlink()
    store.add(window())
    assert store.stats()["disk_errors"] == 0


def test_directory_that_cannot_be_created_is_counted_not_raised(tmp_path: Path) -> None:
    # A path below a regular file fails even for root, unlike a chmod.
    (tmp_path / "afile").write_text("not a directory")
    errors: list[tuple[str, BaseException]] = []
    store = ProfileStore(
        profile_dir=tmp_path / "afile" / "sub", on_error=lambda k, e: errors.append((k, e))
    )
    pid = store.add(capture(7))
    assert pid is not None
    assert store.get(pid).stacks == capture(7).stacks
    assert store.path_of(pid) is None
    assert store.stats()["disk_errors"] == 1
    assert [k for k, _ in errors] == ["profile_dir"]
    assert isinstance(errors[0][1], NotADirectoryError)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes through mode bits"
)
def test_read_only_directory_is_counted_not_raised(tmp_path: Path) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o500)
    errors: list[BaseException] = []
    try:
        store = ProfileStore(profile_dir=directory, on_error=lambda k, e: errors.append(e))
        pid = store.add(capture(7))
        assert pid in store
        assert store.stats()["disk_errors"] == 1
        assert isinstance(errors[0], PermissionError)
        assert files(directory) == []
    finally:
        directory.chmod(0o700)


def test_concurrent_adds_leave_exactly_the_retained_files(tmp_path: Path) -> None:
    store = ProfileStore(profile_dir=tmp_path, max_profiles=20, keep_slowest=2, keep_last=2)

    def worker(n: int) -> None:
        for i in range(40):
            store.add(capture(i % 17, route=f"GET /r{(n + i) % 5}"))
            if i % 10 == 0:
                store.add(window())

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store) <= 20
    names = files(tmp_path)
    assert {NAME_RE.match(n)["id"] for n in names} == {m["id"] for m in store.list(limit=100)}  # type: ignore[index]
    assert len(names) == 2 * len(store)


@pytest.mark.parametrize(
    ("route", "method", "slug"),
    [
        ("GET /items/{item_id}", "GET", "items-item-id"),
        ("POST /Users/{user_id:int}/Orders", "POST", "users-user-id-int-orders"),
        ("GET /", "GET", "root"),
        ("<unmatched>", "GET", "unmatched"),
        ("/api/{mount}", "", "api-mount"),
        ("GET /" + "abc/" * 30, "GET", ("abc-" * 15).rstrip("-")),
    ],
)
def test_route_slug(route: str, method: str, slug: str) -> None:
    assert route_slug(route, method) == slug
    assert len(route_slug(route, method)) <= 60


@pytest.mark.parametrize(
    ("route", "slug"),
    [
        ("GET /items/{item_id}", "get-items-item-id"),
        ("ids", "ids"),
        ("", "profile"),
        ("{}/-", "profile"),
    ],
)
def test_route_slug_without_a_method_keeps_it_and_falls_back(route: str, slug: str) -> None:
    assert route_slug(route, fallback="profile") == slug


def test_odd_methods_cannot_reach_the_file_name(tmp_path: Path) -> None:
    store = ProfileStore(profile_dir=tmp_path)
    pid = store.add(capture(3, method="../G E\\T", route="../G E\\T /../x"))
    assert pid is not None
    prof = store.path_of(pid)
    assert prof is not None
    assert prof.parent == tmp_path
    assert NAME_RE.match(prof.name)


# ------------------------------------------------------------------ look-ups


def test_latest_and_slowest() -> None:
    store = ProfileStore()
    assert store.latest() is None
    assert store.slowest() is None
    long_window = store.add(window(5000))
    assert store.slowest() == long_window
    slow = store.add(capture(80))
    store.add(capture(20, route="GET /b"))
    newest = store.add(capture(30))
    assert store.latest() == newest
    assert store.latest("GET /b") != newest
    assert store.latest("GET /nope") is None
    # Request profiles win over windows, however long the window.
    assert store.slowest() == slow
    assert store.slowest("GET /b") == store.latest("GET /b")
    assert store.slowest("GET /nope") is None


def test_list_filters_and_orders_newest_first() -> None:
    store = ProfileStore()
    a1 = store.add(capture(1, tag="run-1"))
    b1 = store.add(capture(2, route="GET /b", tag="run-1"))
    w1 = store.add(window())
    a2 = store.add(capture(3, tag="run-2"))
    assert [m["id"] for m in store.list()] == [a2, w1, b1, a1]
    assert [m["id"] for m in store.list(route=ROUTE)] == [a2, a1]
    assert [m["id"] for m in store.list(kind="window")] == [w1]
    assert [m["id"] for m in store.list(tag="run-1")] == [b1, a1]
    assert [m["id"] for m in store.list(limit=2)] == [a2, w1]
    assert store.list(limit=0) == []
    assert store.ids_for_route(ROUTE) == [a2, a1]
    # Metadata handed out is a copy.
    store.list()[0]["route"] = "changed"
    assert store.meta(a2 or "")["route"] == ROUTE


def test_stats_report_bounds_and_drops(tmp_path: Path) -> None:
    store = ProfileStore(max_profiles=2, profile_dir=tmp_path)
    for _ in range(3):
        store.add(window())
    stats = store.stats()
    assert stats["count"] == 2
    assert stats["evicted"] == 1
    assert stats["max_profiles"] == 2
    assert stats["max_bytes"] == 64 * 1024 * 1024
    assert stats["profile_dir"] == str(tmp_path)
    assert stats["bytes"] == sum(m["size_bytes"] for m in store.list())
    assert ProfileStore().stats()["profile_dir"] is None


# ------------------------------------------------------------------ rendered formats


def test_rendered_formats_are_cached_per_profile_and_format() -> None:
    store = ProfileStore()
    pid = store.add(capture(4))
    assert pid is not None
    calls: list[str] = []

    def render(fmt: str) -> Any:
        def inner(c: Capture) -> bytes:
            calls.append(fmt)
            return f"{fmt}:{c.meta['id']}".encode()

        return inner

    assert store.rendered(pid, "svg", render("svg")) == f"svg:{pid}".encode()
    assert store.rendered(pid, "svg", render("svg")) == f"svg:{pid}".encode()
    assert store.rendered(pid, "collapsed", render("collapsed")) == f"collapsed:{pid}".encode()
    assert calls == ["svg", "collapsed"]
    assert store.stats()["rendered_bytes"] == len(f"svg:{pid}collapsed:{pid}")


def test_rendered_cache_goes_with_its_profile() -> None:
    store = ProfileStore(max_profiles=1)
    pid = store.add(window())
    assert pid is not None
    store.rendered(pid, "svg", lambda c: b"x" * 100)
    store.add(window())
    assert store.stats()["rendered_bytes"] == 0
    with pytest.raises(KeyError):
        store.rendered(pid, "svg", lambda c: b"")


def test_rendered_cache_is_bounded() -> None:
    store = ProfileStore(max_rendered_bytes=250)
    ids = [store.add(window()) or "" for _ in range(3)]
    calls: list[str] = []

    def render(c: Capture) -> bytes:
        calls.append(c.meta["id"])
        return b"x" * 100

    for pid in ids:
        store.rendered(pid, "svg", render)
    assert store.stats()["rendered_bytes"] == 200
    # The least recently used one was dropped; asking again renders it again.
    store.rendered(ids[0], "svg", render)
    store.rendered(ids[2], "svg", render)
    assert calls == [*ids, ids[0]]
    too_big = ProfileStore(max_rendered_bytes=10)
    tid = too_big.add(window()) or ""
    too_big.rendered(tid, "svg", render)
    assert too_big.stats()["rendered_bytes"] == 0


def test_an_id_chosen_by_the_caller_is_kept_when_valid_and_free() -> None:
    store = ProfileStore()
    chosen = "0123456789abcdef"
    first = capture()
    first.meta["id"] = chosen
    assert store.add(first) == chosen
    # Taken already, or malformed: a fresh random id instead.
    again = capture()
    again.meta["id"] = chosen
    other = store.add(again)
    assert other is not None and other != chosen and ID_RE.match(other)
    bad = capture()
    bad.meta["id"] = "../../etc/passwd"
    assigned = store.add(bad)
    assert assigned is not None and ID_RE.match(assigned)
