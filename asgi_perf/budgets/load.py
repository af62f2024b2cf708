"""Budgets from a dict, a TOML file or ``pyproject.toml``."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from asgi_perf.budgets.check import PROCESS, BudgetSet
from asgi_perf.budgets.pattern import Budget, check_min_samples
from asgi_perf.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # tomli is the same parser, before it joined the standard library
    tomllib = importlib.import_module("tomli")


def load_budgets(
    source: Mapping[str, Any] | str | os.PathLike[str] | BudgetSet | None,
    *,
    min_samples: int = 20,
    pyproject: str | os.PathLike[str] | None = "pyproject.toml",
) -> BudgetSet:
    """Budgets from a dict, a TOML file, a ``pyproject.toml``, or (``None``) the
    ``[tool.asgi_perf.budgets]`` table of ``pyproject`` if it has one.

    A top-level ``min_samples`` in the source overrides the ``min_samples``
    argument. A ``BudgetSet`` is returned unchanged.
    """
    if isinstance(source, BudgetSet):
        return source
    if source is None:
        if pyproject is None or not Path(pyproject).is_file():
            return BudgetSet(min_samples=min_samples)
        return _from_pyproject(pyproject, min_samples, required=False)
    if isinstance(source, Mapping):
        return _from_table(source, "budgets", min_samples)
    if not isinstance(source, (str, os.PathLike)):
        raise ConfigError("budgets: must be a dict, a path to a TOML file, a BudgetSet or None")
    path = os.fspath(source)
    if Path(path).name == "pyproject.toml":
        return _from_pyproject(path, min_samples, required=True)
    data = _read_toml(path)
    if "budgets" in data:
        # Only [budgets] is read, so the file may hold other settings too.
        return _from_table(data["budgets"], f"{path} [budgets]", min_samples)
    return _from_table(data, path, min_samples)


def _read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data: dict[str, Any] = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{os.fspath(path)}: cannot read budgets: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{os.fspath(path)}: invalid TOML: {exc}") from None
    return data


def _from_pyproject(path: str | os.PathLike[str], min_samples: int, *, required: bool) -> BudgetSet:
    table: Any = _read_toml(path)
    for key in ("tool", "asgi_perf", "budgets"):
        if not isinstance(table, Mapping) or key not in table:
            if required:
                raise ConfigError(f"{os.fspath(path)}: no [tool.asgi_perf.budgets] table")
            return BudgetSet(min_samples=min_samples)
        table = table[key]
    return _from_table(table, f"{os.fspath(path)} [tool.asgi_perf.budgets]", min_samples)


def _from_table(table: Any, source: str, min_samples: int) -> BudgetSet:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{source}: expected a table of route patterns")
    budgets: dict[str, Budget] = {}
    process: Mapping[str, Any] = {}
    for pattern, fields in table.items():
        if pattern == "min_samples":
            min_samples = check_min_samples(f"{source}: min_samples", fields)
            continue
        if pattern == PROCESS:
            if not isinstance(fields, Mapping):
                raise ConfigError(f"{source}: [{PROCESS}]: expected a table of limits")
            process = fields
            continue
        try:
            budget = _budget(pattern, fields)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        if budget.pattern in budgets:
            raise ConfigError(f'{source}: "{pattern}": duplicate of "{budget.pattern}"')
        budgets[budget.pattern] = budget
    return BudgetSet(
        tuple(budgets.values()), min_samples=min_samples, source=source, process=process
    )


def _budget(pattern: Any, fields: Any) -> Budget:
    if not isinstance(fields, Mapping):
        raise ConfigError(f'"{pattern}": expected a table of limits, got {type(fields).__name__}')
    limits = {name: value for name, value in fields.items() if name != "min_samples"}
    return Budget(pattern, limits, fields.get("min_samples"))
