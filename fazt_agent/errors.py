"""The exception tree of fazt-agent.

    FaztAgentError                 root: anything the agent raises on purpose
    ├── ConfigError                a config or definition file is wrong (carries FILE:KEY issues)
    ├── StoreError                 the database cannot be opened or is not ours
    ├── LockError                  another daemon holds the data-dir lock
    ├── CheckError                 a check could not measure (becomes status `unknown`)
    └── ActionError(permanent)     a kernel action failed; `permanent` says whether a retry may help

Messages say what was wrong and how to fix it, so the CLI can print them as they are.
"""

from __future__ import annotations

from typing import NamedTuple


class FaztAgentError(Exception):
    """Root of every error fazt-agent raises on purpose."""


class Issue(NamedTuple):
    """One problem in one file: printed as `FILE:KEY: message`."""

    file: str
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.key}" if self.key else self.file
        return f"{where}: {self.message}"


class ConfigError(FaztAgentError):
    """A config or definition file is invalid; `issues` lists every problem found."""

    def __init__(self, issues: list[Issue]):
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


class StoreError(FaztAgentError):
    """The database cannot be opened, migrated or read."""


class LockError(FaztAgentError):
    """Another daemon already runs on this data dir."""


class CheckError(FaztAgentError):
    """A check could not measure what it watches; the result is `unknown`."""


class ActionError(FaztAgentError):
    """A kernel action failed. `permanent=False` means a later retry may succeed."""

    def __init__(self, message: str, *, permanent: bool = True):
        super().__init__(message)
        self.permanent = permanent
