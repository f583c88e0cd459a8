"""Filling a rule's action arguments from the incident: `{target}`, `{details.path}`, ...

Only lookups of named values, no expressions and no code: a string that is exactly one
placeholder takes the value with its type; placeholders inside a longer string are replaced by
their text. A missing value is an error that names it (the rule then only notifies).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*(?:\.[A-Za-z0-9_]+)*)\}")


class TemplateError(ValueError):
    """An argument refers to a value the incident does not have."""


def _lookup(name: str, values: Mapping[str, Any]) -> Any:
    current: Any = values
    for part in name.split("."):
        if not isinstance(current, Mapping) or part not in current or current[part] in (None, ""):
            raise TemplateError(f"the incident has no value for {{{name}}}")
        current = current[part]
    return current


def fill(value: Any, values: Mapping[str, Any]) -> Any:
    """`value` (a rule's args, recursively) with placeholders replaced from `values`."""
    if isinstance(value, dict):
        return {k: fill(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, values) for v in value]
    if isinstance(value, str):
        whole = _PLACEHOLDER.fullmatch(value)
        if whole:
            return _lookup(whole.group(1), values)
        return _PLACEHOLDER.sub(lambda m: str(_lookup(m.group(1), values)), value)
    return value
