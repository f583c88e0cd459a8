"""Incidents: a check that leaves `ok` opens one, keyed by (check, target); it is updated while
the check stays bad and resolved when it is ok again.

`transitions()` is the pure part (open incidents + a beat's results -> what changed);
`IncidentStore` records the changes and emits `incident.opened|updated|resolved` — only on
transitions, never for every sample.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from .clock import Clock, iso, parse_iso
from .event_types import IncidentData
from .events import EventLog
from .pulse.base import SEVERITY, CheckResult
from .store import Store

Change = Literal["opened", "worsened", "improved", "unchanged", "resolved"]


@dataclass(frozen=True)
class Incident:
    id: int
    check: str
    target: str
    kind: str
    status: Literal["open", "resolved"]
    severity: str
    peak_severity: str
    message: str
    metrics: dict[str, float]
    details: dict[str, Any]
    opened_at: datetime
    updated_at: datetime
    resolved_at: datetime | None
    beats: int
    decided_at: datetime | None = None
    last_verdict: str | None = None
    verify_action_id: int | None = None
    verify_by: datetime | None = None
    retry_at: datetime | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.check, self.target

    def values(self) -> dict[str, Any]:
        """What a rule's argument templates may refer to."""
        return {"check": self.check, "target": self.target, "kind": self.kind, "severity": self.severity,
                "message": self.message, "service": self.details.get("service"), "details": self.details,
                "metrics": self.metrics}

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "check": self.check, "target": self.target, "kind": self.kind,
                "status": self.status, "severity": self.severity, "peak_severity": self.peak_severity,
                "message": self.message, "metrics": self.metrics, "details": self.details,
                "opened_at": iso(self.opened_at), "updated_at": iso(self.updated_at),
                "resolved_at": iso(self.resolved_at) if self.resolved_at else None, "beats": self.beats,
                "last_verdict": self.last_verdict}


@dataclass(frozen=True)
class Transition:
    change: Change
    result: CheckResult
    incident: Incident | None  # the open incident before this beat, if any


def transitions(open_incidents: dict[tuple[str, str], Incident], results: list[CheckResult]) -> list[Transition]:
    """What each result of a beat does to the open incidents (pure)."""
    out = []
    for r in results:
        current = open_incidents.get((r.check, r.target))
        if r.status == "ok":
            if current is not None:
                out.append(Transition("resolved", r, current))
            continue
        if current is None:
            out.append(Transition("opened", r, None))
        elif SEVERITY[r.status] > SEVERITY[current.severity]:
            out.append(Transition("worsened", r, current))
        elif SEVERITY[r.status] < SEVERITY[current.severity]:
            out.append(Transition("improved", r, current))
        else:
            out.append(Transition("unchanged", r, current))
    return out


