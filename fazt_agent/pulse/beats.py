"""Stored beats: saving them, reading the latest state, history, metric series and trends."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..clock import iso, parse_iso
from ..store import Store
from .base import CheckResult
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

    async def save(self, beat: BeatResult) -> int:
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
        return beat_id

    async def latest(self, since: datetime | None = None) -> list[tuple[datetime, CheckResult]]:
        """The newest result of every (check, target), with when it was measured."""
        sql = "SELECT *, MAX(ts) AS newest FROM results"
        params: list[Any] = []
        if since is not None:
            sql += " WHERE ts >= ?"
            params.append(iso(since))
        sql += " GROUP BY check_name, target ORDER BY check_name, target"
        rows = await self.store.fetchall(sql, params)
        return [(parse_iso(r["ts"]), _result(r)) for r in rows]

    async def last_beat(self) -> dict[str, Any] | None:
        row = await self.store.fetchone("SELECT * FROM beats ORDER BY id DESC LIMIT 1")
        return dict(row) if row else None

    async def history(self, since: datetime) -> list[dict[str, Any]]:
        """Beats since `since`, oldest first, each with its non-ok results."""
        beats = await self.store.fetchall("SELECT * FROM beats WHERE ts >= ? ORDER BY id", (iso(since),))
        problems = await self.store.fetchall(
            "SELECT * FROM results WHERE ts >= ? AND status != 'ok' ORDER BY beat_id", (iso(since),))
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
        (only those of beats before `before_beat` when given). Uses the (check, target, ts) index."""
        sql, params = "SELECT status FROM results WHERE check_name = ? AND target = ?", [check, target]
        if before_beat is not None:
            sql += " AND beat_id < ?"
            params.append(before_beat)
        rows = await self.store.fetchall(sql + " ORDER BY ts DESC, beat_id DESC LIMIT ?", (*params, limit))
        return [r[0] for r in rows]

    async def targets(self, check: str) -> list[str]:
        rows = await self.store.fetchall(
            "SELECT DISTINCT target FROM results WHERE check_name = ? ORDER BY target", (check,))
        return [r[0] for r in rows]

    async def series(self, check: str, target: str, metric: str, since: datetime) -> list[tuple[datetime, float]]:
        """(time, value) of one metric of one check target since `since`, oldest first."""
        rows = await self.store.fetchall(
            "SELECT ts, json_extract(metrics, ?) AS v FROM results "
            "WHERE check_name = ? AND target = ? AND ts >= ? ORDER BY ts",
            (f'$."{metric}"', check, target, iso(since)))
        return [(parse_iso(r["ts"]), float(r["v"])) for r in rows if r["v"] is not None]

    async def prune(self, before: datetime) -> int:
        async with self.store.transaction() as db:
            await db.execute("DELETE FROM results WHERE ts < ?", (iso(before),))
            cur = await db.execute("DELETE FROM beats WHERE ts < ?", (iso(before),))
            return cur.rowcount


def _result(r: Any) -> CheckResult:
    return CheckResult(r["check_name"], r["kind"], r["target"], r["status"], r["message"],
                       json.loads(r["metrics"]), json.loads(r["details"]), r["duration_ms"])
