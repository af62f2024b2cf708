"""Rendered formats of stored profiles, kept per profile id and format.

Rendering a big capture (an SVG flame graph, an HTML page) takes far longer
than serving it again, so each result is kept until its profile goes or the
cache's byte bound pushes it out, least recently used first.
"""

from __future__ import annotations

from collections import OrderedDict


class RenderCache:
    """Bytes per ``(profile id, format)``, at most ``max_bytes`` in all.

    Not thread-safe: the owning store holds its lock around every call, so
    that a profile's renders go in the same step as the profile itself.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        # Order is recency of use: the first item goes first.
        self._data: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._formats: dict[str, set[str]] = {}

    def get(self, profile_id: str, fmt: str) -> bytes | None:
        """The cached render, now the most recently used; None if absent."""
        key = (profile_id, fmt)
        data = self._data.get(key)
        if data is not None:
            self._data.move_to_end(key)
        return data

    def put(self, profile_id: str, fmt: str, data: bytes) -> None:
        """Keep ``data`` unless it is already there or alone exceeds the bound."""
        key = (profile_id, fmt)
        if key in self._data or len(data) > self.max_bytes:
            return
        self._data[key] = data
        self.bytes += len(data)
        self._formats.setdefault(profile_id, set()).add(fmt)
        while self.bytes > self.max_bytes:
            (old_id, old_fmt), old = self._data.popitem(last=False)
            self.bytes -= len(old)
            formats = self._formats[old_id]
            formats.discard(old_fmt)
            if not formats:
                del self._formats[old_id]

    def drop(self, profile_id: str) -> None:
        """Forget every render of a profile that is no longer stored."""
        for fmt in self._formats.pop(profile_id, ()):
            self.bytes -= len(self._data.pop((profile_id, fmt)))
