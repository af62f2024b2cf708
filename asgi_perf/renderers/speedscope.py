"""speedscope's file format: https://www.speedscope.app/file-format-schema.json."""

from __future__ import annotations

import json
from typing import Any

from asgi_perf._version import __version__
from asgi_perf.capture import Capture, FrameId, indexed

SCHEMA = "https://www.speedscope.app/file-format-schema.json"


class SpeedscopeRenderer:
    """One ``sampled`` profile: each distinct stack is a sample weighted in seconds.

    Frames keep their full file paths, so speedscope can name the source.
    The weights add up to ``capture.total_s``.
    """

    format = "speedscope.json"
    file_extension = ".speedscope.json"
    media_type = "application/json"

    def render(self, capture: Capture) -> bytes:
        frame_ids, stacks = indexed(capture.stacks)
        frames = [_frame(frame) for frame in frame_ids]
        samples = [ids for ids, _ in stacks]
        weights = [seconds for _, seconds in stacks]
        name = _name(capture)
        doc = {
            "$schema": SCHEMA,
            "shared": {"frames": frames},
            "profiles": [
                {
                    "type": "sampled",
                    "name": name,
                    "unit": "seconds",
                    "startValue": 0,
                    "endValue": sum(weights),
                    "samples": samples,
                    "weights": weights,
                }
            ],
            "name": name,
            "activeProfileIndex": 0,
            "exporter": f"asgi_perf {__version__}",
        }
        # Not ASCII-only: names stay readable, and UTF-8 is what JSON is.
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")


def _frame(frame: FrameId) -> dict[str, Any]:
    out: dict[str, Any] = {"name": frame.function or "?"}
    if frame.file:
        out["file"] = frame.file
    if frame.line > 0:
        out["line"] = frame.line
    return out


def _name(capture: Capture) -> str:
    meta = capture.meta
    what = meta.get("route") or meta.get("kind") or "profile"
    return f"{what} ({capture.engine})"
