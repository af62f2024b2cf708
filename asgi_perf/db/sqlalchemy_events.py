"""SQLAlchemy, with no user code: listeners on the ``Engine`` class.

Listening on the class covers every engine, those made before and after.
An ``AsyncEngine`` runs its statements through a sync ``Engine`` (in a
greenlet), so the same events time async engines too. Installed once per
interpreter, the first time a core with ``db=True`` is built and SQLAlchemy
is importable; the listeners then send every statement to whichever sink
is current (nothing when none is).
"""

from __future__ import annotations

import importlib.util
import time
from typing import Any

from asgi_perf.db.tally import counting_failed, record_ns

_ns = time.perf_counter_ns
_KEY = "_asgi_perf_t0"
_installed = False


# Each listener runs inside the app's query: a failure of ours is counted,
# never raised into it.


def _before(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
    try:
        if context is not None:
            setattr(context, _KEY, _ns())
    except Exception as exc:
        counting_failed(exc)


def _after(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
    try:
        t0 = getattr(context, _KEY, None)
        if t0 is not None:
            record_ns(statement, _ns() - t0, False)
    except Exception as exc:
        counting_failed(exc)


def _error(exception_context: Any) -> None:
    try:
        context = exception_context.execution_context
        t0 = getattr(context, _KEY, None)
        statement = exception_context.statement
        if t0 is not None and statement is not None:
            record_ns(statement, _ns() - t0, True)
    except Exception as exc:
        counting_failed(exc)


def install() -> bool:
    """Listen on ``sqlalchemy.engine.Engine``; False when SQLAlchemy is not installed."""
    global _installed
    if _installed:
        return True
    if importlib.util.find_spec("sqlalchemy") is None:
        return False
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    event.listen(Engine, "before_cursor_execute", _before)
    event.listen(Engine, "after_cursor_execute", _after)
    event.listen(Engine, "handle_error", _error)
    _installed = True
    return True
