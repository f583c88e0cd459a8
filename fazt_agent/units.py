"""Human units in config files: durations ("90s", "5m", "7d") and sizes ("500MB", "2GiB").

Both parse into plain numbers (seconds as float, bytes as int) and are used as pydantic
types so a bad value fails at load time with the file and key named. The `format_*` helpers
write them back for people ("5 min", "1.2 GiB", "1,250,000"); messages use them rather than
`:g`, which prints "5e+09" and "0.0166667 min".
"""

from __future__ import annotations

import re
from typing import Annotated, Any, get_args

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


# SQLite's INTEGER is signed 64-bit: an id or a limit beyond it cannot even be looked up (the
# driver raises OverflowError), so every surface (CLI, MCP, config) refuses it first.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Longer than ten years is a typo (or `inf`): it would overflow date arithmetic or never fire.
MAX_DURATION = 10 * 365 * 86400.0
MAX_SIZE = 1024**6   # 1 EiB: more than any disk; `inf` and typos stop here


def parse_duration(value: Any) -> float:
    """Seconds from `90`, `"90s"`, `"5m"`, `"2h"`, `"7d"`, `"1w"` or `"250ms"`.

    Raises:
        ValueError: the value is not a duration from 0 to 10 years (nan, inf and negatives included).
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '60s', '5m', '7d', got {shown(value)}")
    if isinstance(value, (int, float)):
        return _bounded(value, value, "duration", MAX_DURATION, "10 years (3650 d)")
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:   # a string of 400 digits is float('inf'): refused by the bound
            return _bounded(float(m.group(1)) * _DURATION_FACTORS[m.group(2)], value, "duration", MAX_DURATION,
                            "10 years (3650 d)")
    raise ValueError(f"expected a duration like '60s', '5m', '7d', got {shown(value)}")


def parse_size(value: Any) -> int:
    """Bytes from `1024`, `"500MB"`, `"2GiB"`, `"10k"`.

    Raises:
        ValueError: the value is not a size from 0 to 1 EiB (nan, inf and negatives included).
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size like '500MB' or '2GiB', got {shown(value)}")
    if isinstance(value, (int, float)):
        return int(_bounded(value, value, "size", MAX_SIZE, "1 EiB"))
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m and (m.group(2) or "").lower() in _SIZE_FACTORS:
            return int(_bounded(float(m.group(1)) * _SIZE_FACTORS[(m.group(2) or "").lower()], value, "size",
                                MAX_SIZE, "1 EiB"))
    raise ValueError(f"expected a size like '500MB' or '2GiB', got {shown(value)}")


def _bounded(number: float, given: Any, what: str, maximum: float, maximum_text: str) -> float:
    """`number` as a float when it is from 0 to `maximum`; compared before converting, since
    float() of a huge int raises OverflowError, which pydantic would not turn into a FILE:KEY line."""
    if number != number:
        raise ValueError(f"a {what} must be a number, got {shown(given)}")
    if number < 0:
        raise ValueError(f"a {what} cannot be negative, got {shown(given)}")
    if number > maximum:
        raise ValueError(f"a {what} must be at most {maximum_text}, got {shown(given)}")
    return float(number)


def out_of_range(value: float, what: str, minimum: float = 1, maximum: float = INT64_MAX) -> str | None:
    """Why `value` is not a valid `what` (an id, a limit, a number of hours), or None when it is:
    nan, or outside minimum..maximum. Ids and limits default to 1..INT64_MAX (SQLite's range)."""
    if value != value:
        return f"{what} must be a number, got nan"
    if value < minimum:
        return f"{what} must be at least {_plain(minimum)}, got {shown(value)}"
    if value > maximum:
        return f"{what} must be at most {_plain(maximum)}, got {shown(value)}"
    return None


