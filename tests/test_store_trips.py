"""Reads and writes on the path of every MCP call without a round trip per statement to SQLite's
thread: `Store.peek` (a read on the caller's thread, on a second connection),
`Store.run_transaction` (a whole write transaction as one piece of work of that thread) and
`Store.run_in_transaction`/`write` (a piece of the transaction the task holds, within a savepoint),
with real database files and a second connection standing in for another process."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from contextlib import closing
from pathlib import Path

import pytest

from fazt_agent.events import EventLog
from fazt_agent.store import Store

SETTING = "SELECT value FROM settings WHERE key = 'k'"


def count_trips(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The pieces of work the store hands SQLite's thread from now on, by the name of their function."""
    trips: list[str] = []
    real = type(store.db)._execute

    async def counted(self: object, fn: object, *args: object, **kwargs: object) -> object:
        trips.append(getattr(fn, "__name__", repr(fn)))
        return await real(self, fn, *args, **kwargs)   # type: ignore[arg-type]

    monkeypatch.setattr(type(store.db), "_execute", counted)
    return trips


async def test_peek_sees_every_commit_at_once_and_a_transaction_its_own_writes(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "agent.db")
    try:
        await store.set_setting("k", "1")
        assert [r["value"] for r in await store.peek(SETTING)] == ["1"]
        with closing(sqlite3.connect(tmp_path / "agent.db", isolation_level=None)) as other:   # another process
            other.execute("UPDATE settings SET value = '2' WHERE key = 'k'")
        assert [r["value"] for r in await store.peek(SETTING)] == ["2"]   # nothing cached
        async with store.transaction() as db:
            await db.execute("UPDATE settings SET value = '3' WHERE key = 'k'")
            assert [r["value"] for r in await store.peek(SETTING)] == ["3"]   # its own, uncommitted write
            with closing(sqlite3.connect(tmp_path / "agent.db")) as other:
                assert other.execute(SETTING).fetchone()[0] == "2"
        assert [r["value"] for r in await store.peek(SETTING)] == ["3"]
    finally:
        await store.close()
    assert not (tmp_path / "agent.db-wal").exists()   # both connections closed: the last one checkpointed


async def test_run_transaction_commits_whole_or_nothing_even_when_its_caller_is_cancelled(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "agent.db")
    try:
        log = EventLog(store)

        def half(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO settings(key, value) VALUES ('k', 'half')")
            raise OSError("disk full")

        with pytest.raises(OSError, match="disk full"):
            await store.run_transaction(half)
        assert await store.peek(SETTING) == []
        await log.emit("agent.paused", {"by": "cli"})
        # cancelled once its transaction is under way: the event is written whole, then the
        # cancellation goes on
        task = asyncio.ensure_future(log.emit("agent.resumed", {"by": "cli"}))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with store.transaction():   # the store is usable: no transaction was left open
            pass
        assert [e.type for e in await log.list(newest_first=False)] == ["agent.paused", "agent.resumed"]
        assert (await log.verify()).ok
        with pytest.raises(RuntimeError, match="inside a transaction"):
            async with store.transaction():
                await store.run_transaction(lambda conn: None)
    finally:
        await store.close()


async def test_fetchone_is_one_round_trip_and_reads_inside_a_transaction(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    store = await Store.open(tmp_path / "agent.db")
    try:
        await store.set_setting("k", "1")
        trips = count_trips(store, monkeypatch)
        row = await store.fetchone(SETTING)
        assert row is not None and row["value"] == "1" and len(trips) == 1
        assert await store.fetchone("SELECT value FROM settings WHERE key = 'none'") is None
        assert await store.fetchone("SELECT value FROM settings ORDER BY key") is not None   # the rest not read
        async with store.transaction() as db:
            await db.execute("UPDATE settings SET value = '2' WHERE key = 'k'")
            inside = await store.fetchone(SETTING)   # on the transaction: sees its own write
        assert inside is not None and inside["value"] == "2"
    finally:
        await store.close()


async def test_writes_inside_a_transaction_are_one_round_trip_each_and_a_failed_one_undoes_only_itself(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`Store.write` (and `execute`, an event, a notification) inside a transaction: one piece of
    work of SQLite's thread, within a savepoint; outside one: its own transaction, one piece too."""
    store = await Store.open(tmp_path / "agent.db")
    try:
        log = EventLog(store)
        trips = count_trips(store, monkeypatch)
        assert await store.execute("INSERT INTO settings(key, value) VALUES ('a', '1')") == 1
        assert trips == ["_whole"]   # BEGIN, the statement and COMMIT together

        def half(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO settings(key, value) VALUES ('b', 'half')")
            raise sqlite3.IntegrityError("refused")

        trips.clear()
        async with store.transaction():
            await store.execute("UPDATE settings SET value = '2' WHERE key = 'a'")
            await log.emit("agent.paused", {"by": "cli"})
            with pytest.raises(sqlite3.IntegrityError, match="refused"):
                await store.write(half)
        # BEGIN, the update, the event (its tail, its row, its savepoint), the failed write, COMMIT
        assert trips == ["execute", "_part", "_part", "_part", "execute"]
        rows = {r["key"]: r["value"] for r in await store.fetchall("SELECT key, value FROM settings")}
        assert rows.get("a") == "2" and "b" not in rows   # the failed write undone, the rest committed
        assert [e.type for e in await log.list()] == ["agent.paused"]

        with pytest.raises(RuntimeError, match="outside a transaction"):
            await store.run_in_transaction(lambda conn: None)
        with pytest.raises(OSError):   # the whole transaction rolls back: the event goes with it
            async with store.transaction():
                await log.emit("agent.resumed", {"by": "cli"})
                raise OSError("disk full")
        # cancelled while its piece runs on SQLite's thread: the piece ends whole (its savepoint
        # released), then the transaction rolls back, and the store stays usable
        started, release = threading.Event(), threading.Event()

        def slow(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO settings(key, value) VALUES ('c', '1')")
            started.set()
            release.wait(10)

        async def cancelled() -> None:
            async with store.transaction():
                await store.write(slow)
                await store.execute("INSERT INTO settings(key, value) VALUES ('d', '1')")

        task = asyncio.ensure_future(cancelled())
        assert await asyncio.to_thread(started.wait, 10)
        task.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not store.db._conn.in_transaction
        assert {r["key"] for r in await store.fetchall("SELECT key FROM settings")} & {"c", "d"} == set()
        async with store.transaction():
            await log.emit("agent.resumed", {"by": "cli"})
        assert [e.type for e in await log.list(newest_first=False)] == ["agent.paused", "agent.resumed"]
        assert (await log.verify()).ok
    finally:
        await store.close()
