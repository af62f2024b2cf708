"""Human units for budgets: ``"150 ms"``, ``"24 MB"``, ``"1%"``.

Each parser takes a number (already in the target unit) or a string with an
optional unit, and returns a finite float >= 0 in the target unit:
milliseconds, megabytes, or a fraction in 0..1. A bare number or a numeric
string without a unit is taken to be in the target unit already.

Sizes are binary: ``KB`` and ``KiB`` are both 2**10 bytes, ``MB`` and ``MiB``
2**20, ``GB`` and ``GiB`` 2**30. That is what the middleware reports (RSS and
tracemalloc deltas divided by 2**20), so a ``"24 MB"`` budget compares with
the same unit it is measured in. Unit names are case-insensitive.

Every parser raises ``ConfigError`` whose message starts with ``name``, so a
caller passes whatever locates the value (a file, a route pattern, a field).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from asgi_perf.errors import ConfigError

__all__ = [
    "decimal_number",
    "number_text",
    "parse_duration_ms",
    "parse_growth_mb_per_h",
    "parse_rate",
    "parse_size_mb",
    "whole_number",
]

_QUANTITY_RE = re.compile(
    r"^\s*(?P<num>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<unit>[^\d\s.+-]*)\s*$"
)

# Past this many significant digits a number is out of every range asgi_perf
# accepts; int() itself refuses strings of more than 4300 digits (ValueError).
_MAX_DIGITS = 18

_DURATION_MS: Mapping[str, float] = {
    "": 1.0,
    "ns": 1e-6,
    "us": 1e-3,
    "µs": 1e-3,  # micro sign
    "μs": 1e-3,  # Greek mu; both are typed in the wild
    "ms": 1.0,
    "s": 1000.0,
    "sec": 1000.0,
    "min": 60_000.0,
}
_SIZE_MB: Mapping[str, float] = {
    "": 1.0,
    "b": 1 / 2**20,
    "kb": 1 / 2**10,
    "kib": 1 / 2**10,
    "mb": 1.0,
    "mib": 1.0,
    "gb": 2.0**10,
    "gib": 2.0**10,
}
_RATE: Mapping[str, float] = {"": 1.0, "%": 0.01}
# Growth in MB per hour: "10 MB/h", "512 KB/h", "1 MB/min".
_GROWTH_MB_PER_H: Mapping[str, float] = {
    "": 1.0,
    **{f"{size}/{per}": f * h for size, f in _SIZE_MB.items() if size
       for per, h in (("h", 1.0), ("hour", 1.0), ("min", 60.0), ("s", 3600.0))},
}  # fmt: skip


def parse_duration_ms(value: object, *, name: str) -> float:
    """A duration in milliseconds: ``150``, ``"150 ms"``, ``"0.2 s"``, ``"200us"``."""
    return _parse(value, name, _DURATION_MS, "a duration like '150 ms' or '0.2 s'")


def parse_size_mb(value: object, *, name: str) -> float:
    """A size in MB of 2**20 bytes: ``10``, ``"24 MB"``, ``"512 KB"``, ``"1 GiB"``."""
    return _parse(value, name, _SIZE_MB, "a size like '24 MB' or '512 KB'")


def parse_growth_mb_per_h(value: object, *, name: str) -> float:
    """Growth in MB per hour: ``10``, ``"10 MB/h"``, ``"512 KB/h"``, ``"1 MB/min"``."""
    return _parse(value, name, _GROWTH_MB_PER_H, "a growth like '10 MB/h'")


def parse_rate(value: object, *, name: str) -> float:
    """A fraction in 0..1: ``0.01``, ``"0.01"`` or ``"1%"``."""
    rate = _parse(value, name, _RATE, "a rate like '1%' or 0.01")
    if rate > 1.0:
        raise ConfigError(f"{name}: must be between 0 and 1 (or 0% and 100%), got {value!r}")
    return rate


def _parse(value: object, name: str, units: Mapping[str, float], expected: str) -> float:
    # bool is an int subclass; `p99_ms = true` is a mistake, not 1 ms.
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{name}: expected a number or {expected}, got {type(value).__name__}")
    if isinstance(value, str):
        match = _QUANTITY_RE.match(value)
        factor = units.get(match["unit"].lower()) if match else None
        if match is None or factor is None:
            raise ConfigError(f"{name}: expected {expected}, got {value!r}")
        number = float(match["num"]) * factor
    else:
        number = float(value)
    if not math.isfinite(number):
        raise ConfigError(f"{name}: must be a finite number, got {value!r}")
    if number < 0:
        raise ConfigError(f"{name}: must be >= 0, got {value!r}")
    return number


def whole_number(text: str) -> int | None:
    """``text`` as an int when it is ASCII digits only (``"0"``..``"9"``), else None.

    The one way a whole number a person typed is read: query parameters,
    CLI options and environment variables. ``int()`` also takes other
    scripts' digits (``"٣"``), signs, spaces and ``_``; ``str.isdigit()``
    says yes to ``"²"``, which ``int()`` then refuses. More than 18
    significant digits is None too: larger than any bound here, and past
    4300 digits ``int()`` raises.
    """
    if not (text.isascii() and text.isdigit()):
        return None
    if len(text.lstrip("0")) > _MAX_DIGITS:
        return None
    return int(text)


_DECIMAL_RE = re.compile(r"[0-9]{1,18}(?:\.[0-9]{1,9})?|\.[0-9]{1,9}")


def decimal_number(text: str) -> float | None:
    """``text`` as a float when it is an ASCII decimal (``30``, ``2.5``), else None.

    ``float()`` also reads ``"nan"``, ``"1e3"``, ``"1_0"``, spaces and other
    scripts' digits; a number in a query string is read the way
    ``whole_number`` reads one, with a fraction allowed.
    """
    if _DECIMAL_RE.fullmatch(text) is None:
        return None
    return float(text)


def number_text(value: float) -> str:
    """A measured number for people: ``100``, ``43.4``, ``0.405``.

    One decimal from 10 up, three significant digits below, no trailing zeros.
    """
    text = f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"
    return text[:-2] if text.endswith(".0") else text
