"""The autonomy level in force and the pause, as stored: the run-time override's form and how the
level in force is chosen. No pydantic, no asyncio: the Runtime and the CLI's light read path
(`cli/_light.py`) both use it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, NamedTuple

Autonomy = Literal["low", "medium", "high"]
LEVELS: tuple[Autonomy, ...] = ("low", "medium", "high")
AUTONOMY_KEY = "agent.autonomy"
PAUSED_KEY = "agent.paused"   # "1" while paused; who paused and when is the last `agent.paused` event
# who paused and when: the newest `agent.paused` event (None once retention has removed it)
PAUSED_BY_SQL = ("SELECT ts, json_extract(data, '$.by') AS by FROM events WHERE type = 'agent.paused'"
                 " ORDER BY id DESC LIMIT 1")


class Override(NamedTuple):
    """An autonomy level set at run time (`fazt-agent autonomy`, MCP), kept in the settings table.

    It holds while the config file still says what it said when the override was set: an edit of
    `[agent] autonomy` there wins (the daemon then clears the override and records it).
    """

    level: Autonomy
    by: str | None = None
    at: str | None = None
    config: Autonomy | None = None   # the file's level then; None for one stored by an older version

    def to_setting(self) -> str:
        return json.dumps(self._asdict())

    @classmethod
    def parse(cls, text: str | None) -> Override | None:
        """The stored override, or None (none stored, or unreadable)."""
        if text is None:
            return None
        if text in LEVELS:   # an older version stored the bare level
            return cls(text)  # type: ignore[arg-type]
        try:
            data = json.loads(text)
            override = cls(**data)
        except (ValueError, TypeError):
            return None
        return override if override.level in LEVELS and override.config in (None, *LEVELS) else None


class AutonomyState(NamedTuple):
    """The autonomy level in force, where it comes from, and what the config file says."""

    level: Autonomy
    source: Literal["config", "override"]
    config: Autonomy                 # what the config file says now (the default without a file)
    file: str | None                 # the config file
    by: str | None = None            # who set the override in force
    at: str | None = None            # and when
    problem: str | None = None       # the file's [agent] autonomy cannot be read now: its last good value counts

    @property
    def summary(self) -> str:
        """`high (set by cli at ..., overrides config.toml's low)` or `low (from config.toml)`."""
        name = Path(self.file).name if self.file else None
        if self.source == "override":
            who = f"set by {self.by or 'an owner command'}" + (f" at {self.at}" if self.at else "")
            theirs = f"{name}'s {self.config}" if name else f"the default {self.config}"
            return f"{self.level} ({who}, overrides {theirs})"
        return f"{self.level} (from {name})" if name else f"{self.level} (the default: no config file)"

    def to_json(self) -> dict[str, Any]:
        return {**self._asdict(), "summary": self.summary}


def in_force(level: Autonomy, file: str | None, override: Override | None, problem: str | None = None) -> AutonomyState:
    """The level in force: the override while the file still says `level`, what it said when the
    override was set; else the file's `level`."""
    if override is not None and override.config in (None, level):
        return AutonomyState(override.level, "override", level, file, override.by, override.at, problem)
    return AutonomyState(level, "config", level, file, problem=problem)
