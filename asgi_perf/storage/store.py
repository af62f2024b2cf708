"""ProfileStore: captures kept in memory, bounded, and optionally on disk.

Retention is decided when a profile is added, never by a later clean-up: per
route the K slowest and the last M request profiles stay (plus those the
caller pins), and the global bounds (count, bytes) evict oldest first while
sparing each route's slowest for as long as anything else can go.

With ``profile_dir`` each retained profile is also written there, atomically,
as a ``.prof`` (pstats, for snakeviz and gprof2dot) and a ``.json`` beside it
(the capture, which every other format is rendered from).
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import heapq
import json
import marshal
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from itertools import islice
from pathlib import Path
from typing import Any

from asgi_perf.capture import Capture
from asgi_perf.errors import ConfigError
from asgi_perf.storage.render_cache import RenderCache

__all__ = ["ID_RE", "ProfileStore", "route_slug"]

ID_RE = re.compile(r"^[0-9a-f]{16}$")
MiB = 1 << 20
REQUEST = "request"
_SLUG_RE = re.compile(r"[^a-z0-9]+")
_METHOD_RE = re.compile(r"[^A-Z0-9]+")
_SLUG_MAX = 60

ErrorHook = Callable[[str, BaseException], None]


class _Entry:
    __slots__ = ("capture", "duration_ms", "id", "kind", "paths", "pinned", "route")

    def __init__(self, capture: Capture, pinned: bool) -> None:
        meta = capture.meta
        self.capture = capture
        self.id: str = meta["id"]
        self.kind: str = meta["kind"]
        self.route: str | None = meta.get("route")
        self.duration_ms: float = meta["duration_ms"]
        self.pinned = pinned
        self.paths: tuple[Path, Path] | None = None

    @property
    def size(self) -> int:
        return int(self.capture.meta["size_bytes"])


def _duration(entry: _Entry) -> float:
    return entry.duration_ms


class ProfileStore:
    """Profiles by id, bounded in count and bytes; thread-safe.

    Files already in ``profile_dir`` when the store starts are not loaded: a
    store serves, and deletes on eviction, only the files it wrote itself.
    """

    def __init__(
        self,
        *,
        max_profiles: int = 200,
        max_bytes: int = 64 * MiB,
        profile_dir: str | os.PathLike[str] | None = None,
        keep_slowest: int = 5,
        keep_last: int = 5,
        max_rendered_bytes: int = 16 * MiB,
        on_error: ErrorHook | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        for name, value, low in (
            ("max_profiles", max_profiles, 1),
            ("max_bytes", max_bytes, 1),
            ("keep_slowest", keep_slowest, 0),
            ("keep_last", keep_last, 0),
            ("max_rendered_bytes", max_rendered_bytes, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        self.max_profiles = max_profiles
        self.max_bytes = max_bytes
        self.keep_slowest = keep_slowest
        self.keep_last = keep_last
        self.profile_dir = None if profile_dir is None else Path(profile_dir)
        self._on_error = on_error
        self._clock = clock
        self._lock = threading.Lock()
        # Insertion order is age: the first entry is the oldest.
        self._entries: dict[str, _Entry] = {}
        # Request profiles per route, and which of them are its kept-slowest.
        self._routes: dict[str | None, dict[str, _Entry]] = {}
        self._slowest: dict[str | None, set[str]] = {}
        self._bytes = 0
        # Guarded by the same lock: a profile's renders go when it goes.
        self._renders = RenderCache(max_rendered_bytes)
        self.evicted = 0
        self.superseded = 0
        self.disk_errors = 0

    # ------------------------------------------------------------------ writing

    def add(self, capture: Capture, *, keep: bool = False) -> str | None:
        """Store ``capture``; its id, or None when retention did not keep it.

        ``keep=True`` (over budget, 5xx) exempts a request profile from the
        per-route choice, not from the global bounds. The profile just added
        is never the one evicted to make room for itself.
        """
        # A caller may choose the id beforehand (a response header names it
        # before the profile ends); anything else gets a fresh random one.
        wanted = capture.meta.get("id")
        with self._lock:
            taken = isinstance(wanted, str) and wanted in self._entries
        profile_id = (
            wanted if isinstance(wanted, str) and ID_RE.match(wanted) and not taken else None
        )
        meta = {**capture.meta, "id": profile_id or secrets.token_hex(8), "created": self._clock()}
        meta["kind"] = meta.get("kind") or REQUEST
        duration_ms = meta.get("duration_ms")
        meta["duration_ms"] = (
            capture.duration_s * 1e3 if duration_ms is None else float(duration_ms)
        )
        # A copy: the caller's capture may be added again or still in use.
        stored = dataclasses.replace(capture, meta=meta)
        # ASCII-only JSON, so its length in characters is its size in bytes.
        meta["size_bytes"] = len(_dumps(stored))
        entry = _Entry(stored, keep)
        with self._lock:
            removed = self._insert(entry)
            kept = self._entries.get(entry.id) is entry
        self._delete_files(removed)
        if not kept:
            return None
        if self.profile_dir is not None:
            self._write(entry, self.profile_dir)
        return entry.id

    def _insert(self, entry: _Entry) -> list[_Entry]:
        if entry.size > self.max_bytes:
            self.evicted += 1
            return []
        removed: list[_Entry] = []
        self._entries[entry.id] = entry
        self._bytes += entry.size
        if entry.kind == REQUEST:
            self._retain(entry, removed)
        self._bound(entry, removed)
        return removed

    def _retain(self, new: _Entry, removed: list[_Entry]) -> None:
        """Keep the route's pinned, K slowest and M latest; drop the rest."""
        route = new.route
        entries = self._routes.setdefault(route, {})
        entries[new.id] = new
        slowest = self._rank(route)
        recent = set(islice(reversed(entries), self.keep_last))
        for e in [e for e in entries.values() if not e.pinned]:
            if e.id not in slowest and e.id not in recent:
                self._remove(e)
                removed.append(e)
                self.superseded += 1

    def _rank(self, route: str | None) -> set[str]:
        entries = self._routes[route].values()
        top = {e.id for e in heapq.nlargest(self.keep_slowest, entries, key=_duration)}
        self._slowest[route] = top
        return top

    def _bound(self, new: _Entry, removed: list[_Entry]) -> None:
        """Evict oldest first, sparing kept-slowest until nothing else is left."""
        over_count = len(self._entries) - self.max_profiles
        over_bytes = self._bytes - self.max_bytes
        if over_count <= 0 and over_bytes <= 0:
            return
        victims: list[_Entry] = []
        spared: list[_Entry] = []
        for e in self._entries.values():
            if over_count <= 0 and over_bytes <= 0:
                break
            if e is new:
                continue
            if e.kind == REQUEST and e.id in self._slowest.get(e.route, ()):
                spared.append(e)
                continue
            victims.append(e)
            over_count -= 1
            over_bytes -= e.size
        # The bounds are hard: protected profiles go too, oldest first.
        for e in spared:
            if over_count <= 0 and over_bytes <= 0:
                break
            victims.append(e)
            over_count -= 1
            over_bytes -= e.size
        for e in victims:
            self._remove(e)
        removed.extend(victims)
        self.evicted += len(victims)

    def _remove(self, entry: _Entry) -> None:
        del self._entries[entry.id]
        self._bytes -= entry.size
        self._renders.drop(entry.id)
        if entry.kind != REQUEST:
            return
        route = entry.route
        entries = self._routes[route]
        del entries[entry.id]
        if not entries:
            del self._routes[route], self._slowest[route]
        elif entry.id in self._slowest[route]:
            self._rank(route)

    # --------------------------------------------------------------------- disk

    def _write(self, entry: _Entry, directory: Path) -> None:
        meta = entry.capture.meta
        stem = _stem(meta)
        prof, data = directory / f"{stem}.prof", directory / f"{stem}.json"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            # The .json first: a .prof on disk always has its stacks beside it.
            _atomic_write(data, _dumps(entry.capture).encode())
            try:
                _atomic_write(prof, marshal.dumps(entry.capture.call_stats()))
            except BaseException:
                data.unlink(missing_ok=True)
                raise
        except OSError as exc:
            self._disk_error(exc)
            return
        with self._lock:
            alive = self._entries.get(entry.id) is entry
            if alive:
                entry.paths = (prof, data)
        if not alive:
            # Evicted by another thread while its files were being written.
            self._unlink((prof, data))

    def _delete_files(self, entries: Iterable[_Entry]) -> None:
        for e in entries:
            if e.paths is not None:
                self._unlink(e.paths)

    def _unlink(self, paths: Iterable[Path]) -> None:
        for path in paths:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                self._disk_error(exc)

    def _disk_error(self, exc: OSError) -> None:
        with self._lock:
            self.disk_errors += 1
        if self._on_error is not None:
            self._on_error("profile_dir", exc)

    # ------------------------------------------------------------------ reading

    def get(self, profile_id: str) -> Capture:
        """The capture (shared: treat it as read-only). KeyError if unknown."""
        return self._entry(profile_id).capture

    def meta(self, profile_id: str) -> dict[str, Any]:
        """A copy of the profile's metadata."""
        return dict(self._entry(profile_id).capture.meta)

    def path_of(self, profile_id: str) -> Path | None:
        """The ``.prof`` file, or None when none was written."""
        paths = self._entry(profile_id).paths
        return None if paths is None else paths[0]

    def list(
        self,
        *,
        route: str | None = None,
        kind: str | None = None,
        tag: str | None = None,
        limit: int = 100,
    ) -> builtins.list[dict[str, Any]]:
        """Metadata of the matching profiles, newest first, at most ``limit``."""
        out: builtins.list[dict[str, Any]] = []
        if limit <= 0:
            return out
        with self._lock:
            for e in reversed(self._entries.values()):
                meta = e.capture.meta
                if (
                    (route is None or e.route == route)
                    and (kind is None or e.kind == kind)
                    and (tag is None or meta.get("tag") == tag)
                ):
                    out.append(dict(meta))
                    if len(out) >= limit:
                        break
        return out

    def latest(self, route: str | None = None) -> str | None:
        """The newest profile's id (of ``route``, if given)."""
        with self._lock:
            for e in reversed(self._entries.values()):
                if route is None or e.route == route:
                    return e.id
        return None

    def slowest(self, route: str | None = None) -> str | None:
        """The slowest request profile's id, or the slowest of any kind if none."""
        with self._lock:
            found = [e for e in self._entries.values() if route is None or e.route == route]
        requests = [e for e in found if e.kind == REQUEST] or found
        return max(requests, key=_duration).id if requests else None

    def ids_for_route(self, route: str) -> builtins.list[str]:
        """Ids of every profile of ``route``, newest first."""
        with self._lock:
            return [e.id for e in reversed(self._entries.values()) if e.route == route]

    def rendered(self, profile_id: str, fmt: str, render: Callable[[Capture], bytes]) -> bytes:
        """``render(capture)``, cached per profile and format within ``max_rendered_bytes``."""
        entry = self._entry(profile_id)
        with self._lock:
            cached = self._renders.get(profile_id, fmt)
        if cached is not None:
            return cached
        # Rendering can take a while; adds must not wait for it.
        data = render(entry.capture)
        with self._lock:
            # Not for a profile evicted meanwhile: nothing would drop it.
            if self._entries.get(profile_id) is entry:
                self._renders.put(profile_id, fmt, data)
        return data

    @property
    def max_rendered_bytes(self) -> int:
        """The render cache's bound."""
        return self._renders.max_bytes

    def stats(self) -> dict[str, Any]:
        """Counts for the snapshot: what is held, what was dropped and why."""
        with self._lock:
            return {
                "count": len(self._entries),
                "bytes": self._bytes,
                "max_profiles": self.max_profiles,
                "max_bytes": self.max_bytes,
                "rendered_bytes": self._renders.bytes,
                "evicted": self.evicted,
                "superseded": self.superseded,
                "disk_errors": self.disk_errors,
                "profile_dir": None if self.profile_dir is None else str(self.profile_dir),
            }

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, profile_id: object) -> bool:
        return isinstance(profile_id, str) and profile_id in self._entries

    def _entry(self, profile_id: str) -> _Entry:
        if not isinstance(profile_id, str) or not ID_RE.match(profile_id):
            raise ValueError(f"not a profile id: {profile_id!r}")
        with self._lock:
            return self._entries[profile_id]


