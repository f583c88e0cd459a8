"""Event log throughput: hash-chained inserts through `EventLog`, beside raw sqlite3.

Per round, into fresh databases opened side by side: N `agent.alert` events through
`EventLog.emit_many` in batches (one transaction each) into a database opened with `Store.open`
(migrations, WAL, synchronous=NORMAL); and the very same rows (ids, hashes and all, written once
by the event log before the rounds) inserted with plain sqlite3, same batches and pragmas: with
`executemany` into the product's table with its indexes (the anchor), with `executemany` into a
plain table with the same columns, and into the product's table 100 rows per INSERT statement
(what `EventLog` does; shown so the anchor's choice of statement is visible). The four take turns
batch by batch (the event log first in even batches, last in odd ones), so the machine's drift
(another tenant, the CPU's clock, a checkpoint's fsync) falls on all of them alike: on this kind
of shared 2-core VM the same work varies by a third from one second to the next, which rounds of
whole runs one after the other could not tell apart from a 10 % change. The ratio is the median
of the rounds' ratios (event log / raw executemany with the product's indexes, events per second
of wall time), with the pooled ratio and CPU time per event beside it.

Once: 1000 single `EventLog.emit` calls (one transaction each) in a second fresh database;
`EventLog.verify()` over the N events; the Python work per event (validate against the event
model, canonical JSON, sha256) alone; and beats of the shipped shape (2 results) stored with their
`pulse.beat` event in one transaction (`BeatStore.save(beat, events)`) against the same beat and
event in two transactions (`save`, then `emit`: how they were written before).

Targets: >= 10 000 events/s batched, and batched >= 50 % of raw `executemany` with the same
indexes. Exit code 0 when met, 1 when missed, 2 for bad arguments.

    python bench/events_throughput.py [--events 20000] [--batch 1000] [--single 1000] [--rounds 5] [--json]
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
TARGET_RATIO = 0.5          # of raw executemany into the product's table and indexes
ROWS_PER_INSERT = 100       # as fazt_agent.events._ROWS_PER_INSERT
COLUMNS = "id, ts, type, source, incident_id, data, prev_hash, hash"
PLAIN_TABLE = """CREATE TABLE events (
    id INTEGER PRIMARY KEY, ts TEXT NOT NULL, type TEXT NOT NULL, source TEXT NOT NULL,
    incident_id INTEGER, data TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)"""


def _rate(count: int, seconds: float, cpu: float | None = None) -> dict[str, float]:
    rate = {"count": count, "seconds": seconds, "per_s": count / seconds if seconds > 0 else float("inf")}
    if cpu is not None:
        rate["cpu_us_per_event"] = cpu / count * 1e6
    return rate


def _alerts(n: int, batch: int) -> list[list[Any]]:
    """N `agent.alert` events in lists of `batch`, as the event log takes them."""
    from fazt_agent.events import NewEvent

    return [[NewEvent("agent.alert", {"message": f"bench event {i} of {n}"})
             for i in range(start, min(start + batch, n))] for start in range(0, n, batch)]


async def write_rows(db: Path, n: int, batch: int) -> None:
    """N events through `EventLog.emit_many` into a fresh database: the rows the raw inserts write."""
    from fazt_agent.events import EventLog
    from fazt_agent.store import Store

    store = await Store.open(db)
    try:
        log = EventLog(store)
        for items in _alerts(n, batch):
            await log.emit_many(items)
    finally:
        await store.close()


async def single_and_verify(tmp: Path, db: Path, single: int) -> dict[str, Any]:
    """`verify()` over the events in `db`; `single` emit calls into a fresh database."""
    from fazt_agent.events import EventLog
    from fazt_agent.store import Store

    store = await Store.open(db)
    try:
        t0 = time.perf_counter()
        checked = await EventLog(store).verify()
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
    return {"single": one_by_one, "verify": verify}


async def beats_with_event(tmp: Path, n: int) -> dict[str, Any]:
    """ms per beat (2 results, the shipped checks' shape) stored with its `pulse.beat` event: in
    the beat's transaction, and in a second transaction after it (save, then emit)."""
    import inspect
    from datetime import datetime, timezone

    from fazt_agent.event_types import PulseBeat
    from fazt_agent.events import EventLog
    from fazt_agent.pulse.base import CheckResult
    from fazt_agent.pulse.beats import BeatStore
    from fazt_agent.pulse.runner import BeatResult
    from fazt_agent.store import Store

    results = [CheckResult("system", "system", "", "ok", "cpu 3 %, load 0.1", {"cpu_percent": 3.0}, {}, 2.0),
               CheckResult("disk", "disk", "/", "ok", "/ 41 % used", {"used_percent": 41.0}, {}, 1.0)]
    shared = "events" in inspect.signature(BeatStore.save).parameters   # an older version: two transactions only
    out: dict[str, Any] = {}
    # twice each, alternating (the first of each warms up); the last counts
    for mode in ("shared", "separate", "shared", "separate") if shared else ("separate", "separate"):
        store = await Store.open(tmp / f"beats-{mode}.db")
        try:
            beats, log = BeatStore(store), EventLog(store)
            t0 = time.perf_counter()
            for _ in range(n):
                beat = BeatResult(ts=datetime.now(timezone.utc), results=results, duration_ms=3.0, host="bench")
                if mode == "shared":
                    await beats.save(beat, log)
                else:
                    beat_id = await beats.save(beat)
                    await log.emit("pulse.beat", PulseBeat(beat_id=beat_id, status=beat.status, duration_ms=3.0,
                                                           counts={"ok": 2}, problems=[]), source="pulse")
            out[mode] = {"beats": n, "ms_per_beat": (time.perf_counter() - t0) / n * 1000}
        finally:
            await store.close()
        (tmp / f"beats-{mode}.db").unlink()
    return out


def _rows(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT {COLUMNS} FROM events ORDER BY id").fetchall()


def raw_connection(db: Path, schema: list[str]) -> sqlite3.Connection:
    """A plain sqlite3 connection with the product's pragmas (WAL, synchronous=NORMAL) and `schema`."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    for statement in schema:
        conn.execute(statement)
    return conn


def raw_batch(conn: sqlite3.Connection, part: list[tuple[Any, ...]], per_statement: int = 1) -> None:
    """One batch in one BEGIN IMMEDIATE..COMMIT: executemany of a one-row INSERT, or (`per_statement`
    > 1) INSERTs of that many rows each, the rest one by one."""
    sql = f"INSERT INTO events({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    many = sql + ", (?, ?, ?, ?, ?, ?, ?, ?)" * (per_statement - 1)
    conn.execute("BEGIN IMMEDIATE")
    full = len(part) // per_statement * per_statement if per_statement > 1 else 0
    if full:
        conn.executemany(many, [[v for r in part[i:i + per_statement] for v in r]
                                for i in range(0, full, per_statement)])
    conn.executemany(sql, part[full:])
    conn.execute("COMMIT")


async def interleaved(tmp: Path, r: int, rows: list[tuple[Any, ...]], batch: int) -> dict[str, dict[str, float]]:
    """One round: the event log and the three raw inserts, taking turns batch by batch, each into a
    fresh database; the wall and CPU time each spent in its own batches."""
    from fazt_agent.events import EventLog
    from fazt_agent.store import Store

    n = len(rows)
    raws = {"indexed": (raw_connection(tmp / f"raw-indexed-{r}.db", product_schema()), 1),
            "plain": (raw_connection(tmp / f"raw-plain-{r}.db", [PLAIN_TABLE]), 1),
            "multirow": (raw_connection(tmp / f"raw-multirow-{r}.db", product_schema()), ROWS_PER_INSERT)}
    store = await Store.open(tmp / f"eventlog-{r}.db")
    spent = {name: [0.0, 0.0] for name in ("batched", *raws)}
    try:
        log = EventLog(store)
        for k, items in enumerate(_alerts(n, batch)):
            part = rows[k * batch:(k + 1) * batch]
            for name in ("batched", *raws) if k % 2 == 0 else (*raws, "batched"):
                c0, t0 = time.process_time(), time.perf_counter()
                if name == "batched":
                    await log.emit_many(items)
                else:
                    conn, per_statement = raws[name]
                    raw_batch(conn, part, per_statement)
                spent[name][0] += time.perf_counter() - t0
                spent[name][1] += time.process_time() - c0
    finally:
        await store.close()
        for conn, _ in raws.values():
            conn.close()
    return {name: _rate(n, seconds, cpu) for name, (seconds, cpu) in spent.items()}


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


def _median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    """The run with the median events/s (its own seconds and CPU time with it)."""
    return sorted(runs, key=lambda r: r["per_s"])[len(runs) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Event log insert and verify throughput.")
    parser.add_argument("--events", type=int, default=20000, help="events to insert batched (default 20000)")
    parser.add_argument("--batch", type=int, default=1000, help="events per emit_many call (default 1000)")
    parser.add_argument("--single", type=int, default=1000, help="events to insert one emit at a time (default 1000)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of event log and raw (default 5)")
    parser.add_argument("--beats", type=int, default=300, help="beats stored with their event, each way (default 300)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    if min(args.events, args.batch, args.single, args.rounds, args.beats) < 1:
        parser.error("--events, --batch, --single, --rounds and --beats must be at least 1")

    runs: dict[str, list[dict[str, float]]] = {"batched": [], "plain": [], "indexed": [], "multirow": []}
    ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="fazt-bench-events-") as tmp_name:
        tmp = Path(tmp_name)
        # the rows the raw inserts write: the event log's own, written once before the rounds
        asyncio.run(write_rows(tmp / "rows.db", args.events, args.batch))
        rows = _rows(tmp / "rows.db")
        for r in range(args.rounds):
            for name, rate in asyncio.run(interleaved(tmp, r, rows, args.batch)).items():
                runs[name].append(rate)
            ratios.append(runs["batched"][-1]["per_s"] / runs["indexed"][-1]["per_s"])
        result = asyncio.run(single_and_verify(tmp, tmp / f"eventlog-{args.rounds - 1}.db", args.single))
        beat_modes = asyncio.run(beats_with_event(tmp, args.beats))
    prep = prepare_only(args.events)
    ratio = sorted(ratios)[len(ratios) // 2]
    pooled = sum(r["seconds"] for r in runs["indexed"]) / sum(r["seconds"] for r in runs["batched"])
    cpu_ratio = (sum(r["cpu_us_per_event"] for r in runs["indexed"])
                 / sum(r["cpu_us_per_event"] for r in runs["batched"]))
    batched_rate = _median_of(runs["batched"])
    ok = batched_rate["per_s"] >= TARGET_PER_S and ratio >= TARGET_RATIO and result["verify"]["ok"]
    report = {"bench": "events_throughput", "events": args.events, "batch": args.batch, "rounds": args.rounds,
              "batched": batched_rate, **result,
              "raw_sqlite_plain": _median_of(runs["plain"]), "raw_sqlite_indexed": _median_of(runs["indexed"]),
              "raw_sqlite_indexed_multirow": _median_of(runs["multirow"]),
              "ratio_to_raw_indexed": ratio, "ratios": ratios, "ratio_pooled": pooled, "cpu_ratio_pooled": cpu_ratio,
              "prepare_only": prep,
              "beat_with_event": beat_modes,
              "target": {"batched_per_s": TARGET_PER_S, "ratio_to_raw_indexed": TARGET_RATIO}, "met": ok}
    if args.json:
        print_json(report)
        return 0 if ok else 1

    def row(label: str, r: dict[str, float], unit: str = "events/s") -> None:
        cpu = f"  {r['cpu_us_per_event']:5.2f} us CPU/event" if "cpu_us_per_event" in r else ""
        print(f"  {label:50} {r['per_s']:>10,.0f} {unit:9} ({r['count']} in {r['seconds']:.3f} s){cpu}")

    print(f"event log throughput: {args.events} agent.alert events, batches of {args.batch}, "
          f"median of {args.rounds} rounds, the four taking turns batch by batch")
    row("EventLog.emit_many (batched, hash-chained)", report["batched"])
    row("raw sqlite3 executemany, product indexes (anchor)", report["raw_sqlite_indexed"])
    row(f"raw sqlite3 {ROWS_PER_INSERT} rows per INSERT, product indexes", report["raw_sqlite_indexed_multirow"])
    row("raw sqlite3 executemany, plain table", report["raw_sqlite_plain"])
    print(f"  {'event log / raw executemany with indexes':50} {ratio:>10.2f}           "
          f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)}; pooled {pooled:.2f}; CPU {cpu_ratio:.2f})")
    row("EventLog.emit (one per transaction)", result["single"])
    row("prepare only (validate + JSON + sha256)", prep)
    row("EventLog.verify()", result["verify"], "rows/s")
    one = f"{beat_modes['shared']['ms_per_beat']:.2f} ms in one transaction, " if "shared" in beat_modes else ""
    print(f"  beat (2 results) + its pulse.beat event: {one}{beat_modes['separate']['ms_per_beat']:.2f} ms in two "
          f"({args.beats} beats each)")
    print(f"  verify: {'chain ok' if result['verify']['ok'] else 'CHAIN BROKEN'}")
    print(f"  target: batched >= {TARGET_PER_S:,.0f} events/s and >= {TARGET_RATIO:.0%} of raw executemany "
          f"with indexes  {verdict(ok)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
