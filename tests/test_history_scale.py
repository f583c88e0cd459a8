"""Reads of stored beats that do not grow with the history: the same answers as before, by index.

`latest()` (status, pulse status, MCP, /metrics) used to group every stored result by check and
target; `history()` read every result of its window. Here a real SQLite file holds thousands of
beats dated from the real now backwards: checks that were removed, targets that come and go, a
beat stored late with an older time, retention pruning. The answers must be exactly what the
earlier queries (copied below) gave, and the query plans must find rows through indexes, never
by scanning the results or beats tables.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from conftest import Ops
from fazt_agent.clock import iso
from fazt_agent.events import EventLog
from fazt_agent.pulse.base import CheckResult
from fazt_agent.pulse.beats import BeatStore
from fazt_agent.pulse.runner import BeatResult
from fazt_agent.store import Store

# The queries of the code before (commit e22410d), as the reference answers.
OLD_LATEST = ("SELECT *, MAX(ts) AS newest FROM results {where} GROUP BY check_name, target "
              "ORDER BY check_name, target")
OLD_BEATS = "SELECT * FROM beats WHERE ts >= ? ORDER BY id"
OLD_PROBLEMS = "SELECT * FROM results WHERE ts >= ? AND status != 'ok' ORDER BY beat_id"
COLUMNS = "beat_id, ts, check_name, kind, target, status, message, metrics, details, duration_ms"
BEATS = 4000
STEP = timedelta(seconds=5)


def results_of(i: int) -> list[tuple[str, str, str, str, str, dict[str, Any]]]:
    """(check, kind, target, status, message, metrics) of beat i (0 is the oldest)."""
    out = [("system", "system", "", "warning" if i % 7 == 0 else "ok", f"cpu {i % 100} %", {"cpu_percent": i % 100}),
           ("disk", "disk", "/", "critical" if i % 50 == 0 else "ok", f"/ {40 + i % 9} % used",
            {"used_percent": 40.0 + i % 9})]
    if i < 3000:                                    # a mount that went away
        out.append(("disk", "disk", "/srv", "ok", "/srv 12 % used", {"used_percent": 12.0}))
    if i < 2000:                                    # a check since removed from the config
        out.append(("gone", "command", "", "unknown" if i % 3 else "ok", "exit 3", {}))
    out.append(("logs", "file_age", f"/var/log/app.{i // 500}", "ok", "fresh", {"age_s": float(i)}))
    return out


def fill(db: Path, now: datetime) -> None:
    """BEATS beats every 5 s up to `now`, stored the fast way; then one beat stored late (a higher
    id) with an older time than the newest, as a `beat` process running beside the daemon does."""
    with sqlite3.connect(db) as conn:
        order, late = list(range(BEATS)), BEATS - 3
        order.remove(late)
        order.append(late)
        for i in order:
            ts = iso(now - (BEATS - i) * STEP)
            results = results_of(i)
            status = max((r[3] for r in results), key=["ok", "unknown", "warning", "critical"].index)
            beat_id = conn.execute("INSERT INTO beats(ts, status, duration_ms, host) VALUES (?, ?, 3.0, 'h')",
                                   (ts, status)).lastrowid
            conn.executemany(f"INSERT INTO results({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, '{{}}', 1.5)",
                             [(beat_id, ts, c, k, t, s, m, json.dumps(x)) for c, k, t, s, m, x in results])


def old_latest(db: Path, since: datetime | None = None) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        sql = OLD_LATEST.format(where="WHERE ts >= ?" if since else "")
        rows = conn.execute(sql, (iso(since),) if since else ()).fetchall()
    return [(r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7]), json.loads(r[8]), r[9]) for r in rows]


def as_rows(latest: list[tuple[datetime, CheckResult]]) -> list[tuple[Any, ...]]:
    return [(iso(ts), r.check, r.kind, r.target, r.status, r.message, r.metrics, r.details, r.duration_ms)
            for ts, r in latest]


def old_history(db: Path, since: datetime) -> list[dict[str, Any]]:
    """What `history()` returned before, from the earlier queries."""
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        beats = conn.execute(OLD_BEATS, (iso(since),)).fetchall()
        problems = conn.execute(OLD_PROBLEMS, (iso(since),)).fetchall()
    by_beat: dict[int, list[dict[str, Any]]] = {}
    for r in problems:
        by_beat.setdefault(r["beat_id"], []).append(
            CheckResult(r["check_name"], r["kind"], r["target"], r["status"], r["message"], json.loads(r["metrics"]),
                        json.loads(r["details"]), r["duration_ms"]).to_json())
    return [{"id": b["id"], "ts": b["ts"], "status": b["status"], "duration_ms": b["duration_ms"],
             "problems": by_beat.get(b["id"], [])} for b in beats]


async def test_latest_and_history_answer_what_the_earlier_queries_answered(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    now = datetime.now(timezone.utc)
    store = await Store.open(db)
    beats = BeatStore(store)
    try:
        assert await beats.latest() == [] and await beats.targets("system") == []   # nothing stored yet
        assert await beats.history(now - timedelta(hours=1)) == []
        fill(db, now - timedelta(seconds=30))
        for n in range(3):   # and beats stored by the product, with their events, up to now
            await beats.save(BeatResult(ts=now - timedelta(seconds=10 * (2 - n)), duration_ms=2.0, host="h", results=[
                CheckResult("system", "system", "", "critical" if n == 1 else "ok", f"cpu {90 + n} %",
                            {"cpu_percent": 90.0 + n}, {"n": n}, 2.5),
                CheckResult("web", "http", "https://example.org/", "ok", "200", {"status_code": 200}, {}, 8.0)]),
                EventLog(store))
        every = as_rows(await beats.latest())
        assert every == old_latest(db)
        assert {(r[1], r[3]) for r in every} >= {("gone", ""), ("disk", "/srv"), ("logs", "/var/log/app.0"),
                                                  ("web", "https://example.org/")}
        assert [r for r in every if r[1] == "system"][0][7] == {"n": 2}   # the newest, stored by save()
        for horizon in (timedelta(hours=1), timedelta(minutes=3), timedelta(seconds=1), timedelta(days=30)):
            assert as_rows(await beats.latest(since=now - horizon)) == old_latest(db, now - horizon)
        assert as_rows(await beats.latest(since=now + timedelta(seconds=1))) == []
        for window in (timedelta(hours=1), timedelta(minutes=10), timedelta(days=1)):
            assert await beats.history(now - window) == old_history(db, now - window)
        assert await beats.targets("logs") == [f"/var/log/app.{k}" for k in range(8)]
        assert await beats.targets("disk") == ["/", "/srv"]
        assert await beats.targets("nothing") == []

        # retention: all but the last 1500 beats go, the removed check's with them (/srv stays);
        # what is left must again match
        cutoff = now - timedelta(seconds=30) - 1500 * STEP
        removed = await beats.prune(cutoff)
        assert removed == BEATS - 1500
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT COUNT(*) FROM results WHERE ts < ?", (iso(cutoff),)).fetchone()[0] == 0
        pruned = as_rows(await beats.latest())
        assert pruned == old_latest(db)
        assert ("gone", "") not in {(r[1], r[3]) for r in pruned} and ("disk", "/srv") in {(r[1], r[3]) for r in pruned}
        assert await beats.targets("logs") == [f"/var/log/app.{k}" for k in range(5, 8)]
    finally:
        await store.close()


async def plans_of(store: Store, db: Path, read: Any) -> list[tuple[str, list[str]]]:
    """Each SELECT/DELETE statement `read()` runs, with its EXPLAIN QUERY PLAN on this file."""
    seen: list[str] = []
    await store.db.set_trace_callback(seen.append)
    try:
        await read()
    finally:
        await store.db.set_trace_callback(None)
    out = []
    with sqlite3.connect(db) as conn:
        for sql in seen:
            if sql.lstrip().upper().startswith(("SELECT", "WITH", "DELETE")):
                out.append((sql, [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql)]))
    return out


async def test_reads_find_rows_through_indexes_not_by_scanning_the_history(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    now = datetime.now(timezone.utc)
    store = await Store.open(db)
    fill(db, now)
    with sqlite3.connect(db) as conn:
        conn.execute("ANALYZE")   # what the planner would know on a long-running install: no scan either way
    beats = BeatStore(store)
    try:
        reads = {
            "latest": lambda: beats.latest(),
            "latest since": lambda: beats.latest(since=now - timedelta(hours=1)),
            "history": lambda: beats.history(now - timedelta(hours=1)),
            "for = N": lambda: beats.statuses("system", "", 2),
            "flap ok streak": lambda: beats.statuses("disk", "/", 3, before_beat=BEATS),
            "last result": lambda: beats.last_result("system", ""),
            "targets": lambda: beats.targets("logs"),
        }
        for name, read in reads.items():
            plans = await plans_of(store, db, read)
            assert plans, name
            for sql, plan in plans:
                scans = [step for step in plan if step.startswith(("SCAN results", "SCAN beats", "SCAN r "))]
                assert not scans, f"{name}: {sql}\n{plan}"
                assert any("USING INDEX" in step or "USING COVERING INDEX" in step for step in plan), f"{name}: {plan}"
        [(_, beats_plan), (_, problems_plan)] = await plans_of(store, db, reads["history"])
        assert any("beats_ts" in step for step in beats_plan)
        assert any("results_problems" in step for step in problems_plan)
        for _, plan in await plans_of(store, db, lambda: beats.prune(now - timedelta(hours=1))):
            assert not [step for step in plan if step.startswith(("SCAN results", "SCAN beats"))], plan
    finally:
        await store.close()


async def test_a_beat_and_its_event_commit_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The beat's `pulse.beat` event is written in the beat's own transaction: when writing the
    event fails, no beat without its event is left; when it works, subscribers see it committed."""
    db = tmp_path / "agent.db"
    store = await Store.open(db)
    try:
        log, beats = EventLog(store), BeatStore(store)
        beat = BeatResult(ts=datetime.now(timezone.utc), duration_ms=1.0, host="h",
                          results=[CheckResult("disk", "disk", "/", "warning", "/ 91 % used", {}, {}, 1.0)])
        seen: list[tuple[int, int]] = []

        def subscriber(event: Any) -> None:
            with sqlite3.connect(db) as other:   # another connection sees the beat once the event arrives
                seen.append((event.data["beat_id"], other.execute("SELECT COUNT(*) FROM beats").fetchone()[0]))

        log.subscribe(subscriber, "pulse.beat")
        beat_id = await beats.save(beat, log)
        assert seen == [(beat_id, 1)]

        def broken(*args: Any) -> None:   # the event's rows, written on SQLite's thread
            raise OSError("disk full")

        monkeypatch.setattr("fazt_agent.events._batches", broken)
        with pytest.raises(OSError, match="disk full"):
            await beats.save(beat, log)
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT COUNT(*) FROM beats").fetchone()[0] == 1
            assert conn.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 1
            assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 1
        assert len(seen) == 1
    finally:
        await store.close()


