"""Halts — approval requests — persisted in SQLite, answered exactly once.

Every state change is a conditional UPDATE whose row count decides who won, so an answer from
the CLI, the web and an expiry sweep racing each other (even from different processes) lets
exactly one through; the losers get a `HaltError` that says what happened instead.

    status:     pending ──answer──▶ answered
                   ├─────expiry───▶ expired (answer = the default, by "timeout")
                   └─────cancel───▶ cancelled
    execution:  NULL ──claim──▶ claimed ──finish──▶ done | replanned

A state change and its event commit in one transaction (joined to the caller's, if any), so a crash
never leaves a halt without its `halt.requested` or an answer without its `halt.answered`. An
approval is recorded together with the claim of its execution by the answering process (`owner`,
with a lease), so nobody else runs it while that process lives; `take_over` hands the execution of
a halt whose claimant died to the reconciler (`Engine.reconcile`).
"""

from __future__ import annotations

import builtins
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable, Literal, NoReturn, Sequence

from .._faults import crash_point
from .._rows import halt_json
from ..clock import Clock, iso, parse_iso
from ..errors import FaztAgentError
from ..event_types import HaltAnswered, HaltAnswerRefused, HaltExpired, HaltReminded, HaltRequested
from ..events import EventLog
from ..kernel.base import Plan
from ..store import LEASE, Store, owner

Status = Literal["pending", "answered", "expired", "cancelled"]
Execution = Literal["claimed", "done", "replanned"]
OPTION = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
MAX_OPTIONS = 10
MIN_REMIND_BEFORE = 60.0
Then = Callable[["Halt"], Awaitable[None]]


class HaltError(FaztAgentError):
    """A halt cannot be created, answered or changed as asked; the message says why."""


@dataclass(frozen=True)
class Halt:
    id: int
    incident_id: int | None
    rule: str | None
    title: str
    body: str
    plan: Plan
    options: list[str]
    default_option: str
    status: Status
    answer: str | None
    answered_by: str | None
    note: str | None
    created_at: datetime
    expires_at: datetime
    remind_at: datetime | None
    reminded_at: datetime | None
    answered_at: datetime | None
    execution: Execution | None
    action_id: int | None
    owner: str | None = None          # the process that claimed the execution
    lease_until: datetime | None = None
    answered_via: str | None = None   # the channel of the answer: cli, mcp, web, link, slack, email

    @property
    def answered_by_via(self) -> str:
        """Who answered, and through which channel ("alice via slack")."""
        by = self.answered_by or "?"
        return f"{by} via {self.answered_via}" if self.answered_via and self.answered_via != by else by

    def to_json(self) -> dict[str, Any]:
        return halt_json(self, self.plan.to_json())


