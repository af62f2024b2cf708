"""ProfileStore: captures kept in memory, bounded, and optionally on disk.

Which profiles stay is ``retention``'s decision, made when one is added; the
render cache keeps what was rendered from them. One lock, the store's, guards
both, so a profile and its renders always go together.

With ``profile_dir`` each retained profile is also written there (``disk``),
outside the lock: a file write must not hold up adds and look-ups.
"""

from __future__ import annotations

import builtins
import dataclasses
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeGuard

from asgi_perf.capture import Capture, ProfileMeta
from asgi_perf.errors import ConfigError
from asgi_perf.storage.disk import ProfileDir, capture_json
from asgi_perf.storage.render_cache import RenderCache
from asgi_perf.storage.retention import REQUEST, Entry, Retention

__all__ = ["ID_RE", "ProfileStore", "is_profile_id"]

# \Z, never $: $ also matches before a trailing newline, and "<id>\n" is not
# an id. Anchored at the end so that ID_RE.match is exact too.
ID_RE = re.compile(r"[0-9a-f]{16}\Z")
MiB = 1 << 20

ErrorHook = Callable[[str, BaseException], None]


def is_profile_id(value: object) -> TypeGuard[str]:
    """Whether ``value`` is a profile id: exactly 16 lower-case hex digits."""
    return isinstance(value, str) and ID_RE.fullmatch(value) is not None


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
        self.profile_dir = None if profile_dir is None else Path(profile_dir)
        self._files = (
            None if self.profile_dir is None else ProfileDir(self.profile_dir, self._disk_error)
        )
        self._on_error = on_error
        self._clock = clock
        # One lock for the index, the render cache and disk_errors; neither
        # the index nor the cache locks anything itself.
        self._lock = threading.Lock()
        self._index = Retention(
            max_profiles=max_profiles,
            max_bytes=max_bytes,
            keep_slowest=keep_slowest,
            keep_last=keep_last,
        )
        self._renders = RenderCache(max_rendered_bytes)
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
            taken = isinstance(wanted, str) and wanted in self._index.entries
        profile_id = wanted if is_profile_id(wanted) and not taken else None
        meta: ProfileMeta = {
            **capture.meta,
            "id": profile_id or secrets.token_hex(8),
            "created": self._clock(),
        }
        meta["kind"] = meta.get("kind") or REQUEST
        duration_ms = meta.get("duration_ms")
        meta["duration_ms"] = (
            capture.duration_s * 1e3 if duration_ms is None else float(duration_ms)
        )
        # A copy: the caller's capture may be added again or still in use.
        stored = dataclasses.replace(capture, meta=meta)
        # ASCII-only JSON, so its length in characters is its size in bytes.
        meta["size_bytes"] = len(capture_json(stored))
        entry = Entry(stored, keep)
        with self._lock:
            removed = self._index.insert(entry)
            for e in removed:
                self._renders.drop(e.id)
            kept = self._index.entries.get(entry.id) is entry
        self._delete_files(removed)
        if not kept:
            return None
        if self._files is not None:
            self._write(entry, self._files)
        return entry.id

    # --------------------------------------------------------------------- disk

    def _write(self, entry: Entry, files: ProfileDir) -> None:
        paths = files.write(entry.capture)
        if paths is None:
            return
        with self._lock:
            alive = self._index.entries.get(entry.id) is entry
            if alive:
                entry.paths = paths
        if not alive:
            # Evicted by another thread while its files were being written.
            files.delete(paths)

    def _delete_files(self, entries: Iterable[Entry]) -> None:
        if self._files is not None:
            for e in entries:
                if e.paths is not None:
                    self._files.delete(e.paths)

    def _disk_error(self, exc: OSError) -> None:
        with self._lock:
            self.disk_errors += 1
        if self._on_error is not None:
            self._on_error("profile_dir", exc)

    # ------------------------------------------------------------------ reading

    def has(self, profile_id: str) -> bool:
        with self._lock:
            return profile_id in self._index.entries

    def get(self, profile_id: str) -> Capture:
        """The capture (shared: treat it as read-only). KeyError if unknown."""
        return self._entry(profile_id).capture

    def meta(self, profile_id: str) -> ProfileMeta:
        """A copy of the profile's metadata."""
        return self._entry(profile_id).capture.meta.copy()

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
    ) -> builtins.list[ProfileMeta]:
        """Metadata of the matching profiles, newest first, at most ``limit``."""
        with self._lock:
            return self._index.list(route=route, kind=kind, tag=tag, limit=limit)

    def latest(self, route: str | None = None) -> str | None:
        """The newest profile's id (of ``route``, if given)."""
        with self._lock:
            return self._index.latest(route)

    def slowest(self, route: str | None = None) -> str | None:
        """The slowest request profile's id, or the slowest of any kind if none."""
        with self._lock:
            return self._index.slowest(route)

    def ids_for_route(self, route: str) -> builtins.list[str]:
        """Ids of every profile of ``route``, newest first."""
        with self._lock:
            return self._index.ids_for_route(route)

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
            if self._index.entries.get(profile_id) is entry:
                self._renders.put(profile_id, fmt, data)
        return data

    # The bounds and counters, read where they are kept.

    @property
    def max_profiles(self) -> int:
        return self._index.max_profiles

    @property
    def max_bytes(self) -> int:
        return self._index.max_bytes

    @property
    def keep_slowest(self) -> int:
        return self._index.keep_slowest

    @property
    def keep_last(self) -> int:
        return self._index.keep_last

    @property
    def max_rendered_bytes(self) -> int:
        return self._renders.max_bytes

    @property
    def evicted(self) -> int:
        return self._index.evicted

    @property
    def superseded(self) -> int:
        return self._index.superseded

    def stats(self) -> dict[str, Any]:
        """Counts for the snapshot: what is held, what was dropped and why."""
        with self._lock:
            return {
                "count": len(self._index.entries),
                "bytes": self._index.bytes,
                "max_profiles": self.max_profiles,
                "max_bytes": self.max_bytes,
                "rendered_bytes": self._renders.bytes,
                "evicted": self.evicted,
                "superseded": self.superseded,
                "disk_errors": self.disk_errors,
                "profile_dir": None if self.profile_dir is None else str(self.profile_dir),
            }

    def __len__(self) -> int:
        return len(self._index.entries)

    def __contains__(self, profile_id: object) -> bool:
        return isinstance(profile_id, str) and profile_id in self._index.entries

    def _entry(self, profile_id: str) -> Entry:
        if not is_profile_id(profile_id):
            raise ValueError(f"not a profile id: {profile_id!r}")
        with self._lock:
            return self._index.entries[profile_id]
