"""What a code object is to the sampler, decided once per code object.

A sampled stack is a walk down ``f_back`` from a thread's top frame; each
frame's code says whether the thread waits (for work, for I/O), whether it
is the frame that runs a request, a worker's runner, or a function that
holds an ASGI ``scope``. The answer and the code's ``FrameId`` are kept in
a table keyed by the code's id (ids hash faster than code objects).
"""

from __future__ import annotations

from types import CodeType

from asgi_perf.capture import FrameId, Stack

# A code object's kind and frame, and the code itself (which keeps its id its own).
Code = tuple[int, FrameId, CodeType]

_CACHE_MAX = 65_536
# What a code object is to the sampler; decided once per code object.
# SCOPED: a function taking an ASGI ``scope`` (any middleware, router,
# route): the request of a task the middleware's frame is not in (one that
# Starlette's BaseHTTPMiddleware runs the rest of the app in).
PLAIN, REQUEST, RUNNER, WAIT, LOOP_WAIT, SCOPED = range(6)
# Functions a thread sits in while it waits for work or I/O.
_WAITS = {
    ("threading.py", "wait"),
    ("threading.py", "_wait_for_tstate_lock"),
    ("queue.py", "get"),
    ("socket.py", "accept"),
    ("socketserver.py", "serve_forever"),
}
# Where an event loop's thread waits: the selector (asyncio) or, for a loop
# in C (uvloop), the Python frame that started it.
_LOOP_WAITS = {
    ("selectors.py", "select"),
    ("runners.py", "run"),
    ("base_events.py", "run_until_complete"),
    ("base_events.py", "run_forever"),
}


class CodeTable:
    """Kinds and frames of the code objects seen, bounded."""

    def __init__(self, request_codes: frozenset[CodeType]) -> None:
        self.request_codes = request_codes
        self.known: dict[int, Code] = {}

    def learn(self, code: CodeType) -> Code:
        """What ``code`` is, and its frame; kept (with the code, so its id stays
        its own) in a bounded table keyed by id: ids hash faster than code."""
        if len(self.known) > _CACHE_MAX:
            self.known = {}
        info = (
            self._classify(code),
            FrameId(function_name(code), code.co_filename, code.co_firstlineno),
            code,
        )
        self.known[id(code)] = info
        return info

    def kind(self, code: CodeType) -> int:
        info = self.known.get(id(code)) or self.learn(code)
        return info[0]

    def _classify(self, code: CodeType) -> int:
        if code in self.request_codes:
            return REQUEST
        file = code.co_filename.replace("\\", "/").rsplit("/", 1)[-1]
        name = code.co_name
        if (file, name) in _LOOP_WAITS:
            return LOOP_WAIT
        if (file, name) in _WAITS:
            return WAIT
        if name in ("run", "_worker") and _is_runner_file(code.co_filename):
            return RUNNER
        if "scope" in code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]:
            return SCOPED
        return PLAIN


def function_name(code: CodeType) -> str:
    """``Class.method`` for a method, the plain name for a nested function.

    The qualified name (3.11+) without what comes before ``<locals>``: a
    function defined inside another is known by its own name.
    """
    qualname: str = getattr(code, "co_qualname", code.co_name)
    return qualname.rpartition("<locals>.")[2]


def frames_of(seen: list[Code]) -> Stack:
    """Frames root first, from what a walk saw top first."""
    return tuple([info[1] for info in reversed(seen)])


def _is_runner_file(path: str) -> bool:
    path = path.replace("\\", "/")
    return path.endswith(("anyio/_backends/_asyncio.py", "concurrent/futures/thread.py"))
