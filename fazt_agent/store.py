"""The SQLite store: one file in the data dir, WAL mode, append-only migrations.

Every write goes through `Store.transaction()` (BEGIN IMMEDIATE under an asyncio lock), so
coroutines of one process never interleave inside a transaction and several processes (the
daemon, the CLI, an MCP server) serialise on SQLite's own lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import Any, AsyncIterator, Iterable

import aiosqlite

from ._migrations import MIGRATIONS
from .errors import StoreError

APPLICATION_ID = 0x46415A54  # "FAZT"


class Store:
    """An open connection to the agent's database."""

    def __init__(self, path: Path, db: aiosqlite.Connection):
        self.path = path
        self.db = db
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, *, migrate: bool = True) -> Store:
        """Open (and create or migrate) the database at `path`.

        Raises:
            StoreError: the file is not a SQLite database, belongs to something else, or is
                newer than this version of fazt-agent.
        """
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = await aiosqlite.connect(path, isolation_level=None, timeout=10.0)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"cannot open database {str(path)!r}: {e}") from None
        db.row_factory = sqlite3.Row
        store = cls(path, db)
        try:
            await store._prepare(migrate)
        except sqlite3.DatabaseError as e:
            await db.close()
            raise StoreError(f"cannot use database {str(path)!r}: {e}") from None
        except StoreError:
            await db.close()
            raise
        return store

    async def _prepare(self, migrate: bool) -> None:
        await self.db.execute("PRAGMA busy_timeout = 10000")
        await self.db.execute("PRAGMA journal_mode = WAL")
        await self.db.execute("PRAGMA synchronous = NORMAL")
        await self.db.execute("PRAGMA foreign_keys = ON")
        app_id = await self.scalar("PRAGMA application_id")
        version = await self.scalar("PRAGMA user_version")
        if app_id not in (0, APPLICATION_ID):
            raise StoreError(f"{str(self.path)!r} is a SQLite database of another program")
        if version > len(MIGRATIONS):
            raise StoreError(
                f"database {str(self.path)!r} has schema version {version}, newer than this "
                f"fazt-agent knows ({len(MIGRATIONS)}); upgrade fazt-agent")
        if version < len(MIGRATIONS) and migrate:
            await self._migrate(version)

    async def _migrate(self, version: int) -> None:
        async with self.transaction() as db:
            # Re-read under the write lock: another process may have migrated meanwhile.
            current = (await (await db.execute("PRAGMA user_version")).fetchone())[0]
            for number, script in enumerate(MIGRATIONS[current:], start=current + 1):
                for statement in _statements(script):
                    await db.execute(statement)
                await db.execute(f"PRAGMA user_version = {number}")
            await db.execute(f"PRAGMA application_id = {APPLICATION_ID}")

    async def close(self) -> None:
        await self.db.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction: BEGIN IMMEDIATE ... COMMIT, rolled back on error or cancellation."""
        async with self._lock:
            await self._to_the_end("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                await self._to_the_end("ROLLBACK")
                raise
            else:
                await self._to_the_end("COMMIT")

    async def _to_the_end(self, sql: str) -> None:
        """Run a transaction-control statement that a cancellation cannot cut in half.

        A cancelled await would leave the connection inside (or outside) a transaction without
        this coroutine knowing; so the statement always completes before CancelledError goes on.
        """
        statement = asyncio.ensure_future(self.db.execute(sql))
        try:
            await asyncio.shield(statement)
        except asyncio.CancelledError:
            await asyncio.wait([statement])
            if sql.startswith("BEGIN") and not statement.exception():
                await asyncio.shield(self.db.execute("ROLLBACK"))
            raise

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        async with self._lock:
            async with self.db.execute(sql, tuple(params)) as cur:
                return list(await cur.fetchall())

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        async with self._lock:
            async with self.db.execute(sql, tuple(params)) as cur:
                return await cur.fetchone()

    async def scalar(self, sql: str, params: Iterable[Any] = ()) -> Any:
        row = await self.fetchone(sql, params)
        return None if row is None else row[0]

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> int:
        """Run one write statement in its own transaction; returns the rows changed."""
        async with self.transaction() as db:
            cur = await db.execute(sql, tuple(params))
            return cur.rowcount

    async def get_setting(self, key: str) -> str | None:
        return await self.scalar("SELECT value FROM settings WHERE key = ?", (key,))

    async def set_setting(self, key: str, value: str) -> None:
        await self.execute(
            "INSERT INTO settings(key, value) VALUES(?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";\n") if s.strip()]
