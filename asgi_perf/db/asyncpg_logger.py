"""asyncpg, through its own query logger (``Connection.add_query_logger``).

asyncpg calls the logger after each query with a ``LoggedQuery``: the
query text, its elapsed seconds and the exception, if any. The logger runs
in the task that ran the query, so the request's tally is found as for any
driver. A pool is given an ``init``-like hook: every connection it opens
gets the logger (those it already opened too).
"""

from __future__ import annotations

from typing import Any

from asgi_perf.db.tally import counting_failed, record_ns


class _Seen:
    """Whether any asyncpg connection logs to us: the middleware then lets the
    loop run once before it counts a request (see ``_log``)."""

    asyncpg = False


SEEN = _Seen()


def _log(query: Any) -> None:
    # asyncpg calls loggers with loop.call_soon, in a copy of the query's
    # context: the request's tally is found, one loop turn after the query,
    # but the stack is the loop's, not the app's: no call site.
    try:
        text = str(query.query)
        if _is_pool_reset(text):
            return
        record_ns(text, int(query.elapsed * 1e9), query.exception is not None, locate=False)
    except Exception as exc:  # a bug of ours: counted, never asyncpg's problem
        counting_failed(exc)


# What asyncpg's pool runs on a connection given back to it
# (Connection.get_reset_query): the pool's work, not the app's query.
_RESET_PARTS = frozenset(
    {"SELECT pg_advisory_unlock_all();", "CLOSE ALL;", "UNLISTEN *;", "RESET ALL;"}
)


def _is_pool_reset(text: str) -> bool:
    if not text.startswith(("SELECT pg_advisory_unlock_all", "CLOSE ALL", "UNLISTEN", "RESET ALL")):
        return False
    statements = {" ".join(part.split()) + ";" for part in text.split(";") if part.strip()}
    return statements <= _RESET_PARTS


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
    # The pool opens connections with its ``_connect`` callable (a slot,
    # writable): wrapped, every connection it opens logs from its first query.
    connect = getattr(pool, "_connect", None)
    if connect is not None and not getattr(connect, "_asgi_perf", False):

        async def connect_logged(*args: Any, **kwargs: Any) -> Any:
            con = await connect(*args, **kwargs)
            _add(con)
            return con

        connect_logged._asgi_perf = True  # type: ignore[attr-defined]
        pool._connect = connect_logged
    return pool
