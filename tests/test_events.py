"""The event log: typed events, delivery after commit, retention, and tamper detection."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from _helpers import FakeClock
from conftest import Ops
from fazt_agent.events import EventLog
from fazt_agent.store import Store


async def _log(tmp_path: Path, clock: FakeClock | None = None) -> EventLog:
    store = await Store.open(tmp_path / "agent.db")
    return EventLog(store, clock)


async def test_events_are_committed_before_subscribers_see_them(tmp_path: Path) -> None:
    log = await _log(tmp_path)
    seen: list[int] = []

    async def subscriber(event) -> None:  # reads through a second connection
        with sqlite3.connect(tmp_path / "agent.db") as other:
            seen.append(other.execute("SELECT COUNT(*) FROM events WHERE id = ?", (event.id,)).fetchone()[0])

    log.subscribe(subscriber, "agent.*")
    await log.emit("agent.alert", {"message": "disk is odd"})
    await log.emit("store.pruned", {"before": "x", "events": 0, "beats": 0})  # not matched by the glob
    assert seen == [1]
    await log.store.close()


async def test_unknown_event_type_and_bad_data_are_refused(tmp_path: Path) -> None:
    log = await _log(tmp_path)
    with pytest.raises(ValueError, match="unknown event type 'made.up'"):
        await log.emit("made.up", {})
    with pytest.raises(ValueError, match="bad data for event 'agent.alert'"):
        await log.emit("agent.alert", {"mesage": "typo"})
    assert await log.last_id() == 0
    await log.store.close()


async def test_a_failing_subscriber_does_not_lose_the_event(tmp_path: Path) -> None:
    log = await _log(tmp_path)
    log.subscribe(lambda e: 1 / 0)
    event = await log.emit("agent.alert", {"message": "hello"})
    assert (await log.get(event.id)).data["message"] == "hello"
    await log.store.close()


async def test_retention_prunes_old_events_and_the_chain_still_verifies(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=timezone.utc), mono=None)
    log = await _log(tmp_path, clock)
    for i in range(5):
        await log.emit("agent.alert", {"message": f"old {i}"})
    clock.t += timedelta(days=100)
    for i in range(3):
        await log.emit("agent.alert", {"message": f"new {i}"})
    assert await log.prune(clock.t - timedelta(days=90)) == 5
    result = await log.verify()
    assert result.ok and result.checked == 3
    await log.emit("agent.alert", {"message": "after prune"})
    assert (await log.verify()).ok
    await log.store.close()


async def test_batched_inserts_chain_like_single_ones(tmp_path: Path) -> None:
    from fazt_agent.events import NewEvent

    log = await _log(tmp_path)
    await log.emit("agent.alert", {"message": "one"})
    await log.emit_many([NewEvent("agent.alert", {"message": f"b{i}"}) for i in range(100)])
    result = await log.verify()
    assert result.ok and result.checked == 101
    await log.store.close()


def _seed(ops: Ops) -> None:
    for _ in range(3):
        ops.cli("beat")


def test_events_verify_passes_on_an_untouched_log(ops: Ops) -> None:
    _seed(ops)
    result = ops.cli("events", "verify")
    assert result.returncode == 0, result.stderr
    assert "chain intact" in result.stdout


def test_events_verify_detects_an_altered_row(ops: Ops) -> None:
    _seed(ops)
    with sqlite3.connect(ops.data_dir / "fazt-agent.db") as db:
        db.execute("UPDATE events SET data = json_set(data, '$.duration_ms', 1.0) WHERE id = 2")
    result = ops.cli("events", "verify")
    assert result.returncode == 1
    assert "event 2: row was altered" in result.stderr


def test_events_verify_detects_a_removed_row(ops: Ops) -> None:
    _seed(ops)
    with sqlite3.connect(ops.data_dir / "fazt-agent.db") as db:
        db.execute("DELETE FROM events WHERE id = 2")
    result = ops.cli("events", "verify")
    assert result.returncode == 1
    assert "event 3: row 2 was removed" in result.stderr


def test_events_verify_detects_a_removed_tail(ops: Ops) -> None:
    _seed(ops)
    with sqlite3.connect(ops.data_dir / "fazt-agent.db") as db:
        last = db.execute("SELECT MAX(id) FROM events").fetchone()[0]
        db.execute("DELETE FROM events WHERE id = ?", (last,))
    result = ops.cli("events", "verify")
    assert result.returncode == 1
    assert f"rows {last}..{last} at the end of the log were removed" in result.stderr


def test_events_list_filters_by_type_since_and_limit(ops: Ops) -> None:
    _seed(ops)
    result = ops.cli("events", "list", "--type", "pulse.*", "--since", "1h", "--limit", "2", "--json")
    assert result.returncode == 0, result.stderr
    events = json.loads(result.stdout)
    assert len(events) == 2
    assert all(e["type"] == "pulse.beat" for e in events)
    assert events[0]["id"] < events[1]["id"]  # oldest first in the listing
    none = json.loads(ops.cli("events", "list", "--type", "halt.*", "--json").stdout)
    assert none == []
    bad = ops.cli("events", "list", "--since", "yesterday")
    assert bad.returncode == 2 and "expected a duration" in bad.stderr


def test_events_export_writes_json_lines_oldest_first(ops: Ops) -> None:
    _seed(ops)
    result = ops.cli("events", "export")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)
    assert sum(r["type"] == "pulse.beat" for r in rows) == 3
    assert {"id", "ts", "type", "source", "data", "hash"} <= set(rows[0])
