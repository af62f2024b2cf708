"""A timed proxy around any DB-API 2 connection (sqlite3, psycopg, pymysql...).

Everything the driver offers passes through unchanged: attributes are read
and set on the real connection or cursor, iteration and ``fetch*`` are the
cursor's own, context managers are the driver's. Only ``execute``,
``executemany``, ``executescript`` and ``callproc`` are timed (on the
connection too, for drivers that have them there). A driver error is
counted as a failed query and re-raised as it came.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from asgi_perf.db.tally import record_ns

_ns = time.perf_counter_ns
_OWN = frozenset({"_real"})


def _text(sql: object) -> str:
    if isinstance(sql, str):
        return sql
    if isinstance(sql, bytes):
        return sql.decode("utf-8", "replace")
    return str(sql)


def _count(sql: object, ns: int, failed: bool) -> None:
    # Counting must never break a query.
    try:  # noqa: SIM105
        record_ns(_text(sql), ns, failed)
    except Exception:  # pragma: no cover - a bug of ours, not the app's
        pass


def _timed(call: Callable[..., Any], sql: object, args: tuple[Any, ...], kw: Any) -> Any:
    t0 = _ns()
    try:
        result = call(sql, *args, **kw)
    except BaseException:
        _count(sql, _ns() - t0, True)
        raise
    _count(sql, _ns() - t0, False)
    return result


class _Proxy:
    """Attribute reads and writes go to the real object."""

    __slots__ = ("_real",)
    _real: Any

    def __init__(self, real: Any) -> None:
        object.__setattr__(self, "_real", real)

    def __getattr__(self, name: str) -> Any:
        if name in _OWN:  # not set yet (copy, pickle): no endless recursion
            raise AttributeError(name)
        return getattr(self._real, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self._real, name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._real, name)

    def __repr__(self) -> str:
        return f"<asgi_perf instrumented {self._real!r}>"


class InstrumentedCursor(_Proxy):
    """A cursor whose executes are timed; the rest is the driver's cursor."""

    __slots__ = ()

    def _same(self, result: Any) -> Any:
        # sqlite3 and psycopg return the cursor itself: hand back the proxy,
        # so chained calls (cur.execute(...).fetchall()) stay instrumented.
        return self if result is self._real else result

    def execute(self, sql: Any, *args: Any, **kw: Any) -> Any:
        return self._same(_timed(self._real.execute, sql, args, kw))

    def executemany(self, sql: Any, *args: Any, **kw: Any) -> Any:
        return self._same(_timed(self._real.executemany, sql, args, kw))

    def executescript(self, sql: Any, *args: Any, **kw: Any) -> Any:
        return self._same(_timed(self._real.executescript, sql, args, kw))

    def callproc(self, name: Any, *args: Any, **kw: Any) -> Any:
        return self._same(_timed(self._real.callproc, name, args, kw))

    def __iter__(self) -> Iterator[Any]:
        return iter(self._real)

    def __next__(self) -> Any:
        return next(self._real)

    def __enter__(self) -> Any:
        return self._same(self._real.__enter__())

    def __exit__(self, *exc: Any) -> Any:
        return self._real.__exit__(*exc)


class InstrumentedConnection(_Proxy):
    """A connection whose cursors, and own executes, are timed."""

    __slots__ = ()

    def _cursor(self, result: Any) -> Any:
        return InstrumentedCursor(result) if result is not None else result

    def cursor(self, *args: Any, **kw: Any) -> InstrumentedCursor:
        return InstrumentedCursor(self._real.cursor(*args, **kw))

    def execute(self, sql: Any, *args: Any, **kw: Any) -> Any:
        return self._cursor(_timed(self._real.execute, sql, args, kw))

    def executemany(self, sql: Any, *args: Any, **kw: Any) -> Any:
        return self._cursor(_timed(self._real.executemany, sql, args, kw))

    def executescript(self, sql: Any, *args: Any, **kw: Any) -> Any:
        return self._cursor(_timed(self._real.executescript, sql, args, kw))

    def __enter__(self) -> Any:
        entered = self._real.__enter__()
        return self if entered is self._real else entered

    def __exit__(self, *exc: Any) -> Any:
        return self._real.__exit__(*exc)


def instrument(connection: Any) -> Any:
    """``connection`` in a timed proxy that behaves like it; idempotent."""
    if isinstance(connection, InstrumentedConnection):
        return connection
    return InstrumentedConnection(connection)
