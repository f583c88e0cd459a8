"""The store's memory stays bounded while its tables grow (bench/soak.py: the daemon's RSS is flat).

SQLite keeps every page it touches until its page cache is full, and the agent's tables only grow,
so the cache's size is how far the daemon's memory climbs before it levels off. Measured with
SQLite's own allocation counter (`sqlite3_memory_used`) in this process, around real writes to a
real database file.
"""

from __future__ import annotations

import ctypes
import gc
import ctypes.util
from pathlib import Path
from typing import Callable

import _sqlite3

from fazt_agent.events import EventLog, NewEvent
from fazt_agent.store import Store

MIB = 1024 * 1024


def _memory_used() -> Callable[[], int]:
    """sqlite3_memory_used() of the SQLite library the sqlite3 module uses (linked in, or shared)."""
    for name in (_sqlite3.__file__, ctypes.util.find_library("sqlite3")):
        try:
            fn = ctypes.CDLL(name).sqlite3_memory_used
        except (OSError, AttributeError, TypeError):
            continue
        fn.restype = ctypes.c_int64
        return fn
    raise AssertionError("cannot find sqlite3_memory_used in the SQLite library the sqlite3 module uses")


async def test_sqlite_memory_levels_off_while_the_event_log_grows(tmp_path: Path) -> None:
    memory_used = _memory_used()
    gc.collect()   # the counter is the process's: connections earlier tests left to the collector go first
    store = await Store.open(tmp_path / "agent.db")
    try:
        log = EventLog(store)
        before = memory_used()
        grew = []
        for batch in range(12):   # about 12 MB of events, far more than any page cache holds
            await log.emit_many([NewEvent("agent.alert", {"message": f"{batch}-{i} " + "x" * 200})
                                 for i in range(2000)])
            grew.append(memory_used() - before)
        size = (tmp_path / "agent.db").stat().st_size + (tmp_path / "agent.db-wal").stat().st_size
    finally:
        await store.close()
    assert size > 8 * MIB, f"the database holds only {size} bytes: the test wrote too little"
    assert max(grew) != min(grew) or grew[-1] != 0, \
        "sqlite3_memory_used did not move: the counter is not the store's library"
    # the default 2 MB page cache would let it climb past 2 MiB; the store's cache stops well below
    assert max(grew) <= 1 * MIB, f"SQLite memory grew by {max(grew) / MIB:.2f} MiB while the log grew: {grew}"
    assert grew[-1] - grew[len(grew) // 2] <= 64 * 1024, f"still growing in the second half: {grew}"