def test_status_and_pulse_status_show_the_newest_results_of_a_long_history(ops: Ops) -> None:
    """Through the CLI: a store with a long history (and a check no longer configured) answers
    `pulse status` and `status` with the newest result of each configured check target."""
    db = ops.data_dir / "fazt-agent.db"
    assert ops.cli("events", "list").returncode == 0        # creates the store
    now = datetime.now(timezone.utc)
    fill(db, now)
    result = ops.cli("pulse", "status", "--json")
    assert result.returncode == 0, result.stderr
    shown = [(r["check"], r["target"], r["status"], r["message"], r["ts"]) for r in json.loads(result.stdout)]
    configured = {"system", "disk"}   # the checks `fazt-agent init` writes (pulse/system.toml)
    expected = [(r[1], r[3], r[4], r[5], datetime.fromisoformat(r[0].replace("Z", "+00:00")).isoformat())
                for r in old_latest(db) if r[1] in configured]
    assert shown == expected and {"system", "disk"} <= {s[0] for s in shown}
    assert "gone" not in {s[0] for s in shown}

    result = ops.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    problems = {(p["check"], p["target"], p["status"]) for p in status["problems"]}
    horizon = now - timedelta(hours=1)   # status looks back max(3 intervals, 1 h)
    assert problems == {(r[1], r[3], r[4]) for r in old_latest(db, horizon) if r[1] in configured and r[4] != "ok"}