def shown(value: Any) -> str:
    """`value` for an error message: a number of thousands of digits is described, not printed
    (past 4300 digits Python refuses to print it), and a long text is cut."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"a number of about {round(value.bit_length() * 0.30103)} digits"
    if isinstance(value, float) and (1e-6 <= abs(value) < 1e18 or value == 0):   # "100,000", not "100000.0"
        return format_number(value)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _plain(n: float) -> str:
    return f"{n:,}" if isinstance(n, int) else format_number(n)


_UNITS = (("d", 86400), ("h", 3600), ("min", 60), ("s", 1))


def _largest_unit(seconds: float) -> int:
    """The index in _UNITS of the first unit shown; hours go up to 48 h ("halts expire after 24 h")."""
    if seconds >= 2 * 86400:
        return 0
    return 1 if seconds >= 3600 else 2 if seconds >= 60 else 3


def format_duration(seconds: float) -> str:
    """A duration as the owner reads it: "250 ms", "45 s", "5 min", "2 h 30 min", "36 h", "3 d 4 h".

    At most two units (rounded to the second one), the second dropped when it is zero.
    """
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if seconds < 1:
        return "0 s" if not seconds else f"{seconds * 1000:.0f} ms" if seconds >= 0.001 else "less than 1 ms"
    if seconds < 10 and seconds != int(seconds):
        return f"{seconds:.1f}".rstrip("0").rstrip(".") + " s"
    step = _UNITS[min(_largest_unit(seconds) + 1, len(_UNITS) - 1)][1]
    seconds = round(seconds / step) * step
    top = _largest_unit(seconds)  # again: rounding may carry into a larger unit (59.6 s is 1 min)
    name, size = _UNITS[top]
    whole, rest = divmod(seconds, size)
    text = f"{whole:.0f} {name}"
    if rest and top + 1 < len(_UNITS):
        smaller, smaller_size = _UNITS[top + 1]
        text += f" {rest / smaller_size:.0f} {smaller}"
    return text


def format_size(n: float) -> str:
    """A short human form with binary prefixes: 512 B, 3.2 MiB, 1.0 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_value(value: float, annotation: Any) -> str:
    """`value` of a config field in the unit its type declares: a `Size` as "4.7 GiB", a
    `Duration` as "5 min", any other number as it is ("90", "0.5"), never as "5e+09"."""
    parser = _parser(annotation)
    if parser is parse_size:
        return format_size(value)
    if parser is parse_duration:
        return format_duration(value)
    return format_number(value)


def format_number(value: float) -> str:
    """A plain number for people: "1,250,000", "0.75", "0.00001" (never "1.25e+06")."""
    if float(value).is_integer() or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.6f}".rstrip("0").rstrip(".")


def format_metric(name: str, value: float) -> str:
    """A stored metric value in the unit its name ends with: `size_bytes` as "4.7 GiB",
    `growth_bytes_per_hour` as "1.2 MiB/h", `age_seconds` as "3 h", `latency_ms` as "250 ms",
    `full_in_hours` as "2 d", `used_percent` as "91.5%", anything else as a plain number."""
    if name.endswith("_bytes"):
        return format_size(value)
    if name.endswith("_bytes_per_hour"):
        return f"{format_size(value)}/h"
    if name.endswith("_seconds"):
        return format_duration(value)
    if name.endswith("_ms"):
        return format_duration(value / 1000)
    if name.endswith("_hours"):
        return format_duration(value * 3600)
    if name.endswith("_percent"):
        return f"{value:.1f}%"
    return format_number(round(value, 3))


class Parsed:
    """`Annotated[float, Parsed(parse_duration)]`: pydantic runs the parser before its own validation
    (what `pydantic.BeforeValidator` does, without importing pydantic here: the CLI's light read path
    parses `--since` with this module and never loads pydantic)."""

    def __init__(self, func: Any):
        self.func = func

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_before_validator_function(self.func, handler(source))


def _parser(annotation: Any) -> Any:
    """parse_size or parse_duration when `annotation` is (an optional) Size or Duration."""
    for meta in getattr(annotation, "__metadata__", ()):
        if isinstance(meta, Parsed) and meta.func in (parse_size, parse_duration):
            return meta.func
    for arg in get_args(annotation):
        found = _parser(arg)
        if found is not None:
            return found
    return None


Duration = Annotated[float, Parsed(parse_duration)]
Size = Annotated[int, Parsed(parse_size)]
