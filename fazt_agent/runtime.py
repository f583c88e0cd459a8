"""The agent's parts wired together for one data dir: store, event log, beats, pulse.

The daemon, the CLI and the MCP server all open a `Runtime`; they share the SQLite file, so a
command works the same whether or not the daemon is running.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

# the override's form and the level in force: in `_autonomy` (no pydantic; the CLI's light path reads them too)
from ._autonomy import AUTONOMY_KEY, PAUSED_BY_SQL, PAUSED_KEY, AutonomyState, Override, in_force  # noqa: F401
from .clock import Clock, SystemClock
from .config import Autonomy, Config, read_autonomy
from .definitions import Definitions, DefinitionsBroken, read_definitions
from .errors import ConfigError, Issue
from .events import EventLog
from .pulse.beats import BeatStore
from .pulse.collector import Pulse
from .store import Store


def autonomy_state(config: Config, override: Override | None) -> AutonomyState:
    """The level in force: the override while the file still says what it said when it was set."""
    level, problem = config.agent.autonomy, None
    if config.source is not None:
        read = read_autonomy(config.source)
        level, problem = read.level or level, read.problem
    return in_force(level, str(config.source) if config.source else None, override, problem)


def stored_override(db_path: Path) -> Override | None:
    """The override in a database, read without opening a Runtime (`config check`); None when there is
    no database yet or it cannot be read."""
    if not db_path.is_file():
        return None
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
        try:
            row = db.execute("SELECT value FROM settings WHERE key = ?", (AUTONOMY_KEY,)).fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    return Override.parse(row[0]) if row else None


@dataclass
class Runtime:
    config: Config
    definitions: Definitions
    store: Store
    events: EventLog
    beats: BeatStore
    pulse: Pulse
    clock: Clock
    # what did not load in a lenient open: the definitions hold only the valid files' part
    issues: list[Issue] = field(default_factory=list)

    @classmethod
    async def open(cls, config: Config, *, clock: Clock | None = None,
                   definitions: Definitions | None = None, lenient: bool = False) -> Runtime:
        """Load the definitions (unless given) and open the store.

        `lenient` is for commands that do not act on the definitions (status, lists, deny, the
        event log, MCP reads): a broken file is then left out and listed in `issues` instead of
        refused, and whatever needs the definitions calls `require_definitions` first.

        Raises:
            ConfigError: a definition file is invalid (unless `lenient`).
            StoreError: the database cannot be used.
        """
        clock = clock or SystemClock()
        issues: list[Issue] = []
        if definitions is None:
            definitions, issues = read_definitions(config)
            if issues and not lenient:
                raise ConfigError(issues)
        store = await Store.open(config.db_path)
        events = EventLog(store, clock)
        beats = BeatStore(store)
        section = config.file.pulse
        pulse = Pulse(definitions.checks, beats, events, clock, section.interval, section.timeout,
                      section.max_concurrency)
        return cls(config, definitions, store, events, beats, pulse, clock, issues)

    def require_definitions(self, what: str, hint: str | None = None) -> None:
        """Refuse `what` (e.g. "approving a halt") while a definition file is broken: it would act
        on part of the owner's policy, not on the last good one that a running daemon keeps.

        Raises:
            DefinitionsBroken: a definition file did not load (a lenient open).
        """
        if self.issues:
            raise DefinitionsBroken(what, self.issues, hint)

    async def close(self) -> None:
        try:
            await self.pulse.aclose()
        finally:
            await self.store.close()

    async def autonomy(self) -> Autonomy:
        """The autonomy level in force: an override set at run time, else the config file's."""
        return (await self.autonomy_state()).level

    async def autonomy_state(self) -> AutonomyState:
        return autonomy_state(self.config, await self.autonomy_override())

    async def autonomy_override(self) -> Override | None:
        return Override.parse(await self.store.get_setting(AUTONOMY_KEY))

    async def pause_state(self) -> dict[str, Any]:
        """Whether the agent is paused, and by whom and since when (from the `agent.paused` event;
        None once retention has removed it)."""
        if await self.store.get_setting(PAUSED_KEY) != "1":
            return {"paused": False, "paused_by": None, "paused_at": None}
        row = await self.store.fetchone(PAUSED_BY_SQL)
        return {"paused": True, "paused_by": row["by"] if row else None, "paused_at": row["ts"] if row else None}

    async def set_autonomy_override(self, override: Override | None) -> None:
        """Store an override, or clear it (None): the config file's level is then in force."""
        if override is None:
            await self.store.execute("DELETE FROM settings WHERE key = ?", (AUTONOMY_KEY,))
        else:
            await self.store.set_setting(AUTONOMY_KEY, override.to_setting())

    async def prune(self) -> tuple[int, int]:
        """Apply retention: old events and old beats. Returns (events, beats) deleted."""
        now = self.clock.now()
        events = await self.events.prune(now - timedelta(seconds=self.config.file.events.retention))
        beats = await self.beats.prune(now - timedelta(seconds=self.config.file.pulse.retention))
        return events, beats
