"""The bounded profile store: retention in memory, files on disk, rendered formats.

Callers use ``ProfileStore``; ``is_profile_id`` (``ID_RE``) says what a profile id is and
``route_slug`` is the one way a route becomes part of a file name.
"""

from __future__ import annotations

from asgi_perf.storage.disk import route_slug
from asgi_perf.storage.store import ID_RE, ProfileStore, is_profile_id

__all__ = ["ID_RE", "ProfileStore", "is_profile_id", "route_slug"]