async def test_events_listed_by_type_are_the_newest_without_sorting_every_match(tmp_path: Path) -> None:
    """`events list --type` (and the MCP / planner event queries): the newest matches of a glob,
    as the plain query finds them, for common, rare and absent types; a common type is read newest
    first by id, not by sorting all its matches (a million `pulse.beat` rows on a long-running box)."""
    db = tmp_path / "agent.db"
    now = datetime.now(timezone.utc)
    store = await Store.open(db)
    n = 30_000
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO events(id, ts, type, source, incident_id, data, prev_hash, hash) VALUES (?, ?, ?, 'x', ?, "
            "'{}', '', '')",
            [(k, iso(now - timedelta(seconds=n - k)),
              "halt.requested" if k in (5, 17_000) else "agent.started" if k < 50 else
              "incident.opened" if k % 40 == 0 else "pulse.beat", k // 40 if k % 40 == 0 else None)
             for k in range(1, n + 1)])
    log = EventLog(store)
    try:
        for glob in ("pulse.*", "incident.*", "halt.*", "agent.started", "nothing.*", "*"):
            for since in (None, now - timedelta(hours=2)):
                listed = await log.list(type_glob=glob, since=since, limit=50)
                sql = "SELECT id FROM events WHERE type GLOB ?" + (" AND ts >= ?" if since else "") + \
                      " ORDER BY id DESC LIMIT 50"
                with sqlite3.connect(db) as conn:
                    expected = [r[0] for r in conn.execute(sql, (glob, iso(since)) if since else (glob,))]
                assert [e.id for e in listed] == expected, (glob, since)
        assert [e.id for e in await log.list(type_glob="halt.*")] == [17_000, 5]
        plans = await plans_of(store, db, lambda: log.list(type_glob="pulse.*", limit=50))
        assert len(plans) == 1 and not [s for s in plans[0][1] if "TEMP B-TREE" in s], plans
    finally:
        await store.close()
