"""Which profiles stay in memory: the index, its bounds, and look-ups in it.

Retention is decided when a profile is added, never by a later clean-up: per
route the K slowest and the last M request profiles stay (plus those the
caller pins), and the global bounds (count, bytes) evict oldest first while
sparing each route's slowest for as long as anything else can go.
"""

from __future__ import annotations

import builtins
import heapq
from itertools import islice
from pathlib import Path
from typing import Final

from asgi_perf.capture import Capture, ProfileMeta

REQUEST: Final = "request"


class Entry:
    """One stored profile, with what retention decides on read out of its meta."""

    __slots__ = ("capture", "duration_ms", "id", "kind", "paths", "pinned", "route")

    def __init__(self, capture: Capture, pinned: bool) -> None:
        meta = capture.meta
        self.capture = capture
        self.id: str = meta["id"]
        self.kind: str = meta["kind"]
        self.route: str | None = meta.get("route")
        self.duration_ms: float = meta["duration_ms"]
        self.pinned = pinned
        # Its (.prof, .json) files, once written.
        self.paths: tuple[Path, Path] | None = None

    @property
    def size(self) -> int:
        return int(self.capture.meta["size_bytes"])


def _duration(entry: Entry) -> float:
    return entry.duration_ms


class Retention:
    """Profiles by id, bounded in count and bytes, oldest first.

    Not thread-safe: the owning store holds its one lock around every call.
    """

    def __init__(
        self, *, max_profiles: int, max_bytes: int, keep_slowest: int, keep_last: int
    ) -> None:
        self.max_profiles = max_profiles
        self.max_bytes = max_bytes
        self.keep_slowest = keep_slowest
        self.keep_last = keep_last
        # Insertion order is age: the first entry is the oldest.
        self.entries: dict[str, Entry] = {}
        # Request profiles per route, and which of them are its kept-slowest.
        self._routes: dict[str | None, dict[str, Entry]] = {}
        self._slowest: dict[str | None, set[str]] = {}
        self.bytes = 0
        self.evicted = 0
        self.superseded = 0

    # ------------------------------------------------------------------ writing

    def insert(self, entry: Entry) -> builtins.list[Entry]:
        """Add ``entry`` and apply the bounds; the entries that went.

        ``entry`` itself may be refused (bigger than ``max_bytes``, or not
        among its route's kept), but is never evicted to make room for itself.
        """
        if entry.size > self.max_bytes:
            self.evicted += 1
            return []
        removed: builtins.list[Entry] = []
        self.entries[entry.id] = entry
        self.bytes += entry.size
        if entry.kind == REQUEST:
            self._retain(entry, removed)
        self._bound(entry, removed)
        return removed

    def _retain(self, new: Entry, removed: builtins.list[Entry]) -> None:
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

    def _bound(self, new: Entry, removed: builtins.list[Entry]) -> None:
        """Evict oldest first, sparing kept-slowest until nothing else is left."""
        over_count = len(self.entries) - self.max_profiles
        over_bytes = self.bytes - self.max_bytes
        if over_count <= 0 and over_bytes <= 0:
            return
        victims: builtins.list[Entry] = []
        spared: builtins.list[Entry] = []
        for e in self.entries.values():
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

    def _remove(self, entry: Entry) -> None:
        del self.entries[entry.id]
        self.bytes -= entry.size
        if entry.kind != REQUEST:
            return
        route = entry.route
        entries = self._routes[route]
        del entries[entry.id]
        if not entries:
            del self._routes[route], self._slowest[route]
        elif entry.id in self._slowest[route]:
            self._rank(route)

    # ------------------------------------------------------------------ reading

    def list(
        self, *, route: str | None, kind: str | None, tag: str | None, limit: int
    ) -> builtins.list[ProfileMeta]:
        """Copies of the matching profiles' metadata, newest first, at most ``limit``."""
        out: builtins.list[ProfileMeta] = []
        if limit <= 0:
            return out
        for e in reversed(self.entries.values()):
            meta = e.capture.meta
            if (
                (route is None or e.route == route)
                and (kind is None or e.kind == kind)
                and (tag is None or meta.get("tag") == tag)
            ):
                out.append(meta.copy())
                if len(out) >= limit:
                    break
        return out

    def latest(self, route: str | None) -> str | None:
        """The newest profile's id (of ``route``, if given)."""
        for e in reversed(self.entries.values()):
            if route is None or e.route == route:
                return e.id
        return None

    def slowest(self, route: str | None) -> str | None:
        """The slowest request profile's id, or the slowest of any kind if none."""
        found = [e for e in self.entries.values() if route is None or e.route == route]
        requests = [e for e in found if e.kind == REQUEST] or found
        return max(requests, key=_duration).id if requests else None

    def ids_for_route(self, route: str) -> builtins.list[str]:
        """Ids of every profile of ``route``, newest first."""
        return [e.id for e in reversed(self.entries.values()) if e.route == route]