def route_slug(route: str, method: str = "") -> str:
    """``"GET /items/{item_id}"`` -> ``"items-item-id"``: safe in a file name."""
    head, sep, rest = route.partition(" ")
    if sep and method and head.upper() == method.upper():
        route = rest
    slug = _SLUG_RE.sub("-", route.lower()).strip("-")[:_SLUG_MAX].rstrip("-")
    return slug or "root"


def _stem(meta: dict[str, Any]) -> str:
    """``{utc}-{METHOD}-{route-slug}-{ms}ms-{id}``."""
    start = meta.get("start")
    stamp = time.strftime(
        "%Y%m%dT%H%M%SZ", time.gmtime(meta["created"] if start is None else start)
    )
    route = meta.get("route")
    if meta["kind"] == REQUEST:
        # From the request line: only letters and digits may reach the file name.
        method = _METHOD_RE.sub("", str(meta.get("method") or "").upper())[:16] or "HTTP"
        slug = route_slug(str(route or ""), method)
    else:
        method = _METHOD_RE.sub("", str(meta["kind"]).upper())[:16] or "PROFILE"
        slug = route_slug(str(route)) if route else "process"
    return f"{stamp}-{method}-{slug}-{round(meta['duration_ms'])}ms-{meta['id']}"


def _dumps(capture: Capture) -> str:
    return json.dumps(capture.to_json(), separators=(",", ":"))


def _atomic_write(path: Path, data: bytes) -> None:
    """Readers see the whole file or none: written aside, then renamed over."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with open(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
