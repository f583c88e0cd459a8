"""Carrying out verdicts: running actions (with crash-safe records), opening and answering
halts, telling the owner.

Every action run is a row in `actions` (running -> succeeded | ineffective | failed | interrupted)
written before `apply` starts, so a daemon killed mid-apply finds it on restart. `ineffective`:
apply went without error but changed nothing (every planned file was gone), which is never
reported as done. A halt runs its plan at most once: the executing process claims it with a
conditional UPDATE.

A failed safe action the agent took on an incident is decided again with backoff while the
incident stays open ([defaults] retry_backoff, retry_attempts); the attempts are the failed rows
of the incident in `actions`. The owner hears of the first failure and of the last, not of each.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable, Coroutine

from pydantic import ValidationError

from . import messages
from .clock import iso, parse_iso
from .decision import Decision
from .errors import ActionError, FaztAgentError
from .event_types import ActionData, ActionRetriesExhausted, ActionRetryScheduled, HaltReplanned
from .halt.store import Halt, HaltError, HaltStore
from .incidents import Incident, IncidentStore
from .kernel import ACTIONS, Action, ActionContext, Constraints, Outcome, Plan
from .notify import Notifications
from .policy.evaluate import History, Judgement, retry_delay
from .policy.model import Policy, Rule
from .units import format_duration

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger(__name__)
Spawn = Callable[[str, Coroutine[Any, Any, None]], None]


class Executor:
    def __init__(self, rt: Runtime):
        self.rt = rt
        self.clock = rt.clock
        self.notifications = Notifications(rt.store, rt.events, rt.clock, list(rt.config.file.notify.urls))
        self.halts = HaltStore(rt.store, rt.events, rt.clock)
        self.incidents = IncidentStore(rt.store, rt.events, rt.clock)
        self.host = rt.config.agent.name or socket.gethostname()

    @property
    def policy(self) -> Policy:
        return self.rt.definitions.policy

    @property
    def personality(self) -> Any:
        return self.rt.config.agent.personality

    def action(self, name: str) -> Action | None:
        cls = ACTIONS.get(name)
        return cls() if cls else None

    def context(self, name: str) -> ActionContext:
        c = self.policy.constraints
        return ActionContext(
            clock=self.clock,
            constraints=Constraints(cleanup_roots=tuple(c.cleanup_roots), service_units=tuple(c.service_units),
                                    domains=tuple(c.domains)),
            settings=self.rt.definitions.kernel.for_action(name), notifier=self.notifications,
            data_dir=self.rt.config.data_dir)

    async def history(self, rule: Rule | None, incident: Incident | None) -> History:
        """Earlier actions of `rule`: the last on this incident's check/target, and the count in its window.

        A failed action counts against the window but starts no cooldown: its retries follow
        [defaults] retry_backoff instead (a cooldown of an hour would hold a retry due in 5 min).
        """
        if rule is None:
            return History()
        window = rule.window if rule.window is not None else self.policy.defaults.window
        since = iso(self.clock.now() - timedelta(seconds=window))
        count = await self.rt.store.scalar(
            "SELECT COUNT(*) FROM actions WHERE rule = ? AND state != 'interrupted' AND created_at >= ?",
            (rule.name, since))
        last = None
        if incident is not None:
            last = await self.rt.store.scalar(
                "SELECT MAX(a.created_at) FROM actions a JOIN incidents i ON a.incident_id = i.id "
                "WHERE a.rule = ? AND a.state NOT IN ('interrupted', 'failed') AND i.check_name = ? AND i.target = ?",
                (rule.name, incident.check, incident.target))
        return History(last_action_at=parse_iso(last) if last else None, actions_in_window=count or 0)

    # -- verdicts ------------------------------------------------------------------------

    async def dispatch(self, j: Judgement, plan: Plan, rule: Rule | None, incident: Incident | None,
                       requested_by: str, spawn: Spawn | None) -> Decision:
        if j.verdict == "act":
            action_id = await self._start(plan, rule, incident, None, requested_by)
            if spawn is not None:
                spawn("action", self._finish(action_id, plan, incident))
                return Decision("act", j.reason, plan.to_json(), action_id=action_id)
            outcome = await self._finish(action_id, plan, incident)
            return Decision("act", j.reason, plan.to_json(), action_id=action_id,
                            outcome={"ok": _state(outcome) == "succeeded", "changed": outcome.changed,
                                     "state": _state(outcome),
                                     "message": outcome.message, "details": outcome.details})
        if j.verdict == "ask":
            halt = await self.open_halt(plan, j.reason, rule, incident)
            if incident is not None:
                await self._supersede(halt, incident)
            return Decision("ask", j.reason, plan.to_json(), halt_id=halt.id)
        if incident is not None and not j.quiet:
            await self.tell(incident, j.reason, plan)
        return Decision(j.verdict, j.reason, plan.to_json())

    async def _supersede(self, halt: Halt, incident: Incident) -> None:
        """A new question about an incident (it worsened while a halt waited) withdraws the older
        ones, so the owner has one request per incident to answer, at its current severity."""
        for older in await self.halts.list(status="pending"):
            if older.incident_id == incident.id and older.id != halt.id:
                try:
                    await self.halts.cancel(older.id, f"superseded by halt #{halt.id} "
                                                      f"(the incident is {incident.severity} now)")
                except HaltError:
                    pass  # answered or expired meanwhile: that answer stands

    async def tell(self, incident: Incident, reason: str, plan: Plan | None = None) -> None:
        title, body = messages.incident_notice(incident, reason, self.personality, self.host, plan)
        severity = "critical" if incident.severity == "critical" else "warning"
        await self.notifications.notify(title, body, severity=severity, incident_id=incident.id)

    async def open_halt(self, plan: Plan, reason: str, rule: Rule | None, incident: Incident | None) -> Halt:
        expiry = rule.halt_expiry if rule and rule.halt_expiry is not None else self.policy.defaults.halt_expiry
        options, default = ["approve", "deny"], "deny"
        expires = self.clock.now() + timedelta(seconds=expiry)
        title, body = messages.halt_request(None, incident, plan, reason, options, default,
                                            f"{expires:%Y-%m-%d %H:%M} UTC", self.personality, self.host)
        halt = await self.halts.create(plan=plan, title=title, body=body, options=options, default=default,
                                       expires_in=expiry, incident_id=incident.id if incident else None,
                                       rule=rule.name if rule else None)
        title, body = messages.halt_request(halt.id, incident, plan, reason, options, default,
                                            f"{expires:%Y-%m-%d %H:%M} UTC", self.personality, self.host)
        await self.halts.set_text(halt.id, title, body)
        await self.notifications.notify(title, body, severity="warning", halt_id=halt.id,
                                        incident_id=incident.id if incident else None)
        return halt

    # -- actions -------------------------------------------------------------------------

    async def _start(self, plan: Plan, rule: Rule | None, incident: Incident | None, halt_id: int | None,
                     requested_by: str) -> int:
        now = iso(self.clock.now())
        async with self.rt.store.transaction() as db:
            cur = await db.execute(
                "INSERT INTO actions(incident_id, halt_id, rule, action, args, plan, risk, state, requested_by, "
                "created_at, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?)",
                (incident.id if incident else None, halt_id, rule.name if rule else None, plan.action,
                 json.dumps(plan.args, default=str), json.dumps(plan.to_json(), default=str), plan.risk,
                 requested_by, now, now))
            action_id = cur.lastrowid
        assert action_id is not None
        await self._event("action.started", action_id, plan, incident, "")
        return action_id

    async def _finish(self, action_id: int, plan: Plan, incident: Incident | None) -> Outcome:
        action = self.action(plan.action)
        assert action is not None
        try:
            outcome = await asyncio.wait_for(action.apply(plan, self.context(plan.action)), action.timeout)
        except asyncio.TimeoutError:
            outcome = Outcome(False, f"timed out after {action.timeout:g}s")
        except asyncio.CancelledError:
            await self._set_state(action_id, "interrupted", Outcome(False, "interrupted: the daemon stopped"))
            await self._event("action.interrupted", action_id, plan, incident, "the daemon stopped during apply")
            raise
        except ActionError as e:
            outcome = Outcome(False, str(e))
        except Exception as e:  # supervisor boundary: one broken action never breaks the daemon
            log.exception("action %s failed", plan.action)
            outcome = Outcome(False, f"{type(e).__name__}: {e}")
        state = _state(outcome)
        await self._set_state(action_id, state, outcome)
        await self._event(f"action.{state}", action_id, plan, incident, outcome.message, outcome.details)
        row = await self._row(action_id)
        told = outcome.message
        if state == "failed" and incident is not None and plan.risk == "safe" and row["halt_id"] is None:
            told = await self._retry_later(action_id, plan, incident, outcome)
        elif state == "succeeded" and incident is not None:
            failures = await self._failures(incident.id)
            if failures:
                told += f" (after {failures} failed attempt{'s' if failures != 1 else ''})"
        if told is not None:
            title, body = messages.action_report(plan.summary, outcome.ok, told, incident, self.host,
                                                 changed=outcome.changed)
            await self.notifications.notify(title, body, severity="info" if state == "succeeded" else "warning",
                                            incident_id=incident.id if incident else None)
        if incident is not None and state == "succeeded":
            rule = self.policy.rule(row["rule"] or "")
            verify = rule.verify_after if rule and rule.verify_after is not None else self.policy.defaults.verify_after
            await self.incidents.set_verify(incident.id, action_id, self.clock.now() + timedelta(seconds=verify))
        return outcome

    async def _failures(self, incident_id: int) -> int:
        """Failed attempts on an incident so far (the retry counter, derived from `actions`)."""
        return await self.rt.store.scalar(
            "SELECT COUNT(*) FROM actions WHERE incident_id = ? AND state = 'failed'", (incident_id,)) or 0

    async def _retry_later(self, action_id: int, plan: Plan, incident: Incident, outcome: Outcome) -> str | None:
        """After a failed safe action on an open incident: schedule the next decision by the backoff,
        or give up. Returns what to tell the owner: at the first failure and when retries are
        exhausted; None in between (each attempt is an event)."""
        defaults = self.policy.defaults
        failures = await self._failures(incident.id)
        if defaults.retry_attempts <= 1 or failures > defaults.retry_attempts:
            return outcome.message  # no retries, or a fresh decision (the incident worsened) after giving up
        data = dict(action_id=action_id, action=plan.action, summary=plan.summary, attempt=failures,
                    max_attempts=defaults.retry_attempts, message=outcome.message)
        delay = retry_delay(defaults, failures)
        if delay is None:
            await self.rt.events.emit("action.retries_exhausted", ActionRetriesExhausted(**data), source="kernel",
                                      incident_id=incident.id)
            return (f"{outcome.message}. Gave up after {failures} failed attempts; the incident stays open "
                    "and needs you")
        at = self.clock.now() + timedelta(seconds=delay)
        await self.rt.store.execute("UPDATE incidents SET retry_at = ? WHERE id = ? AND status = 'open'",
                                    (iso(at), incident.id))
        await self.rt.events.emit("action.retry_scheduled", ActionRetryScheduled(**data, next_attempt_at=iso(at)),
                                  source="kernel", incident_id=incident.id)
        if failures > 1:
            return None
        return (f"{outcome.message}. I will try again in {format_duration(delay)} ({at:%H:%M} UTC) while the "
                f"incident stays open, at most {defaults.retry_attempts - 1} more time"
                f"{'s' if defaults.retry_attempts > 2 else ''}; you will hear if it keeps failing")

    async def _row(self, action_id: int) -> Any:
        return await self.rt.store.fetchone("SELECT * FROM actions WHERE id = ?", (action_id,))

    async def _set_state(self, action_id: int, state: str, outcome: Outcome) -> None:
        await self.rt.store.execute(
            "UPDATE actions SET state=?, finished_at=?, outcome=? WHERE id=?",
            (state, iso(self.clock.now()), json.dumps({"ok": outcome.ok, "changed": outcome.changed,
                                                       "message": outcome.message, "details": outcome.details},
                                                      default=str), action_id))

    async def _event(self, type_: str, action_id: int, plan: Plan, incident: Incident | None, message: str,
                     details: dict[str, Any] | None = None) -> None:
        await self.rt.events.emit(type_, ActionData(action_id=action_id, action=plan.action, summary=plan.summary,
                                                    message=message, details=details or {}),
                                  source="kernel", incident_id=incident.id if incident else None)

    async def interrupt_running(self) -> list[int | None]:
        """Mark actions left `running` by a dead process as interrupted; returns their incidents."""
        rows = await self.rt.store.fetchall("SELECT * FROM actions WHERE state = 'running'")
        incidents = []
        for row in rows:
            changed = await self.rt.store.execute(
                "UPDATE actions SET state='interrupted', finished_at=? WHERE id=? AND state='running'",
                (iso(self.clock.now()), row["id"]))
            if changed:
                plan = Plan.from_json(json.loads(row["plan"]))
                incident = await self.incidents.get(row["incident_id"]) if row["incident_id"] else None
                await self._event("action.interrupted", row["id"], plan, incident,
                                  "found running after a restart: the agent stopped during apply")
                incidents.append(row["incident_id"])
        return incidents

    # -- incidents after actions ---------------------------------------------------------

    async def on_resolved(self, incident: Incident) -> None:
        if incident.verify_action_id is not None:
            row = await self._row(incident.verify_action_id)
            plan = Plan.from_json(json.loads(row["plan"]))
            await self._event("action.verified", incident.verify_action_id, plan, incident,
                              "the incident resolved after the action")
        for halt in await self.halts.list(status="pending"):
            if halt.incident_id == incident.id:
                await self.halts.cancel(halt.id, "the incident resolved by itself")
        if incident.last_verdict in ("notify", "ask", "deny"):
            await self.notifications.notify(f"[{self.host}] resolved: {messages.where(incident)}",
                                            f"{messages.where(incident)} is ok again: {incident.message}",
                                            severity="info", incident_id=incident.id)

    async def ineffective(self, incident: Incident) -> None:
        """An action ran but the incident is still open at its verification time."""
        if incident.verify_action_id is not None:
            row = await self._row(incident.verify_action_id)
            plan = Plan.from_json(json.loads(row["plan"]))
            await self._event("action.ineffective", incident.verify_action_id, plan, incident,
                              f"the incident is still {incident.severity} after the action")
        await self.incidents.set_verify(incident.id, None, None)

    # -- halts ---------------------------------------------------------------------------

    async def answer(self, halt_id: int, option: str, *, by: str, note: str | None = None) -> dict[str, Any]:
        """Record the owner's answer (exactly once) and, on approve, run the plan.

        Raises:
            HaltError: no such halt, already answered, expired, or not one of its options.
        """
        halt = await self.halts.answer(halt_id, option, by=by, note=note)
        result: dict[str, Any] = {"halt": halt.to_json(), "executed": False}
        if option == "approve":
            result.update(await self.run_halt(halt, requested_by=by))
        return result

    async def run_halt(self, halt: Halt, *, requested_by: str) -> dict[str, Any]:
        """Re-plan an approved halt; apply it unchanged, or ask again if the world moved."""
        if not await self.halts.claim_execution(halt.id):
            return {"executed": False, "message": "another process already ran this halt"}
        incident = await self.incidents.get(halt.incident_id) if halt.incident_id else None
        action = self.action(halt.plan.action)
        if action is None:
            raise FaztAgentError(f"halt {halt.id}: unknown action {halt.plan.action!r}")
        ctx = self.context(halt.plan.action)
        try:
            fresh = await action.plan(action.validate(halt.plan.args, ctx), ctx)
        except (ValidationError, ActionError, OSError) as e:
            await self.halts.finish_execution(halt.id, result="done")
            title, body = messages.action_report(halt.plan.summary, False, f"cannot re-plan: {e}", incident, self.host)
            await self.notifications.notify(title, body, severity="warning", halt_id=halt.id)
            return {"executed": False, "message": f"cannot re-plan: {e}"}
        change = action.material_change(halt.plan, fresh)
        if change is not None:
            rule = self.policy.rule(halt.rule or "")
            new = await self.open_halt(fresh, f"the plan changed since you approved it: {change}", rule, incident)
            await self.halts.finish_execution(halt.id, result="replanned")
            await self.rt.events.emit("halt.replanned", HaltReplanned(halt_id=halt.id, new_halt_id=new.id,
                                                                      reason=change), source="halts")
            return {"executed": False, "replanned": True, "new_halt_id": new.id, "message": change}
        action_id = await self._start(halt.plan, self.policy.rule(halt.rule or ""), incident, halt.id, requested_by)
        outcome = await self._finish(action_id, halt.plan, incident)
        await self.halts.finish_execution(halt.id, result="done", action_id=action_id)
        state = _state(outcome)
        return {"executed": True, "action_id": action_id, "ok": state == "succeeded", "state": state,
                "changed": outcome.changed, "message": outcome.message, "details": outcome.details}

    async def sweep_halts(self) -> None:
        now = self.clock.now()
        for halt in await self.halts.remind_due(now):
            title, body = messages.halt_reminder(halt, self.personality, self.host)
            await self.notifications.notify(title, body, severity="warning", halt_id=halt.id)
        for halt in await self.halts.expire_due(now):
            if halt.default_option == "approve":
                await self.run_halt(halt, requested_by="timeout")
            await self.notifications.notify(
                f"[{self.host}] expired: {halt.plan.summary}",
                f"Halt {halt.id} got no answer by {halt.expires_at:%Y-%m-%d %H:%M} UTC; "
                f"the default '{halt.default_option}' applied.", severity="info", halt_id=halt.id)


def _state(outcome: Outcome) -> str:
    """The final state of an action row: an apply that changed nothing is `ineffective`, never done."""
    if not outcome.ok:
        return "failed"
    return "succeeded" if outcome.changed else "ineffective"
