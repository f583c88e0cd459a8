"""The event log: typed, append-only, hash-chained, delivered to in-process subscribers.

Each row carries `hash = sha256(prev_hash | id | ts | type | source | incident_id | data)`, where
`prev_hash` is the hash of the row before it. `verify()` walks the chain: an edited row breaks
its own hash, a removed row breaks the next row's `prev_hash` (or, at the tail, disagrees with
SQLite's AUTOINCREMENT counter). Retention deletes the oldest rows and keeps the hash of the last
deleted one as the new anchor, so a pruned log still verifies.

Events are committed before subscribers see them: a subscriber never acts on an event that a
crash could lose. `append` writes events inside a transaction the caller already holds (a beat
and its `pulse.beat` event commit together); they are delivered after that transaction commits.

The write path is tuned without changing a byte of what is recorded (tests/test_event_chain_stable.py
holds the hashes the earlier code wrote): the data is validated and serialised by the model's own
pydantic validator and serializer, the canonical JSON comes from the C encoder `json.dumps` uses
(built once, not per call), the tail of the chain is read in one query, and each event's `data` is
the validated dict, not the JSON parsed back. Rows go to SQLite 100 per INSERT statement. `emit`
outside a caller's transaction runs its whole transaction (tail, rows, commit) in one round trip
to SQLite's thread (`Store.run_transaction`).
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import json
import logging
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Awaitable, Callable, Mapping, Sequence

from pydantic import BaseModel, ValidationError

from ._sql import events_listed, events_select
from .clock import Clock, SystemClock, iso, parse_iso
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


def _event(id_: int, ts: datetime, type_: str, source: str, incident_id: int | None, data: dict[str, Any],
           hash_: str) -> Event:
    """`Event(...)` for the batch path: the same object, without the frozen dataclass's
    `object.__setattr__` per field (a sixth of the Python time of writing a batch)."""
    event = object.__new__(Event)
    event.__dict__.update(id=id_, ts=ts, type=type_, source=source, incident_id=incident_id, data=data,
                          hash=hash_)
    return event


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


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _c_encoder() -> Callable[[Any, int], Sequence[str]] | None:
    """The C encoder `json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    default=str)` builds on every call, built once (json.dumps spends half its time building it).
    Without circular-reference markers: the data is a pydantic dump, never circular. None when the
    C accelerator is missing or its signature differs; `_ENCODER.encode` then gives the same text."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    try:
        encode = make(None, str, json.encoder.encode_basestring, None, ":", ",", True, False, True)
        sample = {"b": [1.5, -0.0, 1e16, None, True], "a": "ü \"\\ \n", "c": {"z": 2 ** 70, "y": {}}}
        return encode if "".join(encode(sample, 0)) == _ENCODER.encode(sample) else None
    except Exception:  # another Python's private API: fall back to the public encoder
        return None


_C_ENCODE = _c_encoder()


def _canonical(data: Mapping[str, Any]) -> str:
    """Sorted keys, no spaces, UTF-8 kept: the text the hash covers."""
    if _C_ENCODE is not None:
        return "".join(_C_ENCODE(data, 0))
    return _ENCODER.encode(data)


def _hash(prev: str, id_: int, ts: str, type_: str, source: str, incident_id: int | None, data: str) -> str:
    text = f"{prev}|{id_}|{ts}|{type_}|{source}|{'' if incident_id is None else incident_id}|{data}"
    return hashlib.sha256(text.encode()).hexdigest()