class HaltStore:
    """Create, answer, expire, remind and claim halts in one store."""

    def __init__(self, store: Store, events: EventLog, clock: Clock):
        self.store = store
        self.events = events
        self.clock = clock
        self.me = owner()

    async def create(self, *, plan: Plan, title: str, body: str, options: Sequence[str] = ("approve", "deny"),
                     default: str = "deny", expires_in: float = 86400, remind_before: float | None = None,
                     incident_id: int | None = None, rule: str | None = None) -> Halt:
        """Persist a pending halt and emit `halt.requested`.

        The reminder falls `remind_before` seconds before expiry (default: 20 % of `expires_in`,
        at least 60 s); none when that would be before now.

        Raises:
            HaltError: bad options (empty, repeated, more than 10, not like `approve` or
                `keep-7d`), a default that is not an option, or `expires_in` <= 0.
        """
        options = list(options)
        if not options or len(options) > MAX_OPTIONS:
            raise HaltError(f"a halt needs 1 to {MAX_OPTIONS} options, got {len(options)}: {options!r}")
        if len(set(options)) != len(options):
            raise HaltError(f"halt options must be unique, got {options!r}")
        bad = [o for o in options if not OPTION.match(o)]
        if bad:
            raise HaltError(f"bad halt option(s) {bad!r}: use lowercase letters, digits, '-' and '_', "
                            "at most 32 characters, starting with a letter or digit (e.g. 'approve')")
        if default not in options:
            raise HaltError(f"the default {default!r} is not one of the options {options!r}")
        if not expires_in > 0:
            raise HaltError(f"expires_in must be positive seconds, got {expires_in!r}")
        now = self.clock.now()
        expires_at = now + timedelta(seconds=expires_in)
        before = remind_before if remind_before is not None else max(0.2 * expires_in, MIN_REMIND_BEFORE)
        remind_at = expires_at - timedelta(seconds=before)
        remind = iso(remind_at) if now < remind_at < expires_at else None
        async with self.store.transaction() as db:   # the halt and its event commit together
            cur = await db.execute(
                "INSERT INTO halts(incident_id, rule, title, body, plan, options, default_option, status,"
                " created_at, expires_at, remind_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
                (incident_id, rule, title, body, json.dumps(plan.to_json()), json.dumps(options), default,
                 iso(now), iso(expires_at), remind))
            halt_id = cur.lastrowid
            assert halt_id is not None
            crash_point("halt.row")
            await self.events.emit("halt.requested", HaltRequested(
                halt_id=halt_id, action=plan.action, summary=plan.summary, options=options, default=default,
                expires_at=iso(expires_at)), source="halts", incident_id=incident_id)
            crash_point("halt.requested")
            return await self._must_get(halt_id)

    async def get(self, halt_id: int) -> Halt | None:
        row = await self.store.fetchone("SELECT * FROM halts WHERE id = ?", (halt_id,))
        return halt_from_row(row) if row else None

    async def list(self, status: Status | None = None, limit: int = 100) -> builtins.list[Halt]:
        """Halts, newest first, optionally only those with `status`."""
        where, params = ("WHERE status = ?", [status]) if status else ("", [])
        rows = await self.store.fetchall(f"SELECT * FROM halts {where} ORDER BY id DESC LIMIT ?", [*params, limit])
        return [halt_from_row(r) for r in rows]

    async def unfinished(self) -> builtins.list[Halt]:
        """Approved halts whose execution has not ended: claimed, or never claimed (an approval or
        an expiry whose default acts, cut off before its run), oldest first."""
        rows = await self.store.fetchall(
            "SELECT * FROM halts WHERE execution = 'claimed' OR (execution IS NULL AND"
            " ((status = 'answered' AND answer = 'approve') OR (status = 'expired' AND answer != 'deny')))"
            " ORDER BY id")
        return [halt_from_row(r) for r in rows]

    async def unasked(self) -> builtins.list[Halt]:
        """Pending halts without any notification: their owner was never asked."""
        rows = await self.store.fetchall(
            "SELECT * FROM halts h WHERE status = 'pending' AND NOT EXISTS"
            " (SELECT 1 FROM notifications n WHERE n.halt_id = h.id) ORDER BY id")
        return [halt_from_row(r) for r in rows]

    async def answer(self, halt_id: int, option: str, *, by: str, note: str | None = None,
                     claim: bool = False, channel: str | None = None, then: Then | None = None) -> Halt:
        """Answer a pending halt; only the first answer counts. Emits `halt.answered`, or
        `halt.answer_refused` (with `by`, the channel, and the reason) for an answer that does not count.
        With `claim`, the answer also claims the execution for this process (in the same UPDATE):
        whoever approves runs the plan, and nobody else does while this process lives. `then(halt)`
        runs in the answer's transaction (the notice telling every channel who answered).

        Raises:
            HaltError: no such halt, `option` is not one of its options, or it was already
                answered, expired or cancelled (the message says with what, by whom, when).
        """
        halt = await self.get(halt_id)
        if halt is None:
            await self.refuse(halt_id, None, option, by, f"there is no halt #{halt_id}", channel)
        assert halt is not None
        if option not in halt.options:
            await self.refuse(halt_id, halt.incident_id, option, by,
                              f"{option[:64]!r} is not an option of halt #{halt_id}; "
                              f"answer one of: {', '.join(halt.options)}", channel)
        at = self.clock.now()
        now = iso(at)
        claimed = ("claimed", self.me, iso(at + timedelta(seconds=LEASE))) if claim else (None, None, None)
        async with self.store.transaction() as db:   # the answer and its event commit together
            cur = await db.execute(
                "UPDATE halts SET status = 'answered', answer = ?, answered_by = ?, note = ?, answered_at = ?,"
                " execution = ?, owner = ?, lease_until = ?, answered_via = ? WHERE id = ? AND status = 'pending'"
                " AND expires_at > ?", (option, by, note, now, *claimed, channel, halt_id, now))
            if cur.rowcount:
                await self.events.emit("halt.answered", HaltAnswered(halt_id=halt_id, option=option, by=by,
                                                                     note=note, channel=channel),
                                       source="halts", incident_id=halt.incident_id)
                if then is not None:
                    await then(await self._must_get(halt_id))
        if not cur.rowcount:
            await self.refuse(halt_id, halt.incident_id, option, by, _why_closed(await self._must_get(halt_id)),
                              channel)
        crash_point("halt.answered")
        return await self._must_get(halt_id)

    async def refuse(self, halt_id: int | None, incident_id: int | None, option: str, by: str, reason: str,
                     channel: str | None = None) -> NoReturn:
        """Record a refused answer in the audit trail, then refuse it (HaltError with `reason`)."""
        await self.events.emit("halt.answer_refused", HaltAnswerRefused(halt_id=halt_id, option=option[:64],
                                                                        by=by[:128], reason=reason, channel=channel),
                               source="halts", incident_id=incident_id)
        raise HaltError(reason)

    async def expire_due(self, now: datetime | None = None, then: Then | None = None) -> builtins.list[Halt]:
        """Expire the pending halts whose time is up, answering them with their default.

        Emits `halt.expired` for each; `then(halt)` runs in the same transaction (the owner's
        notice); returns them so the caller applies the defaults.
        """
        at = iso(now or self.clock.now())
        rows = await self.store.fetchall(
            "SELECT id FROM halts WHERE status = 'pending' AND expires_at <= ? ORDER BY id", (at,))
        expired = []
        for row in rows:
            async with self.store.transaction() as db:
                cur = await db.execute(
                    "UPDATE halts SET status = 'expired', answer = default_option, answered_by = 'timeout',"
                    " answered_at = ? WHERE id = ? AND status = 'pending' AND expires_at <= ?", (at, row["id"], at))
                if cur.rowcount:
                    halt = await self._must_get(row["id"])
                    await self.events.emit("halt.expired", HaltExpired(halt_id=halt.id, default=halt.default_option),
                                           source="halts", incident_id=halt.incident_id)
                    if then is not None:
                        await then(halt)
                    expired.append(halt)
        return expired

    async def remind_due(self, now: datetime | None = None, then: Then | None = None) -> builtins.list[Halt]:
        """Mark the pending halts whose reminder is due as reminded (once each).

        Emits `halt.reminded` for each; `then(halt)` (the reminder itself) runs in the same
        transaction; returns them.
        """
        at = iso(now or self.clock.now())
        rows = await self.store.fetchall(
            "SELECT id FROM halts WHERE status = 'pending' AND reminded_at IS NULL AND remind_at <= ?"
            " AND expires_at > ? ORDER BY id", (at, at))
        reminded = []
        for row in rows:
            async with self.store.transaction() as db:
                cur = await db.execute(
                    "UPDATE halts SET reminded_at = ? WHERE id = ? AND status = 'pending' AND reminded_at IS NULL",
                    (at, row["id"]))
                if cur.rowcount:
                    halt = await self._must_get(row["id"])
                    await self.events.emit("halt.reminded", HaltReminded(
                        halt_id=halt.id, expires_at=iso(halt.expires_at)), source="halts",
                        incident_id=halt.incident_id)
                    if then is not None:
                        await then(halt)
                    reminded.append(halt)
        return reminded

    async def claim_execution(self, halt_id: int) -> bool:
        """Take the right to carry out an answered halt (or an expired one whose default is not
        `deny`) for this process, under a lease; True for exactly one caller."""
        changed = await self.store.execute(
            "UPDATE halts SET execution = 'claimed', owner = ?, lease_until = ? WHERE id = ? AND execution IS NULL"
            " AND (status = 'answered' OR (status = 'expired' AND answer != 'deny'))",
            (self.me, self._lease(), halt_id))
        return changed == 1

    async def take_over(self, halt: Halt) -> bool:
        """Claim the execution of an approved halt that nobody is carrying out (`halt` as just read:
        never claimed, or claimed by a process that is gone); True for exactly one caller."""
        changed = await self.store.execute(
            "UPDATE halts SET execution = 'claimed', owner = ?, lease_until = ? WHERE id = ? AND execution IS ?"
            " AND owner IS ? AND (status = 'answered' OR (status = 'expired' AND answer != 'deny'))",
            (self.me, self._lease(), halt.id, halt.execution, halt.owner))
        return changed == 1

    async def renew(self, halt_id: int) -> None:
        """Keep this process's claim on a halt's execution (while it re-plans a large plan)."""
        await self.store.execute("UPDATE halts SET lease_until = ? WHERE id = ? AND owner = ? AND execution = 'claimed'",
                                 (self._lease(), halt_id, self.me))

    def _lease(self) -> str:
        return iso(self.clock.now() + timedelta(seconds=LEASE))

    async def finish_execution(self, halt_id: int, *, result: Literal["done", "replanned"],
                               action_id: int | None = None) -> None:
        """Record how a claimed execution ended.

        Raises:
            HaltError: `result` is not done/replanned, or the halt's execution is not claimed.
        """
        if result not in ("done", "replanned"):
            raise HaltError(f"an execution ends 'done' or 'replanned', not {result!r}")
        changed = await self.store.execute(
            "UPDATE halts SET execution = ?, action_id = COALESCE(?, action_id)"
            " WHERE id = ? AND execution = 'claimed'", (result, action_id, halt_id))
        if not changed:
            halt = await self.get(halt_id)
            state = "does not exist" if halt is None else f"has execution {halt.execution!r}"
            raise HaltError(f"cannot finish halt #{halt_id}: it {state}, not 'claimed' "
                            "(call claim_execution first)")

    async def set_text(self, halt_id: int, title: str, body: str) -> None:
        """Replace the message of a halt (its text names its own id, known only after create)."""
        await self.store.execute("UPDATE halts SET title = ?, body = ? WHERE id = ?", (title, body, halt_id))

    async def cancel(self, halt_id: int, reason: str, then: Then | None = None) -> Halt:
        """Withdraw a pending halt (e.g. the incident resolved itself); `reason` goes in its note.

        Raises:
            HaltError: no such halt, or it is no longer pending.
        """
        async with self.store.transaction() as db:   # the cancellation and its event commit together
            cur = await db.execute(
                "UPDATE halts SET status = 'cancelled', note = ?, answered_at = ? WHERE id = ? AND status = 'pending'",
                (reason, iso(self.clock.now()), halt_id))
            halt = await self.get(halt_id)
            if halt is not None and cur.rowcount:
                await self.events.emit("halt.cancelled", {"halt_id": halt_id, "reason": reason}, source="halts",
                                       incident_id=halt.incident_id)
                if then is not None:
                    await then(halt)
        if halt is None:
            raise HaltError(f"there is no halt #{halt_id}")
        if not cur.rowcount:
            raise HaltError(_why_closed(halt))
        return halt

    async def _must_get(self, halt_id: int) -> Halt:
        halt = await self.get(halt_id)
        if halt is None:
            raise HaltError(f"there is no halt #{halt_id}")
        return halt


