"""The renderer contract: one object per output format.

A renderer turns a :class:`~asgi_perf.capture.Capture` into the bytes of one
file format and says how to serve them. HTTP code builds its headers from
these attributes alone, so adding a format never touches an endpoint.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from asgi_perf.capture import Capture


@runtime_checkable
class Renderer(Protocol):
    """One output format."""

    #: The name used in URLs and ``--format`` (``"svg"``, ``"speedscope.json"``).
    format: str
    #: Appended to a file name, dot included (``".svg"``).
    file_extension: str
    #: The ``Content-Type`` to serve the bytes with.
    media_type: str

    def render(self, capture: Capture) -> bytes:
        """The file's bytes; raises :class:`NotRenderable` if this capture cannot be shown."""
        ...


class UnknownFormat(ValueError):
    """No renderer has this format name; the message lists those that exist."""


class NotRenderable(ValueError):
    """This format cannot be made from this capture (the message says why)."""
