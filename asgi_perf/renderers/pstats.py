"""``.prof``: the file ``pstats.Stats(path)``, snakeviz and gprof2dot read."""

from __future__ import annotations

import marshal

from asgi_perf.capture import Capture, PstatsDict
from asgi_perf.renderers.base import NotRenderable


class PstatsRenderer:
    """``marshal.dumps`` of the stats dict: that is all a ``.prof`` file is.

    The engine's own call statistics when it has them (cProfile, yappi);
    otherwise derived from the stacks.
    """

    format = "prof"
    file_extension = ".prof"
    media_type = "application/octet-stream"

    def render(self, capture: Capture) -> bytes:
        stats = capture.call_stats()
        if not stats:
            # pstats.Stats refuses an empty file, so there is nothing to open.
            raise NotRenderable(
                "this profile recorded no calls (shorter than one sampling interval?)"
            )
        return marshal.dumps(_plain(stats))


def _plain(stats: PstatsDict) -> PstatsDict:
    """The same data in exact builtin types.

    marshal refuses tuple subclasses (named tuples) and anything not a
    builtin, and an engine's numbers may come as either.
    """
    return {
        (str(f), int(line), str(name)): (
            int(cc),
            int(nc),
            float(tt),
            float(ct),
            {
                (str(cf), int(cl), str(cn)): (int(a), int(b), float(x), float(y))
                for (cf, cl, cn), (a, b, x, y) in callers.items()
            },
        )
        for (f, line, name), (cc, nc, tt, ct, callers) in stats.items()
    }