class IncidentStore:
    def __init__(self, store: Store, events: EventLog, clock: Clock):
        self.store = store
        self.events = events
        self.clock = clock

    async def open_incidents(self) -> dict[tuple[str, str], Incident]:
        rows = await self.store.fetchall("SELECT * FROM incidents WHERE status = 'open'")
        return {(r["check_name"], r["target"]): _incident(r) for r in rows}

    async def get(self, incident_id: int) -> Incident | None:
        row = await self.store.fetchone("SELECT * FROM incidents WHERE id = ?", (incident_id,))
        return _incident(row) if row else None

    async def list(self, *, status: str | None = None, limit: int = 100) -> list[Incident]:
        sql, params = "SELECT * FROM incidents", []
        if status:
            sql += " WHERE status = ?"
            params.append(status)
        rows = await self.store.fetchall(sql + " ORDER BY id DESC LIMIT ?", (*params, limit))
        return [_incident(r) for r in rows]

    async def apply(self, changes: list[Transition]) -> list[tuple[Transition, Incident]]:
        """Record a beat's transitions; returns each with the incident as it is now."""
        now = self.clock.now()
        out = []
        for t in changes:
            r = t.result
            if t.change == "opened":
                try:
                    async with self.store.transaction() as db:
                        cur = await db.execute(
                            "INSERT INTO incidents(check_name, target, kind, status, severity, peak_severity, message, "
                            "metrics, details, opened_at, updated_at) VALUES (?, ?, ?, 'open', ?, ?, ?, ?, ?, ?, ?)",
                            (r.check, r.target, r.kind, r.status, r.status, r.message, json.dumps(r.metrics),
                             json.dumps(r.details, default=str), iso(now), iso(now)))
                        incident_id = cur.lastrowid
                except sqlite3.IntegrityError:
                    continue  # another process (a CLI beat beside the daemon) opened it first: it decides
                assert incident_id is not None
                incident = Incident(incident_id, r.check, r.target, r.kind, "open", r.status, r.status, r.message,
                                    r.metrics, r.details, now, now, None, 1)
                await self._event("incident.opened", incident, None)
            else:
                assert t.incident is not None
                old = t.incident
                if t.change == "resolved":
                    incident = replace(old, status="resolved", message=r.message, metrics=r.metrics,
                                       updated_at=now, resolved_at=now, beats=old.beats + 1)
                else:
                    peak = r.status if SEVERITY[r.status] > SEVERITY[old.peak_severity] else old.peak_severity
                    incident = replace(old, severity=r.status, peak_severity=peak, message=r.message,
                                       metrics=r.metrics, details=r.details, updated_at=now, beats=old.beats + 1)
                await self.store.execute(
                    "UPDATE incidents SET status=?, severity=?, peak_severity=?, message=?, metrics=?, details=?, "
                    "updated_at=?, resolved_at=?, beats=? WHERE id=?",
                    (incident.status, incident.severity, incident.peak_severity, incident.message,
                     json.dumps(incident.metrics), json.dumps(incident.details, default=str), iso(now),
                     iso(incident.resolved_at) if incident.resolved_at else None, incident.beats, incident.id))
                if t.change == "resolved":
                    await self._event("incident.resolved", incident, old.severity)
                elif t.change in ("worsened", "improved"):
                    await self._event("incident.updated", incident, old.severity)
            out.append((t, incident))
        return out

    async def resolve_orphans(self, configured: set[str]) -> list[Incident]:
        """Resolve open incidents whose check was removed from the configuration (else they stay open)."""
        now = self.clock.now()
        closed = []
        for incident in (await self.open_incidents()).values():
            if incident.check in configured:
                continue
            message = f"check {incident.check!r} is no longer configured"
            changed = await self.store.execute(
                "UPDATE incidents SET status='resolved', message=?, updated_at=?, resolved_at=? "
                "WHERE id=? AND status='open'", (message, iso(now), iso(now), incident.id))
            if changed:
                resolved = replace(incident, status="resolved", message=message, updated_at=now, resolved_at=now)
                await self._event("incident.resolved", resolved, incident.severity)
                closed.append(resolved)
        return closed

    async def mark_decided(self, incident_id: int, verdict: str, *, retry_at: datetime | None = None) -> None:
        """Remember the verdict (and when a held-back action may be decided again)."""
        await self.store.execute(
            "UPDATE incidents SET decided_at=?, decided_severity=severity, last_verdict=?, retry_at=? WHERE id=?",
            (iso(self.clock.now()), verdict, iso(retry_at) if retry_at else None, incident_id))

    async def set_verify(self, incident_id: int, action_id: int | None, verify_by: datetime | None) -> None:
        """After an action: check on a later beat (by `verify_by`) that the incident resolved."""
        await self.store.execute("UPDATE incidents SET verify_action_id=?, verify_by=? WHERE id=?",
                                 (action_id, iso(verify_by) if verify_by else None, incident_id))

    async def _event(self, type_: str, incident: Incident, previous: str | None) -> None:
        await self.events.emit(type_, IncidentData(
            check=incident.check, target=incident.target, kind=incident.kind, severity=incident.severity,
            message=incident.message, previous=previous), source="incidents", incident_id=incident.id)


def _incident(r: Any) -> Incident:
    def ts(value: str | None) -> datetime | None:
        return parse_iso(value) if value else None

    return Incident(r["id"], r["check_name"], r["target"], r["kind"], r["status"], r["severity"],
                    r["peak_severity"], r["message"], json.loads(r["metrics"]), json.loads(r["details"]),
                    parse_iso(r["opened_at"]), parse_iso(r["updated_at"]), ts(r["resolved_at"]), r["beats"],
                    ts(r["decided_at"]), r["last_verdict"], r["verify_action_id"], ts(r["verify_by"]),
                    ts(r["retry_at"]))
