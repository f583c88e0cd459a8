"""The event log's bytes do not change with how fast it is written.

A fixed sequence of events (every path: `emit`, `emit_many`, a model instance, a model of another
type, non-ASCII text, nested and unsorted keys, floats, big ints, a pruned log that continues from
its anchor, a beat whose `pulse.beat` event shares the beat's transaction) is written into a real
SQLite file. The hashes were computed by the code before the event log was made faster (commit
e22410d: `emit` + `emit_many` with `json.dumps(sort_keys=True)` per event, the beat and its event in
two transactions); the same events must give the same chain, byte for byte.

The whole test is dated from its own fixed clock (the events, the beat, the retention cutoff).
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from _helpers import FakeClock
from conftest import Ops
from fazt_agent.event_types import AgentStarted, IncidentData
from fazt_agent.events import EventLog, NewEvent
from fazt_agent.pulse.base import CheckResult
from fazt_agent.pulse.beats import BeatStore
from fazt_agent.pulse.runner import BeatResult
from fazt_agent.store import Store

T0 = datetime(2025, 3, 4, 5, 6, 7, 891011, tzinfo=timezone.utc)

# sha256 chain of the scenario below, as written by the code of commit e22410d
EXPECTED = [
    "09cefcc075b35191f11af9dbe3e16e65ff7a1b8131ce5c8ffe06c68d8fcee473",
    "d113b65a8810cd13ce720ca3889c5a65e8bf9cebabbe1732e9c22b190dac044f",
    "601f0541fa783f1927f146b67ea7eb9126f947ecbf75a982160f3c8cfba5d258",
    "c5e467bf59648290a82608267ebe78c8b247112397dce2fff36ff7de2b9624cd",
    "2f2606cf05e6789bc07051311671f459a9c05c044097ee0138fbe63d7f60c616",
    "6eacf902faa8b317fefc08690bd645cd6353ad622c66c6f6a58e159b5ebb3477",
    "22c820e2759ad348c0362dae79d1314a9f356acf557a27a37437f124e4bf3574",
    "fb006d5f35fc772808cbb23beed6c7b42398b04c6dbaad95bf38faac39dc898e",
    "dd35ec206577de0340cbc224446b769e95fe0ee60c5e7c8503b6b703d837fc0f",
    "e6fd3738b3017f0ae71d08b7fb8db0d8cc8283af79900cc5b643e004c9a3eab6",
]


def beat_result() -> BeatResult:
    return BeatResult(ts=T0, duration_ms=12.3456789, host="web-1", results=[
        CheckResult("system", "system", "", "warning", "cpu 91 % (2 of 3 beats)", {"cpu_percent": 91.25},
                    {"confirm": {"for": 3, "beats": 2, "confirmed": "ok"}}, 3.5),
        CheckResult("disk", "disk", "/", "ok", "/ 41 % used", {"used_percent": 41.0}, {}, 1.25),
        CheckResult("site", "http", "https://example.org/ä", "critical", "connection refused", {}, {}, 0.5)])


async def write_scenario(store: Store, clock: FakeClock, save_beat: Any) -> list[str]:
    """Every way an event gets into the log; `save_beat(beats, log, beat)` stores a beat and its event.
    Returns the hashes of the events before the log is pruned."""
    log = EventLog(store, clock)
    await log.emit("agent.started", AgentStarted(version="1.2.3", pid=4242, config=None,
                                                 data_dir="/var/lib/fazt-agent", autonomy="low", checks=3))
    await log.emit("agent.alert", {
        "message": "disk “/” is 93 % full — ünïcödé ✓ 🚀 \"quoted\" \\ back\tslash\n",
        "file": "/etc/fazt-agent/pulse/disk.toml",
        "details": {"z": 1, "a": [1.5, 1e16, -0.0, 0.1, 3, 2 ** 70, 1e-7], "m": {"b": None, "a": True},
                    "tuple": (1, "two"), "Zeta": "upper before lower", "": "empty key"}})
    await log.emit_many([
        NewEvent("incident.opened", {"check": "disk", "target": "/", "kind": "disk", "severity": "critical",
                                     "message": "93 % used"}, source="engine", incident_id=7),
        NewEvent("decision.made", {"trigger": "incident 7", "planner": "rules", "autonomy": "medium",
                                   "verdict": "act", "reason": "safe plan", "policy_version": "abc123",
                                   "rule": "directory-pressure", "action": "cleanup",
                                   "args": {"root": "/srv/tmp", "older_than": 86400},
                                   "plan": {"files": 3, "bytes": 12582912, "risk": "safe", "paths": ["/a", "/b"]},
                                   "usage": {}}, source="engine", incident_id=7),
        NewEvent("action.succeeded", {"action_id": 1, "action": "cleanup", "summary": "removed 3 files (12 MiB)",
                                      "details": {"freed": 12582912, "ratio": 0.333}}, incident_id=7),
        NewEvent("notification.failed", {"notification_id": 2, "attempt": 1, "error": "HTTP 503",
                                         "next_attempt_at": None}),
        NewEvent("incident.updated", IncidentData(check="disk", target="/", kind="disk", severity="warning",
                                                  message="88 % used", previous="critical"),
                 source="engine", incident_id=7),
    ])
    await save_beat(BeatStore(store), log, beat_result())
    before = [e.hash for e in await log.list(limit=None, newest_first=False)]
    clock.t = T0 + timedelta(days=2)
    assert await log.prune(clock.now() - timedelta(days=1)) == 8   # all of it: the anchor carries the chain
    await log.emit("halt.requested", {"halt_id": 3, "action": "service.restart", "summary": "restart nginx",
                                      "options": ["approve", "deny"], "default": "deny",
                                      "expires_at": "2025-03-06T06:06:07.891011Z"})
    await log.emit("store.pruned", {"before": "2025-03-05T05:06:07.891011Z", "events": 8, "beats": 0},
                   source="daemon")
    return before


def chain(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT hash FROM events ORDER BY id")]


async def test_the_hash_chain_is_byte_for_byte_what_the_earlier_code_wrote(tmp_path: Path) -> None:
    async def save_beat(beats: BeatStore, log: EventLog, beat: BeatResult) -> None:
        await beats.save(beat, log)   # the beat, its results and its pulse.beat event: one transaction

    store = await Store.open(tmp_path / "agent.db")
    try:
        written = await write_scenario(store, FakeClock(T0, mono=None), save_beat)
        verified = await EventLog(store).verify()
        anchor = await store.get_setting("events.anchor_hash")
    finally:
        await store.close()
    assert verified.ok and verified.checked == 2
    assert written + chain(tmp_path / "agent.db") == EXPECTED
    assert anchor == EXPECTED[7]          # the pruned rows' last hash, kept as the anchor


def test_events_verify_passes_on_a_log_written_by_this_code(ops: Ops) -> None:
    """`fazt-agent events verify` (a process) on a log written by `beat` processes (each beat and
    its event in one transaction), `emit_many` and `emit`; and it still finds an altered row."""
    for _ in range(2):
        assert ops.cli("beat").returncode in (0, 1)   # 1: a problem on this machine, still a beat

    async def write() -> None:
        store = await Store.open(ops.data_dir / "fazt-agent.db")
        try:
            log = EventLog(store)
            await log.emit_many([NewEvent("agent.alert", {"message": f"batch {i} ü"}) for i in range(500)])
            await log.emit("agent.alert", {"message": "one more", "details": {"b": 1, "a": [2.5, None]}})
        finally:
            await store.close()

    asyncio.run(write())
    db = ops.data_dir / "fazt-agent.db"
    with sqlite3.connect(db) as conn:
        beats = conn.execute("SELECT json_extract(data, '$.beat_id') FROM events WHERE type = 'pulse.beat' "
                             "ORDER BY id").fetchall()
        assert [b[0] for b in beats] == [r[0] for r in conn.execute("SELECT id FROM beats ORDER BY id")]
        total = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    result = ops.cli("events", "verify")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ok: {total} events, chain intact"

    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE events SET data = replace(data, 'batch 7 ', 'batch 8 ') "
                     "WHERE json_extract(data, '$.message') = 'batch 7 ü'")
    result = ops.cli("events", "verify")
    assert result.returncode != 0 and "was altered" in result.stderr
