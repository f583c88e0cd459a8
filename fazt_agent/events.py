"""The event log: typed, append-only, hash-chained, delivered to in-process subscribers.

Each row carries `hash = sha256(prev_hash | id | ts | type | source | incident_id | data)`, where
`prev_hash` is the hash of the row before it. `verify()` walks the chain: an edited row breaks
its own hash, a removed row breaks the next row's `prev_hash` (or, at the tail, disagrees with
SQLite's AUTOINCREMENT counter). Retention deletes the oldest rows and keeps the hash of the last
deleted one as the new anchor, so a pruned log still verifies.

Events are committed before subscribers see them: a subscriber never acts on an event that a
crash could lose.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Awaitable, Callable, Mapping, Sequence

from pydantic import BaseModel, ValidationError

from .clock import Clock, SystemClock, iso, parse_iso
from .event_types import EVENT_TYPES
from .store import Store

log = logging.getLogger(__name__)
GENESIS = "0" * 64


@dataclass(frozen=True)
class Event:
    id: int
    ts: datetime
    type: str
    source: str
    incident_id: int | None
    data: dict[str, Any]
    hash: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "ts": iso(self.ts), "type": self.type, "source": self.source,
                "incident_id": self.incident_id, "data": self.data, "hash": self.hash}


@dataclass(frozen=True)
class NewEvent:
    type: str
    data: BaseModel | Mapping[str, Any]
    source: str = "agent"
    incident_id: int | None = None


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    bad_id: int | None = None
    reason: str = ""


Subscriber = Callable[[Event], Awaitable[None] | None]


def _canonical(data: Mapping[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _hash(prev: str, id_: int, ts: str, type_: str, source: str, incident_id: int | None, data: str) -> str:
    text = "|".join((prev, str(id_), ts, type_, source, "" if incident_id is None else str(incident_id), data))
    return hashlib.sha256(text.encode()).hexdigest()


def validate_data(type_: str, data: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    """The event's data as JSON-ready dict, checked against the registered model.

    Raises:
        ValueError: unknown event type or data that does not fit its model (a programming error).
    """
    model = EVENT_TYPES.get(type_)
    if model is None:
        raise ValueError(f"unknown event type {type_!r}; register it in fazt_agent.event_types")
    if isinstance(data, model):
        return data.model_dump(mode="json")
    try:
        return model.model_validate(dict(data) if not isinstance(data, BaseModel) else data.model_dump()).model_dump(mode="json")
    except ValidationError as e:
        raise ValueError(f"bad data for event {type_!r}: {e}") from None


class EventLog:
    """Append, read, verify and prune the event log of one store."""

    def __init__(self, store: Store, clock: Clock | None = None):
        self.store = store
        self.clock = clock or SystemClock()
        self._subscribers: list[tuple[str, Subscriber]] = []

    def subscribe(self, callback: Subscriber, pattern: str = "*") -> Callable[[], None]:
        """Call `callback` for every committed event whose type matches the glob `pattern`.

        Returns a function that removes the subscription.
        """
        entry = (pattern, callback)
        self._subscribers.append(entry)
        return lambda: self._subscribers.remove(entry) if entry in self._subscribers else None

    async def emit(self, type_: str, data: BaseModel | Mapping[str, Any], *, source: str = "agent",
                   incident_id: int | None = None) -> Event:
        """Append one event, then deliver it. Raises ValueError for an unregistered type."""
        return (await self.emit_many([NewEvent(type_, data, source, incident_id)]))[0]

    async def emit_many(self, items: Sequence[NewEvent]) -> list[Event]:
        """Append events in one transaction (the fast path for batches), then deliver them."""
        prepared = [(n, _canonical(validate_data(n.type, n.data))) for n in items]
        now = iso(self.clock.now())
        events: list[Event] = []
        async with self.store.transaction() as db:
            async with db.execute("SELECT hash FROM events ORDER BY id DESC LIMIT 1") as cur:
                row = await cur.fetchone()
            if row is not None:
                prev = row[0]
            else:
                async with db.execute("SELECT value FROM settings WHERE key='events.anchor_hash'") as cur:
                    anchor = await cur.fetchone()
                prev = anchor[0] if anchor else GENESIS
            async with db.execute("SELECT seq FROM sqlite_sequence WHERE name='events'") as cur:
                seq_row = await cur.fetchone()
            next_id = (seq_row[0] if seq_row else 0) + 1
            rows = []
            for n, data_json in prepared:
                h = _hash(prev, next_id, now, n.type, n.source, n.incident_id, data_json)
                rows.append((next_id, now, n.type, n.source, n.incident_id, data_json, prev, h))
                events.append(Event(next_id, parse_iso(now), n.type, n.source, n.incident_id, json.loads(data_json), h))
                prev = h
                next_id += 1
            await db.executemany(
                "INSERT INTO events(id, ts, type, source, incident_id, data, prev_hash, hash) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        for event in events:
            await self._deliver(event)
        return events

    async def _deliver(self, event: Event) -> None:
        for pattern, callback in list(self._subscribers):
            if not fnmatch.fnmatchcase(event.type, pattern):
                continue
            try:
                result = callback(event)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:  # a subscriber's bug must not break the writer
                log.exception("event subscriber %r failed on event %s", callback, event.id)

    async def list(self, *, type_glob: str | None = None, since: datetime | None = None,
                   after_id: int | None = None, incident_id: int | None = None,
                   limit: int | None = 100, newest_first: bool = True) -> list[Event]:
        """Events filtered by type glob, time, id and incident."""
        where, params = [], []
        if type_glob:
            where.append("type GLOB ?")
            params.append(type_glob)
        if since is not None:
            where.append("ts >= ?")
            params.append(iso(since))
        if after_id is not None:
            where.append("id > ?")
            params.append(after_id)
        if incident_id is not None:
            where.append("incident_id = ?")
            params.append(incident_id)
        sql = "SELECT * FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id " + ("DESC" if newest_first else "ASC")
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        rows = await self.store.fetchall(sql, params)
        return [_from_row(r) for r in rows]

    async def get(self, event_id: int) -> Event | None:
        row = await self.store.fetchone("SELECT * FROM events WHERE id = ?", (event_id,))
        return _from_row(row) if row else None

    async def last_id(self) -> int:
        return await self.store.scalar("SELECT COALESCE(MAX(id), 0) FROM events")

    async def verify(self, batch: int = 5000) -> VerifyResult:
        """Walk the whole chain; report the first row that was altered or follows a removed row."""
        prev_hash = await self.store.get_setting("events.anchor_hash") or GENESIS
        prev_id = int(await self.store.get_setting("events.anchor_id") or 0)
        checked = 0
        while True:
            rows = await self.store.fetchall(
                "SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?", (prev_id, batch))
            if not rows:
                break
            for r in rows:
                expected = _hash(r["prev_hash"], r["id"], r["ts"], r["type"], r["source"],
                                 r["incident_id"], r["data"])
                if r["id"] != prev_id + 1 or r["prev_hash"] != prev_hash:
                    return VerifyResult(False, checked, r["id"],
                                        f"row {prev_id + 1}" + (f"..{r['id'] - 1}" if r["id"] - 1 > prev_id + 1 else "")
                                        + " was removed (the chain breaks before this row)")
                if r["hash"] != expected:
                    return VerifyResult(False, checked, r["id"], "row was altered (its hash does not match its content)")
                prev_hash, prev_id = r["hash"], r["id"]
                checked += 1
        seq = await self.store.scalar("SELECT seq FROM sqlite_sequence WHERE name='events'") or 0
        if seq > prev_id:
            return VerifyResult(False, checked, prev_id + 1,
                                f"rows {prev_id + 1}..{seq} at the end of the log were removed")
        return VerifyResult(True, checked)

    async def prune(self, before: datetime) -> int:
        """Delete events older than `before`, keeping the chain anchor. Returns rows deleted."""
        cutoff = iso(before)
        async with self.store.transaction() as db:
            async with db.execute(
                    "SELECT id, hash FROM events WHERE ts < ? ORDER BY id DESC LIMIT 1", (cutoff,)) as cur:
                last = await cur.fetchone()
            if last is None:
                return 0
            cur = await db.execute("DELETE FROM events WHERE id <= ?", (last["id"],))
            for key, value in (("events.anchor_id", str(last["id"])), ("events.anchor_hash", last["hash"])):
                await db.execute("INSERT INTO settings(key, value) VALUES(?, ?) ON CONFLICT(key) "
                                 "DO UPDATE SET value = excluded.value", (key, value))
            return cur.rowcount


def _from_row(r: Any) -> Event:
    return Event(r["id"], parse_iso(r["ts"]), r["type"], r["source"], r["incident_id"],
                 json.loads(r["data"]), r["hash"])
