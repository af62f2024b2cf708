"""Where in the app's own code a query was issued: ``path:line``.

The innermost frame that is not asgi_perf, the standard library, an
installed package (site-packages: drivers, SQLAlchemy, the framework) nor a
driver's own module. Which code objects are the app's is decided once per
code object and remembered.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from types import CodeType, FrameType

_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SKIP_PREFIXES: tuple[str, ...] = tuple(
    {
        os.path.join(_HERE, ""),
        *(
            os.path.join(os.path.realpath(p), "")
            for name in ("stdlib", "platstdlib", "purelib", "platlib")
            if (p := sysconfig.get_paths().get(name))
        ),
        *(
            os.path.join(p, "")
            for name in ("stdlib", "platstdlib", "purelib", "platlib")
            if (p := sysconfig.get_paths().get(name))
        ),
    }
)
_SKIP_PARTS = (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}")
_MAX_DEPTH = 200
_is_app: dict[CodeType, bool] = {}


def _app_code(code: CodeType) -> bool:
    found = _is_app.get(code)
    if found is None:
        name = code.co_filename
        found = not (
            name.startswith("<")
            or name.startswith(_SKIP_PREFIXES)
            or any(part in name for part in _SKIP_PARTS)
        )
        if len(_is_app) > 65_536:
            _is_app.clear()
        _is_app[code] = found
    return found


def call_site(depth: int = 1) -> str | None:
    """``path:line`` of the innermost app frame above the caller, or None."""
    found = _walk(sys._getframe(depth))
    if found is None and "greenlet" in sys.modules:
        # SQLAlchemy's async engines run the driver in a greenlet whose stack
        # ends at its own start: the app's frames are in the parent's stack,
        # stopped where it switched to the child.
        greenlet = sys.modules["greenlet"]
        parent = greenlet.getcurrent().parent
        while found is None and parent is not None:
            found = _walk(parent.gr_frame)
            parent = parent.parent
    return found


def _walk(frame: FrameType | None) -> str | None:
    for _ in range(_MAX_DEPTH):
        if frame is None:
            return None
        if _app_code(frame.f_code):
            return _where(frame.f_code.co_filename, frame.f_lineno)
        frame = frame.f_back
    return None


def _where(filename: str, line: int) -> str:
    cwd = os.path.join(os.getcwd(), "")
    path = filename[len(cwd) :] if filename.startswith(cwd) else filename
    return f"{path}:{line}"
