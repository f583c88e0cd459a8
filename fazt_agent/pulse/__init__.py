"""Pulse: health checks and beats.

The check kinds are listed here explicitly (a registry, not discovery), each in the module of its
name, and imported when first used: `CHECKS[kind]` imports that kind, so a daemon or a command whose
definitions use two kinds imports (and builds the pydantic models of) two kinds, not every one.
The names (`set(CHECKS)`, `kind in CHECKS`) import nothing; `CHECKS.values()` imports them all.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from importlib import import_module

from . import base
from .base import Check, CheckConfig, CheckContext, CheckResult, Status, worst

KINDS = ("app", "cert_file", "command", "dir_size", "disk", "file_age", "http", "process", "system", "tls")


class _Kinds(Mapping[str, type[Check]]):
    """Every check kind by name; a kind's module is imported (and registers it) on first lookup."""

    def __getitem__(self, kind: str) -> type[Check]:
        if kind not in KINDS:
            raise KeyError(kind)
        if kind not in base.CHECKS:
            import_module(f"{__name__}.{kind}")
        return base.CHECKS[kind]

    def __contains__(self, kind: object) -> bool:
        return kind in KINDS

    def __iter__(self) -> Iterator[str]:
        return iter(KINDS)

    def __len__(self) -> int:
        return len(KINDS)


CHECKS: Mapping[str, type[Check]] = _Kinds()

__all__ = ["CHECKS", "KINDS", "Check", "CheckConfig", "CheckContext", "CheckResult", "Status", "worst"]
