"""asyncpg, through its own query logger (``Connection.add_query_logger``).

asyncpg calls the logger after each query with a ``LoggedQuery``: the
query text, its elapsed seconds and the exception, if any. The logger runs
in the task that ran the query, so the request's tally is found as for any
driver. A pool is given an ``init``-like hook: every connection it opens
gets the logger (those it already opened too).
"""

from __future__ import annotations

from typing import Any

from asgi_perf.db.tally import record_ns


class _Seen:
    """Whether any asyncpg connection logs to us: the middleware then lets the
    loop run once before it counts a request (see ``_log``)."""

    asyncpg = False


SEEN = _Seen()


def _log(query: Any) -> None:
    # asyncpg calls loggers with loop.call_soon, in a copy of the query's
    # context: the request's tally is found, one loop turn after the query.
    record_ns(str(query.query), int(query.elapsed * 1e9), query.exception is not None)


async def asyncpg_init(connection: Any) -> None:
    """``asyncpg.create_pool(init=asgi_perf.db.asyncpg_init)``: log each new connection."""
    _add(connection)


def _add(connection: Any) -> None:
    # The pool hands out proxies; the logger belongs on the real connection.
    real = getattr(connection, "_con", None) or connection
    real.add_query_logger(_log)
    SEEN.asyncpg = True


def instrument_asyncpg(pool_or_connection: Any) -> Any:
    """Time every query of an asyncpg connection or pool; returns it.

    For a pool, the connections it has opened get the logger now and those
    it opens later get it on connecting (before the pool's own ``init``).
    """
    if hasattr(pool_or_connection, "add_query_logger"):
        _add(pool_or_connection)
        return pool_or_connection
    pool = pool_or_connection
    for holder in getattr(pool, "_holders", ()):
        con = getattr(holder, "_con", None)
        if con is not None:
            _add(con)
    connect = getattr(pool, "_get_new_connection", None)
    if connect is not None and not getattr(connect, "_asgi_perf", False):

        async def new_connection() -> Any:
            con = await connect()
            _add(con)
            return con

        new_connection._asgi_perf = True  # type: ignore[attr-defined]
        pool._get_new_connection = new_connection
    return pool
