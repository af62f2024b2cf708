"""The bounded profile store: retention in memory, files on disk, rendered formats.

Callers use ``ProfileStore``; ``ID_RE`` says what a profile id looks like and
``route_slug`` is the one way a route becomes part of a file name.
"""

from __future__ import annotations

from asgi_perf.storage.disk import route_slug
from asgi_perf.storage.store import ID_RE, ProfileStore

__all__ = ["ID_RE", "ProfileStore", "route_slug"]