def _why_closed(halt: Halt) -> str:
    """Why a halt can no longer be answered, in one sentence."""
    when = iso(halt.answered_at) if halt.answered_at else "?"
    if halt.status == "answered":
        return f"halt #{halt.id} was already answered {halt.answer!r} by {halt.answered_by_via} at {when}"
    if halt.status == "cancelled":
        return f"halt #{halt.id} was cancelled at {when}: {halt.note}"
    verb = "was applied" if halt.status == "expired" else "applies"   # still pending: the sweep is due
    return f"halt #{halt.id} expired at {iso(halt.expires_at)}; its default {halt.default_option!r} {verb}"


def halt_from_row(r: Any) -> Halt:
    def ts(value: str | None) -> datetime | None:
        return parse_iso(value) if value else None

    return Halt(id=r["id"], incident_id=r["incident_id"], rule=r["rule"], title=r["title"], body=r["body"],
                plan=Plan.from_json(json.loads(r["plan"])), options=json.loads(r["options"]),
                default_option=r["default_option"], status=r["status"], answer=r["answer"],
                answered_by=r["answered_by"], note=r["note"], created_at=parse_iso(r["created_at"]),
                expires_at=parse_iso(r["expires_at"]), remind_at=ts(r["remind_at"]),
                reminded_at=ts(r["reminded_at"]), answered_at=ts(r["answered_at"]),
                execution=r["execution"], action_id=r["action_id"], owner=r["owner"],
                lease_until=ts(r["lease_until"]), answered_via=r["answered_via"])
