"""The SQLite store: one file in the data dir, WAL mode, append-only migrations.

Every write goes through `Store.transaction()` (BEGIN IMMEDIATE under an asyncio lock), so
coroutines of one process never interleave inside a transaction and several processes (the
daemon, the CLI, an MCP server) serialise on SQLite's own lock. A transaction opened inside
another one by the same task joins it (a SAVEPOINT), so steps that must not be separated by a
crash — a decision, its halt, the halt's event and its notification — commit together; what must
wait for the commit (delivering events, sending a notification) is queued with `after_commit`.

Work that a process takes on is owned: rows record `owner()` (pid, process start, pid namespace,
boot) and a lease renewed while the work runs, and another process takes the work over only when
`stale()` says the owner is gone or its lease expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Coroutine, Iterable, TypeVar

import aiosqlite

from ._migrations import MIGRATIONS
from .clock import parse_iso
from .errors import StoreError

log = logging.getLogger(__name__)
APPLICATION_ID = 0x46415A54  # "FAZT"
LEASE = 120.0          # seconds an owner's claim holds without renewal; renewed every LEASE / 4
HELD_LIMIT = 600.0     # how long closing the store waits for held work (each piece has its own timeout)
# SQLite keeps every page it touches until its page cache is full; the tables only grow, so the
# default 2 MB cache fills over hours (1-2 h at a 5 s pulse) and reads as a leak in the daemon's RSS.
# A small cache plateaus within minutes; the OS page cache still holds the file for reads.
CACHE_KIB = 512
T = TypeVar("T")
AfterCommit = Callable[[], Awaitable[None]]


class Store:
    """An open connection to the agent's database."""

    def __init__(self, path: Path, db: aiosqlite.Connection):
        self.path = path
        self.db = db
        self._lock = asyncio.Lock()
        self._tx_task: asyncio.Task[Any] | None = None   # the task inside the open transaction
        self._savepoints = 0
        self._after: list[AfterCommit] = []
        self._held: set[asyncio.Task[Any]] = set()
        self._peeker: sqlite3.Connection | None = None   # `peek`'s connection, opened at its first use

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
        await self.db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
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
        """Close the connection, once the work held with `hold` has finished (at most HELD_LIMIT)."""
        if self._held:
            log.info("waiting for %d piece(s) of work to finish before closing the store", len(self._held))
            _, late = await asyncio.wait(set(self._held), timeout=HELD_LIMIT)
            for task in late:
                log.warning("work %r still running after %gs; closing the store anyway", task.get_name(),
                            HELD_LIMIT)
        if self._peeker is not None:
            self._peeker.close()
            self._peeker = None
        await self.db.close()

    # -- transactions ---------------------------------------------------------------------

    def in_transaction(self) -> bool:
        """Whether the current task is inside a transaction of this store."""
        return self._tx_task is not None and asyncio.current_task() is self._tx_task

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction: BEGIN IMMEDIATE ... COMMIT, rolled back on error or cancellation.

        Inside another transaction of the same task it is a SAVEPOINT of it: its changes commit
        with the outer one, and an error inside rolls back only its own part. Never await another
        task that uses the store inside a transaction (it would wait for this one to end).
        """
        if self.in_transaction():
            async with self._savepoint():
                yield self.db
            return
        async with self._lock:
            await self._to_the_end("BEGIN IMMEDIATE", undo="ROLLBACK")
            self._tx_task, self._after = asyncio.current_task(), []
            try:
                try:
                    yield self.db
                except BaseException:
                    await self._to_the_end("ROLLBACK")
                    raise
                try:
                    await self._to_the_end("COMMIT")
                except Exception:
                    await self._to_the_end("ROLLBACK")
                    raise
            finally:
                after, self._after, self._tx_task, self._savepoints = self._after, [], None, 0
        for callback in after:
            try:
                await callback()
            except Exception:  # the commit stands; one failed follow-up must not hide the others
                log.exception("a step after a commit failed: %r", callback)

    async def run_transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn(connection)` as one write transaction run whole in SQLite's thread: BEGIN IMMEDIATE,
        `fn`, COMMIT, or ROLLBACK when `fn` or the commit raises. One round trip to that thread
        instead of one per statement (each ~0.1 ms on a busy event loop: the thread and the loop
        wake each other), for short writes on a hot path (an event per MCP call). `fn` runs on the
        other thread: it touches the connection and its own arguments, nothing of the event loop.

        A cancellation cannot cut it in half: the transaction ends whole, then CancelledError goes
        on. Not inside a transaction of this task (use `transaction()`, which joins it).
        """
        if self.in_transaction():
            raise RuntimeError("run_transaction() inside a transaction of the same task")
        async with self._lock:
            # aiosqlite's queue of work for its thread (Connection._execute): the public calls run
            # one statement each
            return await unstoppable(self.db._execute(_whole, self.db._conn, fn))

    async def run_in_transaction(self, fn: Callable[[sqlite3.Connection], T], *, savepoint: bool = True) -> T:
        """`fn(connection)` run whole in SQLite's thread inside the transaction this task holds
        (`transaction()`), in one round trip (a savepoint, `fn` and its release would be four or
        more): within a SAVEPOINT of its own, rolled back to when `fn` raises, as a nested
        `transaction()` is; with `savepoint=False`, as part of the caller's own statements. `fn`
        runs on the other thread, as for `run_transaction`. A cancellation cannot cut it in half.
        """
        if not self.in_transaction():
            raise RuntimeError("run_in_transaction() outside a transaction of this task")
        return await unstoppable(self.db._execute(_part, self.db._conn, fn, savepoint))

    @contextlib.asynccontextmanager
    async def _savepoint(self) -> AsyncIterator[None]:
        self._savepoints += 1
        name = f"sp{self._savepoints}"
        await self._to_the_end(f"SAVEPOINT {name}", undo=f"ROLLBACK TO {name}; RELEASE {name}")
        try:
            yield
        except BaseException:
            await self._to_the_end(f"ROLLBACK TO {name}")
            await self._to_the_end(f"RELEASE {name}")
            raise
        await self._to_the_end(f"RELEASE {name}")

    async def after_commit(self, callback: AfterCommit) -> None:
        """Run `callback` once the current transaction has committed (dropped if it rolls back);
        outside a transaction, now."""
        if self.in_transaction():
            self._after.append(callback)
        else:
            await callback()

    async def _to_the_end(self, sql: str, undo: str | None = None) -> None:
        """Run transaction-control statements that a cancellation cannot cut in half.

        A cancelled await would leave the connection inside (or outside) a transaction without
        this coroutine knowing, and the next BEGIN would fail with "cannot start a transaction
        within a transaction". So the statement always completes, however often the task is
        cancelled meanwhile (anyio cancels again at every await); its error is always retrieved;
        and when the task was cancelled, what the statement opened is undone (`undo`) before
        CancelledError goes on.
        """
        cancelled = False
        for part in sql.split("; "):
            statement = asyncio.ensure_future(self.db.execute(part))
            while not statement.done():
                try:
                    await asyncio.shield(statement)
                except asyncio.CancelledError:
                    cancelled = True
                except Exception:
                    pass  # raised below, from the statement itself
            error = statement.exception()
            if error is not None:
                raise error
        if cancelled:
            if undo is not None:
                await self._to_the_end(undo)
            raise asyncio.CancelledError

    async def hold(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` to its end even if the caller is cancelled (an MCP client that went away, a
        server stopping on its parent's death): work this process took on — an approved plan — is
        finished and recorded, never abandoned half-way. `close()` waits for it."""
        task: asyncio.Task[T] = asyncio.ensure_future(coro)
        self._held.add(task)
        task.add_done_callback(self._held.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_report_orphan)  # nobody awaits it any more: its end goes to the log
            raise

    # -- reads and single writes ----------------------------------------------------------

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        async with self._reading():
            # one round trip to SQLite's thread (execute, fetch and close would be three)
            return list(await self.db.execute_fetchall(sql, tuple(params)))

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        async with self._reading():
            # one round trip to SQLite's thread, as `fetchall` (execute, fetchone and close would be three)
            return await self.db._execute(_first, self.db._conn, sql, tuple(params))

    async def peek(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        """`fetchall` for a short read on the path of every request (a bearer token, an MCP
        tool's read): run on this thread, on a second connection of this store, without the round
        trip to SQLite's thread (the thread and the event loop wake each other: ~0.1 ms on a busy
        machine). It sees every commit made before it, by any process. It never waits: when SQLite
        would (a recovery, or a checkpoint resetting the WAL in another process), or that
        connection cannot be opened, or the task is inside a transaction of this store (whose own
        writes only its connection sees), it reads with `fetchall` instead.
        """
        if not self.in_transaction():
            try:
                return self._peek(sql, tuple(params))
            except sqlite3.Error:
                pass
        return await self.fetchall(sql, params)

    def _peek(self, sql: str, params: tuple[Any, ...]) -> list[sqlite3.Row]:
        if self._peeker is None:
            db = sqlite3.connect(self.path, timeout=0, isolation_level=None)   # busy timeout 0: never waits
            try:
                db.row_factory = sqlite3.Row
                db.execute("PRAGMA query_only = ON")
                db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            except sqlite3.Error:
                db.close()
                raise
            self._peeker = db
        return self._peeker.execute(sql, params).fetchall()

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[None]:
        """Inside our own transaction, read on it (it sees its own writes); else take the lock."""
        if self.in_transaction():
            yield
        else:
            async with self._lock:
                yield

    async def scalar(self, sql: str, params: Iterable[Any] = ()) -> Any:
        row = await self.fetchone(sql, params)
        return None if row is None else row[0]

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> int:
        """Run one write statement in its own transaction (inside this task's transaction, a
        savepoint of it); returns the rows changed. One round trip to SQLite's thread."""
        args = tuple(params)
        return await self.write(lambda conn: conn.execute(sql, args).rowcount)

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn(connection)` on SQLite's thread in one round trip, as `transaction()` would run its
        statements: inside this task's transaction a savepoint of it (`run_in_transaction`), else a
        transaction of its own (`run_transaction`)."""
        if self.in_transaction():
            return await self.run_in_transaction(fn)
        return await self.run_transaction(fn)

    async def get_setting(self, key: str) -> str | None:
        return await self.scalar("SELECT value FROM settings WHERE key = ?", (key,))

    async def set_setting(self, key: str, value: str) -> None:
        await self.execute(
            "INSERT INTO settings(key, value) VALUES(?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))


def _first(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> sqlite3.Row | None:
    """`Store.fetchone`'s work, on SQLite's thread: the first row, the rest not read."""
    cur = conn.execute(sql, params)
    try:
        row: sqlite3.Row | None = cur.fetchone()
        return row
    finally:
        cur.close()


def _whole(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """`Store.run_transaction`'s work, on SQLite's thread."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _part(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T], savepoint: bool) -> T:
    """`Store.run_in_transaction`'s work, on SQLite's thread."""
    if not savepoint:
        return fn(conn)
    conn.execute("SAVEPOINT part")
    try:
        result = fn(conn)
    except BaseException:
        conn.execute("ROLLBACK TO part")
        conn.execute("RELEASE part")
        raise
    conn.execute("RELEASE part")
    return result


def _report_orphan(task: asyncio.Task[Any]) -> None:
    """The end of held work whose caller went away (its error retrieved, so never "Task exception
    was never retrieved"; its own records say what it did)."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("work %r failed after its caller went away: %s: %s", task.get_name(), type(error).__name__, error)


async def unstoppable(coro: Coroutine[Any, Any, T]) -> T:
    """Await `coro` to its end even if this task is cancelled meanwhile (once or again and again),
    then let the cancellation go on. For the short record of an interruption itself."""
    task: asyncio.Task[T] = asyncio.ensure_future(coro)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
        except Exception:
            pass
    result = task.result()
    if cancelled:
        raise asyncio.CancelledError
    return result


# -- owners ---------------------------------------------------------------------------------

def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of process `pid`, None if there is none."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], fields[19]


def _namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid").removeprefix("pid:[").removesuffix("]")
    except OSError:
        return ""


def _boot() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()[:8]
    except OSError:
        return socket.gethostname()


def owner(pid: int | None = None) -> str:
    """This process (or `pid`) as an owner: `PID/START/PIDNS/BOOT`, unique across pid reuse."""
    pid = os.getpid() if pid is None else pid
    stat = _stat(pid)
    return f"{pid}/{stat[1] if stat else ''}/{_namespace()}/{_boot()}"


def owner_pid(value: str | None) -> int | None:
    """The pid of an owner string, for messages."""
    try:
        return int((value or "").split("/")[0])
    except ValueError:
        return None


def gone(value: str | None) -> bool:
    """Whether the owner process has certainly ended: no owner recorded (an older version), another
    boot, or no process with that pid and start time (a zombie counts as ended). An owner in another
    pid namespace cannot be seen from here: only its lease tells."""
    if not value:
        return True
    try:
        pid_text, start, namespace, boot = value.split("/")
        pid = int(pid_text)
    except ValueError:
        return True
    if boot != _boot():
        return True
    if namespace != _namespace():
        return False
    stat = _stat(pid)
    if stat is None:
        if start:  # recorded where /proc exists: the process is gone
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    state, started = stat
    return state in ("Z", "X") or (bool(start) and started != start)


def stale(value: str | None, lease_until: str | None, now: datetime) -> bool:
    """Whether work owned by `value` under a lease until `lease_until` may be taken over at `now`:
    its owner is gone, or stopped renewing its lease."""
    if gone(value):
        return True
    return lease_until is not None and parse_iso(lease_until) <= now


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";\n") if s.strip()]
