"""``.json``: the capture itself, as the store writes it beside a ``.prof``.

The one lossless format: stacks with their exact weights, the engine's own
call statistics, pyinstrument's session and the metadata all come back with
``Capture.from_json``. ``asgi-perf profile`` over several URLs downloads it
to merge the windows of several hosts; ``asgi-perf merge`` reads it too.
"""

from __future__ import annotations

import json

from asgi_perf.capture import Capture


class CaptureJSONRenderer:
    """``Capture.to_json()``, compact: frames once, stacks as indexes into them."""

    format = "json"
    file_extension = ".json"
    media_type = "application/json"

    def render(self, capture: Capture) -> bytes:
        # ASCII-only like the store's own file: any byte reads back the same.
        return json.dumps(capture.to_json(), separators=(",", ":")).encode("ascii")
