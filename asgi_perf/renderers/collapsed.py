"""Folded stacks for flamegraph.pl, inferno and speedscope's importer."""

from __future__ import annotations

from asgi_perf.capture import Capture, FrameId
from asgi_perf.renderers._frames import label

# ';' separates frames and the line ends at the count; neither may hide in a name.
_UNSAFE = str.maketrans({";": ",", "\n": " ", "\r": " "})


class CollapsedRenderer:
    """``root;child;leaf 1234`` per stack, root first, weight in whole microseconds.

    Integer counts are what the tools expect; microseconds keep a 1 ms
    sample at 1000 so nothing rounds away. Stacks that fold to the same line
    are added up, and lines that round to zero are left out.
    """

    format = "collapsed"
    file_extension = ".collapsed"
    media_type = "text/plain; charset=utf-8"

    def render(self, capture: Capture) -> bytes:
        labels: dict[FrameId, str] = {}
        folded: dict[str, float] = {}
        for stack, seconds in capture.stacks.items():
            if not stack:
                continue
            parts = []
            for frame in stack:
                text = labels.get(frame)
                if text is None:
                    text = labels[frame] = label(frame).translate(_UNSAFE)
                parts.append(text)
            line = ";".join(parts)
            folded[line] = folded.get(line, 0.0) + seconds
        out = []
        for line, seconds in folded.items():
            micros = round(seconds * 1_000_000)
            if micros > 0:
                out.append(f"{line} {micros}\n")
        return "".join(out).encode("utf-8", "replace")
