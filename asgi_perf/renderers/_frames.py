"""Frame labels shared by the formats people read: short paths, app or library."""

from __future__ import annotations

import os
import re
import sys
import sysconfig
from functools import lru_cache

from asgi_perf.capture import FrameId

# Matched anywhere in a path, so files profiled on another host (a merged
# capture from a fleet) are recognised too.
_PACKAGES = re.compile(r"[/\\](?:site|dist)-packages[/\\]")
# Up to the last one: what follows is the name the package is imported by.
_UP_TO_PACKAGES = re.compile(r".*[/\\](?:site|dist)-packages[/\\]", re.DOTALL)
_STDLIB = re.compile(r"[/\\]lib[/\\]python\d+(?:\.\d+)?t?[/\\]", re.IGNORECASE)


@lru_cache(maxsize=1)
def _stdlib_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {os.path.join(paths[k], "") for k in ("stdlib", "platstdlib") if k in paths}
    return tuple(sorted(dirs, key=len, reverse=True))


@lru_cache(maxsize=1)
def _import_roots() -> tuple[str, ...]:
    # Read once: sys.path is settled long before anyone asks for a flame graph.
    roots = {os.path.join(os.path.abspath(p or os.curdir), "") for p in sys.path}
    return tuple(sorted((r for r in roots if len(r) > 1), key=len, reverse=True))


@lru_cache(maxsize=16_384)
def short_path(file: str) -> str:
    """``file`` as people import it: ``starlette/routing.py``, ``app/views.py``."""
    found = _UP_TO_PACKAGES.match(file) or _STDLIB.search(file)
    if found is not None:
        return file[found.end() :]
    for root in _import_roots():
        if file.startswith(root):
            return file[len(root) :]
    return file


@lru_cache(maxsize=16_384)
def is_library(file: str) -> bool:
    """True for installed packages, the standard library and builtins (``~``, ``<frozen …>``)."""
    if not file or file.startswith(("<", "~")):
        return True
    return bool(_PACKAGES.search(file) or _STDLIB.search(file) or file.startswith(_stdlib_dirs()))


def location(frame: FrameId) -> str:
    """``file:line``, shortened; ``?`` when the engine knows no file."""
    if not frame.file:
        return "?"
    path = short_path(frame.file)
    return f"{path}:{frame.line}" if frame.line > 0 else path


def label(frame: FrameId) -> str:
    """``function (file:line)``: what a flame graph shows for one frame."""
    return f"{frame.function or '?'} ({location(frame)})"
