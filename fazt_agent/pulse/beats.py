"""Stored beats: saving them, reading the latest state, history, metric series and trends.

Reads cost what they return, not how much history is stored (a week at a 5 s interval is 120k
beats). The newest result of each check target is found by walking the (check, target, ts) index
from one check target to the next (a loose index scan: a few seeks per check target), not by
grouping every stored result; `history` finds the problems of its window through a partial index
of the results that are not ok (bench/history_scale.py: 0.15 ms and 1.4 ms at 500k beats).

The index walk was measured against a table of the latest result per check target kept up to
date in each beat's transaction: with the shipped checks both read in well under 0.1 ms of SQLite
time; with 500 check targets over 1M results the table reads in 0.5 ms and the walk in 5 ms, but
the table costs an upsert per result per beat (1.1 ms per beat of 500) and copies state that
retention, removed checks and a `beat` process running beside the daemon must keep right. The
walk derives the answer from the results themselves, so it cannot disagree with them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..clock import iso, parse_iso
from ..events import EventLog, NewEvent
from .._sql import LATEST as _LATEST
from ..store import Store
from .base import OVERLOADED, CheckResult
from .runner import BeatResult

_METRIC = re.compile(r"^(?P<check>.+?)(?:\[(?P<target>.*)\])?\.(?P<metric>[A-Za-z0-9_]+)$")


@dataclass(frozen=True)
class MetricRef:
    """`check.metric` or `check[target].metric`, as written on the command line."""

    check: str
    target: str | None
    metric: str

    @classmethod
    def parse(cls, text: str) -> MetricRef:
        """Raises ValueError when `text` is not `CHECK.METRIC` or `CHECK[TARGET].METRIC`."""
        m = _METRIC.match(text)
        if not m:
            raise ValueError(f"expected CHECK.METRIC or CHECK[TARGET].METRIC (e.g. 'disk[/].used_percent'), got {text!r}")
        return cls(m["check"], m["target"], m["metric"])

    def __str__(self) -> str:
        return f"{self.check}[{self.target}].{self.metric}" if self.target else f"{self.check}.{self.metric}"


class BeatStore:
    """Beats and their check results in the store. Implements the pulse `History` protocol."""

    def __init__(self, store: Store):
        self.store = store

    async def save(self, beat: BeatResult, events: EventLog | None = None) -> int:
        """Store a beat and its results; returns the beat's id. With `events`, the beat's
        `pulse.beat` event is written in the same transaction (one commit, and never a beat
        without its event) and delivered to subscribers after the commit."""
        ts = iso(beat.ts)
        async with self.store.transaction() as db:
            cur = await db.execute(
                "INSERT INTO beats(ts, status, duration_ms, host) VALUES (?, ?, ?, ?)",
                (ts, beat.status, beat.duration_ms, beat.host))
            beat_id = cur.lastrowid
            await db.executemany(
                "INSERT INTO results(beat_id, ts, check_name, kind, target, status, message, metrics, "
                "details, duration_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(beat_id, ts, r.check, r.kind, r.target, r.status, r.message, json.dumps(r.metrics),
                  json.dumps(r.details, default=str), r.duration_ms) for r in beat.results])
            assert beat_id is not None
            if events is not None:
                await events.append([beat_event(beat, beat_id)])
        return beat_id

    async def latest(self, since: datetime | None = None, *, peek: bool = False) -> list[tuple[datetime, CheckResult]]:
        """The newest result of every (check, target), with when it was measured; only those
        measured at or after `since` when given. Ordered by check and target. `peek`: read with
        `Store.peek` (an MCP tool call: a few index seeks per target, no round trip)."""
        sql, params = _LATEST, []
        if since is not None:
            sql += " WHERE r.ts >= ?"
            params.append(iso(since))
        read = self.store.peek if peek else self.store.fetchall
        rows = await read(sql + " ORDER BY r.check_name, r.target", params)
        return [(parse_iso(r["ts"]), _result(r)) for r in rows]

    async def last_beat(self) -> dict[str, Any] | None:
        row = await self.store.fetchone("SELECT * FROM beats ORDER BY id DESC LIMIT 1")
        return dict(row) if row else None

    async def history(self, since: datetime) -> list[dict[str, Any]]:
        """Beats since `since`, oldest first, each with its non-ok results."""
        # `+id`, `+beat_id`: sorted after the fact, so the planner keeps to the ts indexes instead of
        # walking every stored row in id order; `status != 'ok'` is the condition of the partial
        # index results_problems (the problems only), so that index serves it.
        beats = await self.store.fetchall("SELECT * FROM beats WHERE ts >= ? ORDER BY +id", (iso(since),))
        problems = await self.store.fetchall(
            "SELECT * FROM results WHERE ts >= ? AND status != 'ok' ORDER BY +beat_id, +rowid", (iso(since),))
        by_beat: dict[int, list[dict[str, Any]]] = {}
        for r in problems:
            by_beat.setdefault(r["beat_id"], []).append(_result(r).to_json())
        return [{"id": b["id"], "ts": b["ts"], "status": b["status"], "duration_ms": b["duration_ms"],
                 "problems": by_beat.get(b["id"], [])} for b in beats]

    async def last_result(self, check: str, target: str) -> tuple[datetime, CheckResult] | None:
        """The newest stored result of one check target, with when it was measured."""
        row = await self.store.fetchone(
            "SELECT * FROM results WHERE check_name = ? AND target = ? ORDER BY ts DESC, beat_id DESC LIMIT 1",
            (check, target))
        return (parse_iso(row["ts"]), _result(row)) if row else None

    async def statuses(self, check: str, target: str, limit: int, *, before_beat: int | None = None) -> list[str]:
        """The statuses of the last `limit` stored results of one check target, newest first
        (only those of beats before `before_beat` when given). Uses the (check, target, ts) index.
        Results the overloaded agent could not measure (details.cause) are no beats: skipped."""
        sql = ("SELECT status FROM results WHERE check_name = ? AND target = ?"
               " AND json_extract(details, '$.cause') IS NOT ?")
        params: list[Any] = [check, target, OVERLOADED]
        if before_beat is not None:
            sql += " AND beat_id < ?"
            params.append(before_beat)
        rows = await self.store.fetchall(sql + " ORDER BY ts DESC, beat_id DESC LIMIT ?", (*params, limit))
        return [r[0] for r in rows]

    async def targets(self, check: str) -> list[str]:
        """The targets `check` has stored results of, sorted: one index seek per target."""
        rows = await self.store.fetchall(
            "WITH RECURSIVE t(target) AS ("
            " SELECT MIN(target) FROM results WHERE check_name = ?1"
            " UNION ALL SELECT (SELECT MIN(target) FROM results WHERE check_name = ?1 AND target > t.target)"
            " FROM t WHERE t.target IS NOT NULL) "
            "SELECT target FROM t WHERE target IS NOT NULL", (check,))
        return [r[0] for r in rows]

    async def series(self, check: str, target: str, metric: str, since: datetime) -> list[tuple[datetime, float]]:
        """(time, value) of one metric of one check target since `since`, oldest first."""
        rows = await self.store.fetchall(
            "SELECT ts, json_extract(metrics, ?) AS v FROM results "
            "WHERE check_name = ? AND target = ? AND ts >= ? ORDER BY ts",
            (f'$."{metric}"', check, target, iso(since)))
        return [(parse_iso(r["ts"]), float(r["v"])) for r in rows if r["v"] is not None]

    async def prune(self, before: datetime) -> int:
        """Delete beats (and their results) measured before `before`. Returns the beats deleted.
        The results are found through their beats (a result's ts is its beat's), by index."""
        async with self.store.transaction() as db:
            await db.execute("DELETE FROM results WHERE beat_id IN (SELECT id FROM beats WHERE ts < ?)",
                             (iso(before),))
            cur = await db.execute("DELETE FROM beats WHERE ts < ?", (iso(before),))
            return cur.rowcount



def beat_event(beat: BeatResult, beat_id: int) -> NewEvent:
    """The `pulse.beat` event of a stored beat: its status, counts per status and problems."""
    from ..event_types import Problem, PulseBeat   # not at import: commands that only read beats skip the catalogue

    counts: dict[str, int] = {}
    for r in beat.results:
        counts[r.status] = counts.get(r.status, 0) + 1
    return NewEvent("pulse.beat", PulseBeat(
        beat_id=beat_id, status=beat.status, duration_ms=round(beat.duration_ms, 3), counts=counts,
        problems=[Problem(check=r.check, target=r.target, status=r.status, message=r.message)
                  for r in beat.results if r.status != "ok"]), source="pulse")


def _result(r: Any) -> CheckResult:
    return CheckResult(r["check_name"], r["kind"], r["target"], r["status"], r["message"],
                       json.loads(r["metrics"]), json.loads(r["details"]), r["duration_ms"])
