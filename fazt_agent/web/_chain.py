"""The event chain as the dashboard shows it: verified incrementally, so a page view does not hash
the whole log again.

The first look walks the chain from its anchor (what retention left), as `EventLog.verify` does;
later looks walk only the events written since, after checking that the last event verified is
still there with the same hash. An event altered among those verified earlier is found by a full
walk (`full=True`: the dashboard's "verify again" button, or `fazt-agent events verify`). A broken
chain is remembered where it broke and walked again from there at most every BROKEN_RECHECK
seconds.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..events import GENESIS, _hash

VERIFY_BATCH = 2000
BROKEN_RECHECK = 60.0


@dataclass(frozen=True)
class ChainState:
    """How far the event chain is verified, and whether it holds."""

    ok: bool
    verified: int             # the last event id verified (0: none yet)
    anchor: int               # the id before the oldest kept event (retention)
    at: datetime              # when it was last walked
    bad_id: int | None = None
    reason: str = ""


class Chain:
    """The verified prefix of one store's event chain (one per dashboard, in memory)."""

    def __init__(self, store: Any, clock: Any):
        self.store = store
        self.clock = clock
        self._lock = asyncio.Lock()
        self._id = 0                  # the last event verified, and its hash
        self._hash: str | None = None
        self._state: ChainState | None = None
        self._broken_at = 0.0

    async def state(self, *, full: bool = False) -> ChainState:
        async with self._lock:
            if (not full and self._state is not None and not self._state.ok
                    and time.monotonic() - self._broken_at < BROKEN_RECHECK):
                return self._state
            anchor = int(await self.store.get_setting("events.anchor_id") or 0)
            start: tuple[int, str] | None = None
            if not full and self._hash is not None and self._id >= anchor:
                row = await self.store.fetchone("SELECT hash FROM events WHERE id = ?", (self._id,))
                if row is not None and row["hash"] == self._hash:
                    start = (self._id, self._hash)
            if start is None:   # from the anchor retention left (or the start)
                start = (anchor, await self.store.get_setting("events.anchor_hash") or GENESIS)
            self._state = await self._walk(anchor, *start)
            if not self._state.ok:
                self._broken_at = time.monotonic()
            return self._state

    async def _walk(self, anchor: int, prev_id: int, prev_hash: str) -> ChainState:
        """`EventLog.verify` from (prev_id, prev_hash) on; remembers how far the chain holds."""
        now = self.clock.now()
        while True:
            rows = await self.store.fetchall(
                "SELECT id, ts, type, source, incident_id, data, prev_hash, hash FROM events"
                " WHERE id > ? ORDER BY id LIMIT ?", (prev_id, VERIFY_BATCH))
            for r in rows:
                problem = None
                if r["id"] != prev_id + 1 or r["prev_hash"] != prev_hash:
                    gap = f"{prev_id + 1}" + (f"..{r['id'] - 1}" if r["id"] - 1 > prev_id + 1 else "")
                    problem = f"event {gap} was removed (the chain breaks before event {r['id']})"
                elif r["hash"] != _hash(r["prev_hash"], r["id"], r["ts"], r["type"], r["source"], r["incident_id"],
                                        r["data"]):
                    problem = f"event {r['id']} was altered (its hash does not match its content)"
                if problem is not None:
                    self._id, self._hash = prev_id, prev_hash   # the next look starts just before the break
                    return ChainState(False, prev_id, anchor, now, r["id"], problem)
                prev_id, prev_hash = r["id"], r["hash"]
            self._id, self._hash = prev_id, prev_hash
            if len(rows) < VERIFY_BATCH:
                break
            await asyncio.sleep(0)   # the daemon's other work runs between batches
        seq = await self.store.scalar("SELECT seq FROM sqlite_sequence WHERE name = 'events'") or 0
        if seq > prev_id:
            return ChainState(False, prev_id, anchor, now, prev_id + 1,
                              f"events {prev_id + 1}..{seq} at the end of the log were removed")
        return ChainState(True, prev_id, anchor, now)
