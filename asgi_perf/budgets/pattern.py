"""Budget patterns: which routes a budget covers, and its limits in numbers.

A pattern is ``"METHOD /path"``, ``"/path"`` (any method) or ``"*"``
(everything); the path is an ``fnmatch`` glob (``*``, ``?``, ``[...]``) and
``{``/``}`` are literal, so ``"GET /items/{item_id}"`` names one route key.
``"<unmatched>"`` and ``"<other>"`` are matched only by exactly that pattern.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fnmatch import translate
from types import MappingProxyType
from typing import Any

from asgi_perf.errors import ConfigError
from asgi_perf.units import parse_duration_ms, parse_rate, parse_size_mb, whole_number

METRICS: tuple[str, ...] = (
    "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "max_mb", "error_rate",
    "max_queries", "p99_db_ms",
)  # fmt: skip
# Measured from the route's ``db`` numbers, present only with ``db=True``.
DB_METRICS = frozenset({"max_queries", "p99_db_ms"})


def parse_query_count(value: object, *, name: str) -> float:
    """A number of queries: a whole number >= 0 (``3``, ``3.0`` or ``"3"``)."""
    number: float | None = None
    if isinstance(value, str):
        count = whole_number(value.strip())
        number = None if count is None else float(count)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        # bool is an int: `max_queries = true` is a mistake, not 1.
        number = float(value)
    if number is None or not math.isfinite(number) or number < 0 or not number.is_integer():
        raise ConfigError(f"{name}: expected a whole number of queries >= 0, got {value!r}")
    return number


_PARSERS: Mapping[str, Callable[..., float]] = {
    **dict.fromkeys(METRICS[:5], parse_duration_ms),
    "max_mb": parse_size_mb,
    "error_rate": parse_rate,
    "max_queries": parse_query_count,
    "p99_db_ms": parse_duration_ms,
}
KNOWN = ", ".join((*METRICS, "min_samples"))
_SPECIAL = frozenset({"<unmatched>", "<other>"})
_TOKEN_RE = re.compile(r"[!#$%&'+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 tchar, minus the glob '*'
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Budget:
    """Limits for the routes matching ``pattern``; ``min_samples`` overrides the set's.

    ``limits`` maps names from ``METRICS`` to numbers (ms, MB of 2**20 bytes,
    or a 0..1 fraction) or to strings in human units (see ``asgi_perf.units``);
    both are stored as floats. The pattern is normalised (method upper-cased,
    single space).
    """

    pattern: str
    limits: Mapping[str, float]
    min_samples: int | None = None
    _method: str | None = field(init=False, repr=False, compare=False, default=None)
    _path: str = field(init=False, repr=False, compare=False, default="")
    _regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False, default=None)
    _rank: tuple[bool, bool, int] = field(
        init=False, repr=False, compare=False, default=(False, False, 0)
    )

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str):
            raise ConfigError(f"{self.pattern!r}: route pattern must be a string")
        where = f'"{self.pattern}"'
        if not self.pattern.strip():
            raise ConfigError(f"{where}: empty route pattern")
        parts = self.pattern.split()
        if len(parts) > 2:
            raise ConfigError(f'{where}: expected "METHOD /path", "/path" or "*"')
        method = parts[0].upper() if len(parts) == 2 else None
        path = parts[-1]
        if method is not None and not _TOKEN_RE.fullmatch(method):
            raise ConfigError(
                f"{where}: method {parts[0]!r} is not an HTTP method token "
                "(leave the method out to match any)"
            )
        if path not in _SPECIAL and not path.startswith(("/", "*")):
            raise ConfigError(f"{where}: path must start with '/' (or be '*')")
        if method is not None and path in _SPECIAL:
            raise ConfigError(f"{where}: {path} takes no method")
        exact = not _GLOB_CHARS.intersection(path)
        literal = sum(1 for ch in path if ch not in _GLOB_CHARS)
        limits = check_limits(where, self.limits)
        if self.min_samples is not None:
            check_min_samples(f"{where}: min_samples", self.min_samples)
        set_ = object.__setattr__  # frozen: derived fields are set once, here
        set_(self, "pattern", path if method is None else f"{method} {path}")
        set_(self, "limits", MappingProxyType(limits))
        set_(self, "_method", method)
        set_(self, "_path", path)
        set_(self, "_regex", None if exact else re.compile(translate(path)))
        set_(self, "_rank", (exact, method is not None, literal))

    def matches(self, route: str) -> bool:
        """Whether this pattern covers the route key ``route``."""
        if route in _SPECIAL or self._path in _SPECIAL:
            return route == self._path
        method, _, path = route.partition(" ") if " " in route else ("", "", route)
        if self._method is not None and self._method != method:
            return False
        if self._regex is None:
            return path == self._path
        return self._regex.match(path) is not None


def check_limits(where: str, limits: Any) -> dict[str, float]:
    if not isinstance(limits, Mapping):
        raise ConfigError(f"{where}: limits must be a mapping of metric to number")
    if not limits:
        raise ConfigError(f"{where}: no limits (set at least one of {', '.join(METRICS)})")
    out = {}
    for name, value in limits.items():
        if name not in _PARSERS:
            raise ConfigError(f"{where}: unknown field {name!r} (known: {KNOWN})")
        out[name] = _PARSERS[name](value, name=f"{where}: {name}")
    return out


def check_min_samples(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name}: must be a whole number >= 0, got {value!r}")
    return value