def validate_data(type_: str, data: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    """The event's data as JSON-ready dict, checked against the registered model.

    Raises:
        ValueError: unknown event type or data that does not fit its model (a programming error).
    """
    return _Validator()(type_, data)


class _Validator:
    """`validate_data` for a batch: each type's model, validator and serializer looked up once.
    The model's own pydantic validator and serializer are what `model_validate` and
    `model_dump(mode="json")` call, without their per-call overhead."""

    def __init__(self) -> None:
        self._models: dict[str, tuple[type[BaseModel], Callable[..., Any], Callable[..., Any]]] = {}

    def _load(self, type_: str) -> tuple[type[BaseModel], Callable[..., Any], Callable[..., Any]]:
        # the catalogue is imported by the first write, not with the log: reading events needs none of it
        from .event_types import EVENT_TYPES

        model = EVENT_TYPES.get(type_)
        if model is None:
            raise ValueError(f"unknown event type {type_!r}; register it in fazt_agent.event_types")
        found = self._models[type_] = (model, model.__pydantic_validator__.validate_python,
                                       model.__pydantic_serializer__.to_python)
        return found

    def __call__(self, type_: str, data: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
        model, validate, dump = self._models.get(type_) or self._load(type_)
        if type(data) is model:   # already validated: only dumped
            return dump(data, mode="json")
        if type(data) is not dict:   # the usual shapes (the model, a dict) first: this runs per event of a batch
            if isinstance(data, model):
                return data.model_dump(mode="json")
            data = data.model_dump() if isinstance(data, BaseModel) else dict(data)
        try:
            validated = validate(data)
        except ValidationError as e:
            raise ValueError(f"bad data for event {type_!r}: {e}") from None
        return dump(validated, mode="json")


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
        """Append events in one transaction (the fast path for batches), then deliver them.
        Inside a transaction the caller holds, they join it (and are delivered after its commit)."""
        prepared = _prepare(items)   # validated and serialised before the write lock is taken
        if self.store.in_transaction():   # a savepoint of the caller's transaction, as a nested transaction()
            return await self._join(prepared, savepoint=True)
        # the tail, the rows and the commit in one round trip to SQLite's thread (not four)
        events = await self.store.run_transaction(lambda conn: self._append_now(conn, prepared))
        await self.deliver(events)
        return events

    async def append(self, items: Sequence[NewEvent]) -> list[Event]:
        """Append events inside the write transaction this task holds (`Store.transaction()`),
        without a savepoint of their own: they commit or roll back with the caller's rows, and
        reach subscribers after that commit. Raises ValueError as `emit` does."""
        return await self._join(_prepare(items), savepoint=False)

    async def _join(self, prepared: list[tuple[NewEvent, dict[str, Any], str]], *, savepoint: bool) -> list[Event]:
        """Append inside this task's transaction: the tail and the rows (and the savepoint) in one
        round trip to SQLite's thread (not four); delivered after the caller's commit."""
        events = await self.store.run_in_transaction(lambda conn: self._append_now(conn, prepared),
                                                     savepoint=savepoint)
        await self.store.after_commit(lambda: self.deliver(events))
        return events

    def _append_now(self, conn: sqlite3.Connection,
                    prepared: list[tuple[NewEvent, dict[str, Any], str]]) -> list[Event]:
        """The tail and the rows, on SQLite's thread (`Store.run_transaction`, `run_in_transaction`)."""
        [tail] = conn.execute(_TAIL).fetchall()
        values, events = _chain(prepared, tail, iso(self.clock.now()))
        for sql, rows in _batches(values):
            conn.executemany(sql, rows)
        return events

    async def deliver(self, events: Sequence[Event]) -> None:
        """Hand committed events to the subscribers, in order."""
        if self._subscribers:
            for event in events:
                await self._deliver(event)

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
        """Events filtered by type glob, time, id and incident (`_sql.events_listed`: for the newest of
        a type glob, the newest ids first)."""
        rows: list[Any] = []
        for where, params in events_listed(type_glob, limit, incident_id, newest_first):
            sql, args = events_select(where, params, iso(since) if since is not None else None, after_id,
                                      incident_id, limit, newest_first)
            rows = await self.store.fetchall(sql, args)
            if limit is not None and len(rows) >= limit:
                break
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


# The tail of the chain in one round trip: the last row's hash, else the anchor retention left
# (else GENESIS), and SQLite's AUTOINCREMENT counter (ids are never reused, even after a prune).
_TAIL = ("SELECT (SELECT hash FROM events ORDER BY id DESC LIMIT 1), "
         "(SELECT value FROM settings WHERE key = 'events.anchor_hash'), "
         "(SELECT seq FROM sqlite_sequence WHERE name = 'events')")


_INSERT_ONE = ("INSERT INTO events(id, ts, type, source, incident_id, data, prev_hash, hash) "
               "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
_COLUMNS = 8
_ROWS_PER_INSERT = 100   # 800 parameters: below SQLite's smallest limit (999 before 3.32)
_INSERT_MANY = _INSERT_ONE + ", (?, ?, ?, ?, ?, ?, ?, ?)" * (_ROWS_PER_INSERT - 1)


def _chain(prepared: list[tuple[NewEvent, dict[str, Any], str]], tail: Any, now: str) -> tuple[list[Any], list[Event]]:
    """The rows (one flat list of values) and the events that continue the chain from `tail`
    (the row of `_TAIL`), all stamped `now`."""
    last_hash, anchor, seq = tail
    prev = last_hash if last_hash is not None else anchor if anchor is not None else GENESIS
    next_id = (seq or 0) + 1
    when = parse_iso(now)
    values: list[Any] = []
    events = []
    for n, data, data_json in prepared:
        type_, source, incident_id = n.type, n.source, n.incident_id
        h = _hash(prev, next_id, now, type_, source, incident_id, data_json)
        values += (next_id, now, type_, source, incident_id, data_json, prev, h)
        events.append(_event(next_id, when, type_, source, incident_id, data, h))
        prev = h
        next_id += 1
    return values, events


def _batches(values: list[Any]) -> list[tuple[str, list[list[Any]]]]:
    """Rows given as one flat list of values as `executemany` calls: by `_ROWS_PER_INSERT` rows per
    statement, the rest one row per statement. A statement of 100 rows costs SQLite and the sqlite3
    module about 40 % less per row than `executemany` of a one-row statement (one step and one
    binding pass instead of 100)."""
    width = _COLUMNS * _ROWS_PER_INSERT
    full = len(values) // width * width
    out = []
    if full:
        out.append((_INSERT_MANY, [values[i:i + width] for i in range(0, full, width)]))
    if full < len(values):
        out.append((_INSERT_ONE, [values[i:i + _COLUMNS] for i in range(full, len(values), _COLUMNS)]))
    return out


def _prepare(items: Sequence[NewEvent]) -> list[tuple[NewEvent, dict[str, Any], str]]:
    """Each event with its validated data and that data's canonical JSON."""
    validate, canonical, out = _Validator(), _canonical, []
    for n in items:
        data = validate(n.type, n.data)
        out.append((n, data, canonical(data)))
    return out


def _from_row(r: Any) -> Event:
    return Event(r["id"], parse_iso(r["ts"]), r["type"], r["source"], r["incident_id"],
                 json.loads(r["data"]), r["hash"])
