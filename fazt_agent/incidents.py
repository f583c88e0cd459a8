"""Incidents: a check that leaves `ok` opens one, keyed by (check, target); it is updated while
the check stays bad and resolved when it is ok again.

`transitions()` is the pure part (open incidents + a beat's results -> what changed);
`IncidentStore` records the changes and emits `incident.opened|updated|resolved` — only on
transitions, never for every sample.

Confirmation: a result of a `for = N` check opens (or worsens) an incident only at the status
all of its last N beats reached (`pulse.base.confirmed_status`); an improvement or a recovery
counts at once. Flap control: when the `flap_count`-th incident of one check target opens within
its `flap_window`, it opens as flapping (`incident.flapping`, reported once) and is held open
through ok beats until `flap_ok` ok beats in a row resolve it.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from .clock import Clock, iso, parse_iso
from .event_types import IncidentData, IncidentFlapping
from .events import EventLog
from .pulse.base import SEVERITY, CheckConfig, CheckResult, confirmed_status, overloaded
from .pulse.beats import BeatStore
from .store import Store
from .units import format_duration

# flapping: opened as the flap_count-th incident within flap_window; held: an ok beat that does not
# resolve a flapping incident
Change = Literal["opened", "flapping", "worsened", "improved", "unchanged", "held", "resolved"]
# kinds of incidents reported from outside the beat (`web/webhooks.py`): no configured check owns them
EXTERNAL_KINDS = frozenset({"alertmanager"})


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
    flapping_since: datetime | None = None

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
                "last_verdict": self.last_verdict,
                "flapping_since": iso(self.flapping_since) if self.flapping_since else None}


@dataclass(frozen=True)
class Flap:
    """Flap control of one check target: its check's settings, and what the store says now.

    The defaults turn it off (and let a flapping incident resolve like any other)."""

    count: int = 0        # the count-th incident opened within `window` is flapping (0: off)
    window: float = 3600.0
    calm: int = 0         # ok beats in a row that resolve a flapping incident
    openings: int = 0     # incidents of this check target opened within `window` before this beat
    ok_streak: int = 0    # ok results in a row up to this beat (asked only for flapping incidents)

    @property
    def flapping(self) -> bool:
        """Whether an incident opening now is the count-th within the window."""
        return self.count > 0 and self.openings + 1 >= self.count

    def describe(self) -> str:
        return (f"opened {self.openings + 1} times in {format_duration(self.window)}: held open until it is ok "
                f"for {self.calm} beats in a row, without a notice for each change")


NO_FLAP = Flap()


@dataclass(frozen=True)
class Transition:
    change: Change
    result: CheckResult
    incident: Incident | None  # the open incident before this beat, if any
    severity: str = ""         # the incident's severity after this beat (default: the result's status)
    flap: Flap = NO_FLAP


def transitions(open_incidents: dict[tuple[str, str], Incident], results: list[CheckResult],
                flaps: dict[tuple[str, str], Flap] | None = None) -> list[Transition]:
    """What each result of a beat does to the open incidents (pure). `flaps` is what
    `IncidentStore.flaps` found for this beat (none: no flap control). A result the agent could not
    measure in time (`pulse.base.overloaded`) says nothing about its target: it changes nothing."""
    out = []
    for r in results:
        if overloaded(r):
            continue
        key = (r.check, r.target)
        current = open_incidents.get(key)
        flap = (flaps or {}).get(key, NO_FLAP)
        if r.status == "ok":
            if current is None:
                continue
            if current.flapping_since is not None and flap.ok_streak < flap.calm:
                out.append(Transition("held", r, current, current.severity, flap))
            else:
                out.append(Transition("resolved", r, current, "ok", flap))
            continue
        confirmed = confirmed_status(r)
        if current is None:
            if confirmed != "ok":  # else pending: not seen for `for` beats yet
                out.append(Transition("flapping" if flap.flapping else "opened", r, None, confirmed, flap))
        elif SEVERITY[r.status] < SEVERITY[current.severity]:
            out.append(Transition("improved", r, current, r.status, flap))
        elif SEVERITY[confirmed] > SEVERITY[current.severity]:
            out.append(Transition("worsened", r, current, confirmed, flap))
        else:
            out.append(Transition("unchanged", r, current, current.severity, flap))
    # A check that could not measure at all reports `unknown` for its own target; for a kind of
    # several targets (disk) or none that is "". Once it measures again, that incident is over.
    measured = {r.check: r for r in results if r.target != ""}
    reported = {(r.check, r.target) for r in results}
    for (check, target), current in open_incidents.items():
        if target == "" and check in measured and (check, "") not in reported:
            r = measured[check]
            ok = CheckResult(check, r.kind, "", "ok", f"{check} measures again", {}, {})
            out.append(Transition("resolved", ok, current, "ok"))
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

    async def flaps(self, open_incidents: dict[tuple[str, str], Incident], results: list[CheckResult],
                    checks: dict[str, CheckConfig], beat_id: int | None = None) -> dict[tuple[str, str], Flap]:
        """Flap control for the results of beat `beat_id`: for a result that would open an incident,
        how many incidents of its check target opened within the check's `flap_window`; for an ok
        result on a flapping incident, how many ok beats in a row there are. Asks the store only then."""
        now = self.clock.now()
        out: dict[tuple[str, str], Flap] = {}
        for r in results:
            config = checks.get(r.check)
            if config is None or config.flap_count == 0 or overloaded(r):
                continue
            key = (r.check, r.target)
            current = open_incidents.get(key)
            flap = Flap(config.flap_count, config.flap_window, config.flap_ok)
            if current is None and r.status != "ok" and confirmed_status(r) != "ok":
                openings = await self.store.scalar(
                    "SELECT COUNT(*) FROM incidents WHERE check_name = ? AND target = ? AND opened_at >= ?",
                    (r.check, r.target, iso(now - timedelta(seconds=config.flap_window))))
                flap = replace(flap, openings=openings or 0)
            elif current is not None and current.flapping_since is not None and r.status == "ok":
                earlier = await BeatStore(self.store).statuses(r.check, r.target, config.flap_ok - 1,
                                                               before_beat=beat_id)
                streak = next((i for i, s in enumerate(earlier) if s != "ok"), len(earlier))
                flap = replace(flap, ok_streak=1 + streak)
            out[key] = flap
        return out

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
            severity = t.severity or r.status
            if t.change in ("opened", "flapping"):
                flapping = now if t.change == "flapping" else None
                try:
                    async with self.store.transaction() as db:
                        cur = await db.execute(
                            "INSERT INTO incidents(check_name, target, kind, status, severity, peak_severity, message, "
                            "metrics, details, opened_at, updated_at, flapping_since) "
                            "VALUES (?, ?, ?, 'open', ?, ?, ?, ?, ?, ?, ?, ?)",
                            (r.check, r.target, r.kind, severity, severity, r.message, json.dumps(r.metrics),
                             json.dumps(r.details, default=str), iso(now), iso(now),
                             iso(flapping) if flapping else None))
                        incident_id = cur.lastrowid
                except sqlite3.IntegrityError:
                    continue  # another process (a CLI beat beside the daemon) opened it first: it decides
                assert incident_id is not None
                incident = Incident(incident_id, r.check, r.target, r.kind, "open", severity, severity, r.message,
                                    r.metrics, r.details, now, now, None, 1, flapping_since=flapping)
                await self._event("incident.opened", incident, None)
                if flapping is not None:
                    await self.events.emit("incident.flapping", IncidentFlapping(
                        check=incident.check, target=incident.target, kind=incident.kind, severity=severity,
                        message=incident.message, openings=t.flap.openings + 1, window_s=t.flap.window,
                        ok_beats=t.flap.calm), source="incidents", incident_id=incident.id)
            else:
                assert t.incident is not None
                old = t.incident
                if t.change == "resolved":
                    incident = replace(old, status="resolved", message=r.message, metrics=r.metrics,
                                       updated_at=now, resolved_at=now, beats=old.beats + 1)
                elif t.change == "held":  # an ok beat of a flapping incident: it stays as it was
                    incident = replace(old, updated_at=now, beats=old.beats + 1)
                else:
                    peak = severity if SEVERITY[severity] > SEVERITY[old.peak_severity] else old.peak_severity
                    incident = replace(old, severity=severity, peak_severity=peak, message=r.message,
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
        """Resolve open incidents whose check was removed from the configuration (else they stay open).
        Incidents that came from outside the beat (`EXTERNAL_KINDS`: Alertmanager's) have no configured
        check; their source resolves them."""
        now = self.clock.now()
        closed = []
        for incident in (await self.open_incidents()).values():
            if incident.check in configured or incident.kind in EXTERNAL_KINDS:
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
                    ts(r["retry_at"]), flapping_since=ts(r["flapping_since"]))
