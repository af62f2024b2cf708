"""Database queries per route: counts, time, N+1s and slow statements (issue #14).

Turned on with ``db=True`` (or ``ASGI_PERF_DB=1``). Three ways in:
SQLAlchemy is timed on its own (engine events); ``instrument(connection)``
wraps any DB-API 2 connection; ``instrument_asyncpg(pool_or_connection)``
(or ``asyncpg.create_pool(init=asyncpg_init)``) uses asyncpg's query
logger. ``record(statement, seconds)`` counts a query of any other driver.
Statements are kept only as their shape (literals folded to ``?``).
"""

from __future__ import annotations

from asgi_perf.db.asyncpg_logger import asyncpg_init, instrument_asyncpg
from asgi_perf.db.dbapi import instrument
from asgi_perf.db.report import DBMetricRow
from asgi_perf.db.store import DBStats
from asgi_perf.db.tally import NO_REQUEST, record

__all__ = [
    "NO_REQUEST",
    "DBMetricRow",
    "DBStats",
    "asyncpg_init",
    "instrument",
    "instrument_asyncpg",
    "record",
]
