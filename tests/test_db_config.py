"""The database options (issue #14): defaults, environment, errors that name them."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.applications import Starlette

from asgi_perf import ConfigError, PerfConfig, PerfMiddleware
from asgi_perf.middleware import _WithDB


def test_defaults_are_off_with_the_issues_numbers() -> None:
    cfg = PerfConfig()
    assert (cfg.db, cfg.n_plus_one_threshold, cfg.slow_query_ms, cfg.max_slow_queries) == (
        False,
        10,
        100.0,
        200,
    )


def test_the_environment_sets_every_database_option() -> None:
    cfg = PerfConfig.from_options(
        env={
            "ASGI_PERF_DB": "1",
            "ASGI_PERF_N_PLUS_ONE_THRESHOLD": "3",
            "ASGI_PERF_SLOW_QUERY_MS": "2.5",
            "ASGI_PERF_MAX_SLOW_QUERIES": "7",
        }
    )
    assert (cfg.db, cfg.n_plus_one_threshold, cfg.slow_query_ms, cfg.max_slow_queries) == (
        True,
        3,
        2.5,
        7,
    )


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("db", "yes"),
        ("n_plus_one_threshold", 1),
        ("n_plus_one_threshold", 2.5),
        ("slow_query_ms", -1),
        ("slow_query_ms", True),
        ("max_slow_queries", 0),
    ],
)
def test_a_bad_value_names_its_option(option: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"^{option}: "):
        PerfConfig(**{option: value})


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("ASGI_PERF_DB", "maybe"),
        ("ASGI_PERF_N_PLUS_ONE_THRESHOLD", "1"),
        ("ASGI_PERF_SLOW_QUERY_MS", "fast"),
        ("ASGI_PERF_MAX_SLOW_QUERIES", "-3"),
    ],
)
def test_a_bad_environment_value_names_its_variable(var: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{var}="):
        PerfConfig.from_options(env={var: raw})


def test_db_off_keeps_the_plain_middleware_and_no_core_db(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ASGI_PERF_DB", raising=False)
    off = PerfMiddleware(Starlette(), memory_interval_s=0, loop_monitor=False)
    assert type(off) is PerfMiddleware
    assert off.core.db is None
    on = PerfMiddleware(Starlette(), db=True, memory_interval_s=0, loop_monitor=False)
    assert type(on) is _WithDB
    assert on.core.db is not None
    assert on.core.db.threshold == 10


def test_disabled_wins_over_db(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ASGI_PERF_ENABLED", raising=False)
    app = PerfMiddleware(Starlette(), db=True, enabled=False)
    assert app.core.db is None
    assert not isinstance(app, _WithDB)
