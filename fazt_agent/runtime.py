"""The agent's parts wired together for one data dir: store, event log, beats, pulse.

The daemon, the CLI and the MCP server all open a `Runtime`; they share the SQLite file, so a
command works the same whether or not the daemon is running.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import cast

from .clock import Clock, SystemClock
from .config import Autonomy, Config
from .definitions import Definitions, load_definitions
from .events import EventLog
from .pulse.beats import BeatStore
from .pulse.collector import Pulse
from .store import Store

AUTONOMY_KEY = "agent.autonomy"


@dataclass
class Runtime:
    config: Config
    definitions: Definitions
    store: Store
    events: EventLog
    beats: BeatStore
    pulse: Pulse
    clock: Clock

    @classmethod
    async def open(cls, config: Config, *, clock: Clock | None = None,
                   definitions: Definitions | None = None) -> Runtime:
        """Load the definitions (unless given) and open the store.

        Raises:
            ConfigError: a definition file is invalid.
            StoreError: the database cannot be used.
        """
        clock = clock or SystemClock()
        definitions = definitions or load_definitions(config)
        store = await Store.open(config.db_path)
        events = EventLog(store, clock)
        beats = BeatStore(store)
        section = config.file.pulse
        pulse = Pulse(definitions.checks, beats, events, clock, section.interval, section.timeout)
        return cls(config, definitions, store, events, beats, pulse, clock)

    async def close(self) -> None:
        await self.store.close()

    async def autonomy(self) -> Autonomy:
        """The autonomy level in force: the one last set at run time, else the config's."""
        stored = await self.store.get_setting(AUTONOMY_KEY)
        return cast(Autonomy, stored) if stored in ("low", "medium", "high") else self.config.agent.autonomy

    async def prune(self) -> tuple[int, int]:
        """Apply retention: old events and old beats. Returns (events, beats) deleted."""
        now = self.clock.now()
        events = await self.events.prune(now - timedelta(seconds=self.config.file.events.retention))
        beats = await self.beats.prune(now - timedelta(seconds=self.config.file.pulse.retention))
        return events, beats
