"""Human units in config files: durations ("90s", "5m", "7d") and sizes ("500MB", "2GiB").

Both parse into plain numbers (seconds as float, bytes as int) and are used as pydantic
types so a bad value fails at load time with the file and key named.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_FACTORS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024, "ki": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2, "mi": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "gi": 1024**3,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4, "ti": 1024**4,
    "p": 1000**5, "pb": 1000**5, "pib": 1024**5, "pi": 1024**5,
}


def parse_duration(value: Any) -> float:
    """Seconds from `90`, `"90s"`, `"5m"`, `"2h"`, `"7d"`, `"1w"` or `"250ms"`.

    Raises:
        ValueError: the value is not a non-negative duration.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '60s', '5m', '7d', got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {value!r}")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _DURATION_FACTORS[m.group(2)]
    raise ValueError(f"expected a duration like '60s', '5m', '7d', got {value!r}")


def parse_size(value: Any) -> int:
    """Bytes from `1024`, `"500MB"`, `"2GiB"`, `"10k"`.

    Raises:
        ValueError: the value is not a non-negative size.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size like '500MB' or '2GiB', got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"a size cannot be negative, got {value!r}")
        return int(value)
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m and (m.group(2) or "").lower() in _SIZE_FACTORS:
            return int(float(m.group(1)) * _SIZE_FACTORS[(m.group(2) or "").lower()])
    raise ValueError(f"expected a size like '500MB' or '2GiB', got {value!r}")


def format_duration(seconds: float) -> str:
    """A short human form: 45s, 12m, 3.5h, 2d."""
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def format_size(n: float) -> str:
    """A short human form with binary prefixes: 512 B, 3.2 MiB, 1.0 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
