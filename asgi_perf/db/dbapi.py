"""A timed proxy around any DB-API 2 connection (sqlite3, psycopg, pymysql...).

Everything the driver offers passes through unchanged: attributes are read
and set on the real connection or cursor, iteration and ``fetch*`` are the
cursor's own, context managers are the driver's. ``execute``,
``executemany``, ``executescript`` and ``callproc`` are timed and counted
(on the connection too, for drivers that have them there); ``fetchall``
and ``fetchmany`` add their time to the statement they read. A driver error is
counted as a failed query and re-raised as it came.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from asgi_perf.db.tally import counting_failed, record_fetch_ns, record_ns

_ns = time.perf_counter_ns
_OWN = frozenset({"_real", "_sql", "_ns"})


def _text(sql: object) -> str:
    if isinstance(sql, str):
        return sql
    if isinstance(sql, bytes):
        return sql.decode("utf-8", "replace")
    return str(sql)


def _count(sql: object, ns: int, failed: bool) -> None:
    # Counting must never break a query.
    try:
        record_ns(sql if type(sql) is str else _text(sql), ns, failed)
    except Exception as exc:  # a bug of ours, not the app's
        counting_failed(exc)


def _timed(
    call: Callable[..., Any], sql: object, args: tuple[Any, ...], kw: Any
) -> tuple[Any, int]:
    """``call(sql, ...)`` timed and counted: its result and its nanoseconds."""
    t0 = _ns()
    try:
        result = call(sql, *args, **kw)
    except BaseException:
        _count(sql, _ns() - t0, True)
        raise
    ns = _ns() - t0
    try:
        record_ns(sql if type(sql) is str else _text(sql), ns, False)
    except Exception as exc:  # a bug of ours, not the app's
        counting_failed(exc)
    return result, ns


class _Proxy:
    """Attribute reads and writes go to the real object."""

    __slots__ = ("_real",)
    _real: Any

    def __init__(self, real: Any) -> None:
        _set_real(self, real)

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


# The slot's own setter: __setattr__ sends every other name to the real object.
_set_real = _Proxy.__dict__["_real"].__set__


class InstrumentedCursor(_Proxy):
    """A cursor whose executes and bulk fetches are timed; the rest is the driver's."""

    __slots__ = ("_ns", "_sql")

    def __init__(self, real: Any, sql: object = None, ns: int = 0) -> None:
        _set_real(self, real)
        _set_sql(self, sql)
        _set_ns(self, ns)

    def _ran(self, sql: object, outcome: tuple[Any, int]) -> Any:
        result, ns = outcome
        # Remembered for the fetches that follow: their time is the statement's too.
        _set_sql(self, sql)
        _set_ns(self, ns)
        # sqlite3 and psycopg return the cursor itself: hand back the proxy,
        # so chained calls (cur.execute(...).fetchall()) stay instrumented.
        return self if result is self._real else result

    def execute(self, sql: Any, *args: Any, **kw: Any) -> Any:
        # _timed inlined: the path of nearly every query.
        real = self._real
        t0 = _ns()
        try:
            result = real.execute(sql, *args, **kw)
        except BaseException:
            _count(sql, _ns() - t0, True)
            raise
        ns = _ns() - t0
        try:
            record_ns(sql if type(sql) is str else _text(sql), ns, False)
        except Exception as exc:  # a bug of ours, not the app's
            counting_failed(exc)
        _set_sql(self, sql)
        _set_ns(self, ns)
        return self if result is real else result

    def executemany(self, sql: Any, *args: Any, **kw: Any) -> Any:
        return self._ran(sql, _timed(self._real.executemany, sql, args, kw))

    def executescript(self, sql: Any, *args: Any, **kw: Any) -> Any:
        return self._ran(sql, _timed(self._real.executescript, sql, args, kw))

    def callproc(self, name: Any, *args: Any, **kw: Any) -> Any:
        return self._ran(name, _timed(self._real.callproc, name, args, kw))

    def fetchall(self) -> Any:
        t0 = _ns()
        rows = self._real.fetchall()
        self._fetched(_ns() - t0)
        return rows

    def fetchmany(self, *args: Any, **kw: Any) -> Any:
        t0 = _ns()
        rows = self._real.fetchmany(*args, **kw)
        self._fetched(_ns() - t0)
        return rows

    # The members used with every query, spelled out: reaching them through
    # __getattr__ (after a failed lookup) costs ~0.5 µs a time.
    def fetchone(self) -> Any:
        return self._real.fetchone()

    def close(self) -> Any:
        return self._real.close()

    @property
    def description(self) -> Any:
        return self._real.description

    @property
    def rowcount(self) -> Any:
        return self._real.rowcount

    @property
    def lastrowid(self) -> Any:
        return self._real.lastrowid

    def _fetched(self, ns: int) -> None:
        # sqlite3 finds rows as they are fetched: a scan that execute began
        # goes on here. Added to the statement's time, not counted as a query.
        sql = self._sql
        if sql is None:
            return
        whole = self._ns + ns
        _set_ns(self, whole)
        try:
            record_fetch_ns(sql if type(sql) is str else _text(sql), ns, whole)
        except Exception as exc:  # a bug of ours, not the app's
            counting_failed(exc)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._real)

    def __next__(self) -> Any:
        return next(self._real)

    def __enter__(self) -> Any:
        entered = self._real.__enter__()
        return self if entered is self._real else entered

    def __exit__(self, *exc: Any) -> Any:
        return self._real.__exit__(*exc)


_set_sql = InstrumentedCursor.__dict__["_sql"].__set__
_set_ns = InstrumentedCursor.__dict__["_ns"].__set__


class InstrumentedConnection(_Proxy):
    """A connection whose cursors, and own executes, are timed."""

    __slots__ = ()

    def _cursor(self, sql: object, outcome: tuple[Any, int]) -> Any:
        result, ns = outcome
        return InstrumentedCursor(result, sql, ns) if result is not None else result

    def cursor(self, *args: Any, **kw: Any) -> InstrumentedCursor:
        return InstrumentedCursor(self._real.cursor(*args, **kw))

    def execute(self, sql: Any, *args: Any, **kw: Any) -> Any:
        # _timed inlined: sqlite3's conn.execute(...) is the path of most queries.
        t0 = _ns()
        try:
            result = self._real.execute(sql, *args, **kw)
        except BaseException:
            _count(sql, _ns() - t0, True)
            raise
        ns = _ns() - t0
        try:
            record_ns(sql if type(sql) is str else _text(sql), ns, False)
        except Exception as exc:  # a bug of ours, not the app's
            counting_failed(exc)
        return InstrumentedCursor(result, sql, ns) if result is not None else result

    def executemany(self, sql: Any, *args: Any, **kw: Any) -> Any:
        return self._cursor(sql, _timed(self._real.executemany, sql, args, kw))

    def executescript(self, sql: Any, *args: Any, **kw: Any) -> Any:
        return self._cursor(sql, _timed(self._real.executescript, sql, args, kw))

    def commit(self) -> Any:
        return self._real.commit()

    def rollback(self) -> Any:
        return self._real.rollback()

    def close(self) -> Any:
        return self._real.close()

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
