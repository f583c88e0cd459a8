"""Event log throughput: hash-chained inserts through `EventLog`, beside raw sqlite3.

Into a fresh database opened with `Store.open` (migrations, WAL, synchronous=NORMAL):
  - N `agent.alert` events through `EventLog.emit_many` in batches (one transaction each);
  - 1000 single `EventLog.emit` calls (one transaction each), in a second fresh database;
  - `EventLog.verify()` over the N events (rows/s).
Beside them, in the same run, the very same rows (ids, hashes and all) inserted with plain
sqlite3 `executemany`, same batches and pragmas: once into a plain table with the same
columns, once into the product's table with its indexes. And the Python-side work per event
(validate against the event model, canonical JSON, sha256) timed alone.

Target: >= 10 000 events/s batched. Exit code 0 when met, 1 when missed, 2 for bad arguments.

    python bench/events_throughput.py [--events 20000] [--batch 1000] [--single 1000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import print_json, verdict

TARGET_PER_S = 10_000.0
COLUMNS = "id, ts, type, source, incident_id, data, prev_hash, hash"
PLAIN_TABLE = """CREATE TABLE events (
    id INTEGER PRIMARY KEY, ts TEXT NOT NULL, type TEXT NOT NULL, source TEXT NOT NULL,
    incident_id INTEGER, data TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)"""


def _rate(count: int, seconds: float) -> dict[str, float]:
    return {"count": count, "seconds": seconds, "per_s": count / seconds if seconds > 0 else float("inf")}


async def through_eventlog(tmp: Path, n: int, batch: int, single: int) -> dict[str, Any]:
    from fazt_agent.events import EventLog, NewEvent
    from fazt_agent.store import Store

    store = await Store.open(tmp / "eventlog.db")
    try:
        log = EventLog(store)
        batches = [[NewEvent("agent.alert", {"message": f"bench event {i} of {n}"})
                    for i in range(start, min(start + batch, n))] for start in range(0, n, batch)]
        t0 = time.perf_counter()
        for items in batches:
            await log.emit_many(items)
        batched = _rate(n, time.perf_counter() - t0)
        t0 = time.perf_counter()
        checked = await log.verify()
        verify = _rate(checked.checked, time.perf_counter() - t0)
        verify["ok"] = checked.ok
    finally:
        await store.close()

    store = await Store.open(tmp / "single.db")
    try:
        log = EventLog(store)
        t0 = time.perf_counter()
        for i in range(single):
            await log.emit("agent.alert", {"message": f"bench event {i} of {single}"})
        one_by_one = _rate(single, time.perf_counter() - t0)
    finally:
        await store.close()
    return {"batched": batched, "single": one_by_one, "verify": verify}


def _rows(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT {COLUMNS} FROM events ORDER BY id").fetchall()


def raw_sqlite(db: Path, rows: list[tuple[Any, ...]], batch: int, schema: list[str]) -> dict[str, float]:
    """executemany of `rows` in batches, one BEGIN IMMEDIATE..COMMIT each, WAL + synchronous=NORMAL."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        for statement in schema:
            conn.execute(statement)
        sql = f"INSERT INTO events({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        t0 = time.perf_counter()
        for start in range(0, len(rows), batch):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(sql, rows[start:start + batch])
            conn.execute("COMMIT")
        return _rate(len(rows), time.perf_counter() - t0)
    finally:
        conn.close()


def product_schema() -> list[str]:
    """The events table and its indexes exactly as the product's migration creates them."""
    from fazt_agent._migrations import MIGRATIONS

    statements = [s.strip() for s in MIGRATIONS[0].split(";\n") if s.strip()]
    return [s for s in statements if "events" in s.split("(")[0]]


def prepare_only(n: int) -> dict[str, float]:
    """Validate + canonical JSON + sha256 per event, the Python work emit_many does before SQL."""
    from fazt_agent.events import GENESIS, _canonical, _hash, validate_data

    prev = GENESIS
    t0 = time.perf_counter()
    for i in range(n):
        data = _canonical(validate_data("agent.alert", {"message": f"bench event {i} of {n}"}))
        prev = _hash(prev, i + 1, "2025-01-01T00:00:00.000000Z", "agent.alert", "agent", None, data)
    return _rate(n, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Event log insert and verify throughput.")
    parser.add_argument("--events", type=int, default=20000, help="events to insert batched (default 20000)")
    parser.add_argument("--batch", type=int, default=1000, help="events per emit_many call (default 1000)")
    parser.add_argument("--single", type=int, default=1000, help="events to insert one emit at a time (default 1000)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    if min(args.events, args.batch, args.single) < 1:
        parser.error("--events, --batch and --single must be at least 1")

    with tempfile.TemporaryDirectory(prefix="fazt-bench-events-") as tmp_name:
        tmp = Path(tmp_name)
        result = asyncio.run(through_eventlog(tmp, args.events, args.batch, args.single))
        rows = _rows(tmp / "eventlog.db")
        plain = raw_sqlite(tmp / "raw-plain.db", rows, args.batch, [PLAIN_TABLE])
        indexed = raw_sqlite(tmp / "raw-indexed.db", rows, args.batch, product_schema())
    prep = prepare_only(args.events)
    ok = result["batched"]["per_s"] >= TARGET_PER_S and result["verify"]["ok"]
    report = {"bench": "events_throughput", "events": args.events, "batch": args.batch, **result,
              "raw_sqlite_plain": plain, "raw_sqlite_indexed": indexed, "prepare_only": prep,
              "target": {"batched_per_s": TARGET_PER_S}, "met": ok}
    if args.json:
        print_json(report)
        return 0 if ok else 1

    def row(label: str, r: dict[str, float], unit: str = "events/s") -> None:
        print(f"  {label:44} {r['per_s']:>10,.0f} {unit:9} ({r['count']} in {r['seconds']:.3f} s)")

    print(f"event log throughput: {args.events} agent.alert events, batches of {args.batch}")
    row("EventLog.emit_many (batched, hash-chained)", result["batched"])
    row("EventLog.emit (one per transaction)", result["single"])
    row("raw sqlite3 executemany, plain table", plain)
    row("raw sqlite3 executemany, product indexes", indexed)
    row("prepare only (validate + JSON + sha256)", prep)
    row("EventLog.verify()", result["verify"], "rows/s")
    print(f"  verify: {'chain ok' if result['verify']['ok'] else 'CHAIN BROKEN'}")
    print(f"  target: batched >= {TARGET_PER_S:,.0f} events/s  {verdict(ok)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
