"""One beat: run the due checks, store the results, record a `pulse.beat` event."""

from __future__ import annotations

import socket
import time
from dataclasses import replace

from ..clock import Clock
from ..events import EventLog
from .base import Check, CheckContext, Shared
from .beats import BeatStore
from .runner import MAX_CONCURRENCY, BeatResult, run_checks


class Pulse:
    """Collects beats. Remembers when each check last ran, so per-check intervals hold."""

    def __init__(self, checks: list[Check], beats: BeatStore, events: EventLog, clock: Clock,
                 interval: float, timeout: float, max_concurrency: int = MAX_CONCURRENCY):
        self.checks = checks
        self.beats = beats
        self.events = events
        self.clock = clock
        self.interval = interval
        self.timeout = timeout
        self.max_concurrency = max_concurrency
        self.host = socket.gethostname()
        self.shared = Shared()   # kept across beats (the HTTP connection pool); closed by aclose()
        self._last_run: dict[str, float] = {}

    async def aclose(self) -> None:
        """Close what the checks keep between beats (the daemon stops, a CLI beat ends)."""
        await self.shared.aclose()

    def due(self, now: float) -> list[Check]:
        """Checks whose own interval has passed (a 10 % slack absorbs scheduler jitter)."""
        due = []
        for c in self.checks:
            every = c.config.interval or self.interval
            last = self._last_run.get(c.name)
            if last is None or now - last >= every * 0.9:
                due.append(c)
        return due

    async def beat(self, *, everything: bool = False) -> BeatResult:
        """Run one beat (all checks when `everything`), store it and emit `pulse.beat`."""
        started = self.clock.monotonic()
        checks = self.checks if everything else self.due(started)
        ts = self.clock.now()
        t0 = time.perf_counter()
        results = await run_checks(checks, CheckContext(self.clock, self.beats, self.interval, self.shared),
                                   self.timeout, self.max_concurrency)
        duration = (time.perf_counter() - t0) * 1000
        for c in checks:
            self._last_run[c.name] = started
        beat = BeatResult(ts=ts, results=results, duration_ms=duration, host=self.host)
        beat_id = await self.beats.save(beat, self.events)   # its pulse.beat event in the same transaction
        return replace(beat, id=beat_id)
