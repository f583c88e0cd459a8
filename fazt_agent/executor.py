"""Carrying out verdicts: running actions (with crash-safe records), opening and answering
halts, telling the owner.

Every action run is a row in `actions` (running -> succeeded | ineffective | failed | interrupted)
written before `apply` starts, so a daemon killed mid-apply finds it on restart. `ineffective`:
apply went without error but changed nothing (every planned file was gone), which is never
reported as done. A halt runs its plan at most once: the executing process claims it with a
conditional UPDATE.

What must follow a step is written with it: a verdict's rows (the action row and
`action.started`; the halt, `halt.requested` and the notification that asks the owner; a notice)
commit in the decision's transaction, and an action's end (its state, its one terminal event, the
halt's execution, the retry, the report to the owner) in one transaction. Running work is owned:
the action row and the halt's claim record the process (`store.owner`) and a lease renewed while
the work runs; `reclaim_actions` and `resume_halts` (the reconciler, `Engine.reconcile`) take over
only work whose owner is gone or whose lease expired.

A failed safe action the agent took on an incident is decided again with backoff while the
incident stays open ([defaults] retry_backoff, retry_attempts); the attempts are the failed rows
of the incident in `actions`. The owner hears of the first failure and of the last, not of each.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sqlite3
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable, Coroutine

from pydantic import ValidationError

from . import messages
from ._faults import crash_point
from .clock import iso, parse_iso
from .decision import Decision
from .errors import ActionError, FaztAgentError
from .event_types import ActionData, ActionRetriesExhausted, ActionRetryScheduled, HaltReplanned, HaltResumed
from .halt.store import Halt, HaltError, HaltStore
from .incidents import Incident, IncidentStore
from .kernel import ACTIONS, Action, ActionContext, Constraints, Outcome, Plan
from .notify import Notifications
from .policy.evaluate import History, Judgement, retry_delay
from .policy.model import Policy, Rule, snooze_seconds
from .store import LEASE, gone, owner, owner_pid, stale, unstoppable
from .units import format_duration

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger(__name__)
Spawn = Callable[[str, Coroutine[Any, Any, None]], None]
DECIDE_LEASE = 1800.0   # a decision's claim: longer than the longest LLM decision (max_steps x timeout)


class Executor:
    def __init__(self, rt: Runtime):
        self.rt = rt
        self.clock = rt.clock
        from .answer.channels import build_channels, links_decorator

        self.notifications = Notifications(rt.store, rt.events, rt.clock, list(rt.config.file.notify.urls),
                                           channels=build_channels(rt.config), decorate=links_decorator(rt.config))
        self.halts = HaltStore(rt.store, rt.events, rt.clock)
        self.incidents = IncidentStore(rt.store, rt.events, rt.clock)
        self.host = rt.config.agent.name or socket.gethostname()
        self.me = owner()

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

    async def record(self, j: Judgement, plan: Plan, rule: Rule | None, incident: Incident | None,
                     requested_by: str) -> Decision:
        """Write what a verdict starts, inside the caller's decision transaction: for act the action
        row (running, owned by this process); for ask the halt, its event and the owner's
        notification (sent after the commit); for notify or deny the notice. Nothing slow runs here."""
        if j.verdict == "act":
            action_id = await self._start(plan, rule, incident, None, requested_by)
            return Decision("act", j.reason, plan.to_json(), action_id=action_id)
        if j.verdict == "ask":
            halt = await self.open_halt(plan, j.reason, rule, incident)
            if incident is not None:
                await self._supersede(halt, incident)
            return Decision("ask", j.reason, plan.to_json(), halt_id=halt.id)
        if incident is not None and not j.quiet:
            await self.tell(incident, j.reason, plan)
        return Decision(j.verdict, j.reason, plan.to_json())

    async def carry_out(self, d: Decision, plan: Plan, incident: Incident | None, spawn: Spawn | None) -> Decision:
        """After the decision committed: apply an `act` verdict's action, as a task of the daemon
        (`spawn`) or inline (the CLI, MCP), where the outcome is part of the answer."""
        if d.verdict != "act" or d.action_id is None or d.paused:
            return d
        if spawn is not None:
            spawn("action", self._finish(d.action_id, plan, incident))
            return d
        outcome = await self._finish(d.action_id, plan, incident)
        return replace(d, outcome={"ok": _state(outcome) == "succeeded", "changed": outcome.changed,
                                   "state": _state(outcome), "message": outcome.message,
                                   "details": outcome.details})

    async def _supersede(self, halt: Halt, incident: Incident) -> None:
        """A new question about an incident (it worsened while a halt waited) withdraws the older
        ones, so the owner has one request per incident to answer, at its current severity."""
        for older in await self.halts.list(status="pending"):
            if older.incident_id == incident.id and older.id != halt.id:
                try:
                    await self.halts.cancel(older.id, f"superseded by halt #{halt.id} "
                                                      f"(the incident is {incident.severity} now)", then=self.closed)
                except HaltError:
                    pass  # answered or expired meanwhile: that answer stands

    async def tell(self, incident: Incident, reason: str, plan: Plan | None = None) -> None:
        title, body = messages.incident_notice(incident, reason, self.personality, self.host, plan)
        severity = "critical" if incident.severity == "critical" else "warning"
        await self.notifications.notify(title, body, severity=severity, incident_id=incident.id)

    async def open_halt(self, plan: Plan, reason: str, rule: Rule | None, incident: Incident | None) -> Halt:
        """Ask the owner: the halt, `halt.requested` and the notification commit together (in the
        caller's transaction, if any), so the owner is asked exactly once, or the halt never existed."""
        expiry = rule.halt_expiry if rule and rule.halt_expiry is not None else self.policy.defaults.halt_expiry
        options = list(rule.halt_options if rule and rule.halt_options else self.policy.defaults.halt_options)
        default = "deny"
        expires = self.clock.now() + timedelta(seconds=expiry)
        title, body = messages.halt_request(None, incident, plan, reason, options, default,
                                            f"{expires:%Y-%m-%d %H:%M} UTC", self.personality, self.host)
        async with self.rt.store.transaction():
            halt = await self.halts.create(plan=plan, title=title, body=body, options=options, default=default,
                                           expires_in=expiry, incident_id=incident.id if incident else None,
                                           rule=rule.name if rule else None)
            title, body = messages.halt_request(halt.id, incident, plan, reason, options, default,
                                                f"{expires:%Y-%m-%d %H:%M} UTC", self.personality, self.host)
            await self.halts.set_text(halt.id, title, body)
            await self.notifications.notify(title, body, severity="warning", halt_id=halt.id,
                                            incident_id=incident.id if incident else None, kind="request")
        return replace(halt, title=title, body=body)

    # -- actions -------------------------------------------------------------------------

    async def _start(self, plan: Plan, rule: Rule | None, incident: Incident | None, halt_id: int | None,
                     requested_by: str) -> int:
        """The action's row (running, owned by this process under a lease) and `action.started`,
        committed together — with the caller's decision, inside its transaction. For a halt's plan the
        halt records the action, so its execution is known to have started."""
        now = self.clock.now()
        async with self.rt.store.transaction() as db:
            cur = await db.execute(
                "INSERT INTO actions(incident_id, halt_id, rule, action, args, plan, risk, state, requested_by, "
                "created_at, started_at, owner, lease_until) VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?)",
                (incident.id if incident else None, halt_id, rule.name if rule else None, plan.action,
                 json.dumps(plan.args, default=str), json.dumps(plan.to_json(), default=str), plan.risk,
                 requested_by, iso(now), iso(now), self.me, iso(now + timedelta(seconds=LEASE))))
            action_id = cur.lastrowid
            assert action_id is not None
            if halt_id is not None:
                await db.execute("UPDATE halts SET action_id = ? WHERE id = ?", (action_id, halt_id))
            await self._event("action.started", action_id, plan, incident, "")
        return action_id

    async def _finish(self, action_id: int, plan: Plan, incident: Incident | None) -> Outcome:
        crash_point("action.started")
        action = self.action(plan.action)
        assert action is not None
        renewal = asyncio.create_task(self._renew(action_id), name=f"lease of action {action_id}")
        try:
            outcome = await asyncio.wait_for(action.apply(plan, self.context(plan.action)), action.timeout)
        except asyncio.TimeoutError:
            outcome = Outcome(False, f"timed out after {format_duration(action.timeout)}")
        except asyncio.CancelledError:
            renewal.cancel()
            # recorded even while cancellation keeps coming (an MCP server stopping cancels again and again)
            await unstoppable(self._interrupted(action_id, plan, incident, "the daemon stopped during apply",
                                                Outcome(False, "interrupted: the daemon stopped")))
            raise
        except ActionError as e:
            outcome = Outcome(False, str(e))
        except Exception as e:  # supervisor boundary: one broken action never breaks the daemon
            log.exception("action %s failed", plan.action)
            outcome = Outcome(False, f"{type(e).__name__}: {e}")
        finally:
            renewal.cancel()
        crash_point("action.applied")
        return await self._record_end(action_id, plan, incident, outcome)

    async def _record_end(self, action_id: int, plan: Plan, incident: Incident | None, outcome: Outcome) -> Outcome:
        """The action's end in one transaction: its state and its one terminal event, the halt's
        execution, a retry or a verification to come, and the report to the owner (sent after the
        commit). Should the row no longer be running (a reconciler took it for interrupted, as its
        lease had expired), its end is not recorded twice: the outcome goes to the log."""
        state = _state(outcome)
        async with self.rt.store.transaction():
            if not await self._set_state(action_id, state, outcome):
                log.warning("action #%d (%s) ended %s after it was recorded as ended: %s", action_id, plan.action,
                            state, outcome.message)
                return outcome
            await self._event(f"action.{state}", action_id, plan, incident, outcome.message, outcome.details)
            row = await self._row(action_id)
            if row["halt_id"] is not None:
                await self.rt.store.execute("UPDATE halts SET execution = 'done' WHERE id = ? AND execution = 'claimed'",
                                            (row["halt_id"],))
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

    async def _renew(self, action_id: int) -> None:
        """Keep this process's lease on a running action fresh (every quarter lease) until cancelled."""
        while True:
            await asyncio.sleep(LEASE / 4)
            try:
                await self.rt.store.execute(
                    "UPDATE actions SET lease_until = ? WHERE id = ? AND state = 'running' AND owner = ?",
                    (iso(self.clock.now() + timedelta(seconds=LEASE)), action_id, self.me))
            except sqlite3.Error as e:  # tried again at the next quarter
                log.warning("could not renew the lease of action #%d: %s", action_id, e)

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

    async def _set_state(self, action_id: int, state: str, outcome: Outcome) -> bool:
        """End a running action; False when it had ended already (one end per action)."""
        changed = await self.rt.store.execute(
            "UPDATE actions SET state=?, finished_at=?, outcome=? WHERE id=? AND state='running'",
            (state, iso(self.clock.now()), json.dumps({"ok": outcome.ok, "changed": outcome.changed,
                                                       "message": outcome.message, "details": outcome.details},
                                                      default=str), action_id))
        return changed == 1

    async def _event(self, type_: str, action_id: int, plan: Plan, incident: Incident | None, message: str,
                     details: dict[str, Any] | None = None) -> None:
        await self.rt.events.emit(type_, ActionData(action_id=action_id, action=plan.action, summary=plan.summary,
                                                    message=message, details=details or {}),
                                  source="kernel", incident_id=incident.id if incident else None)

    async def _interrupted(self, action_id: int, plan: Plan, incident: Incident | None, message: str,
                           outcome: Outcome, decider: str | None = None) -> bool:
        """Record an action that will not finish, in one transaction: `interrupted` and its event, the
        halt's execution done (an approved plan is never re-run without a new verdict), and its open
        incident due for a fresh decision (by `decider`; None: whoever reconciles next)."""
        async with self.rt.store.transaction():
            if not await self._set_state(action_id, "interrupted", outcome):
                return False
            await self._event("action.interrupted", action_id, plan, incident, message)
            await self.rt.store.execute(
                "UPDATE halts SET execution = 'done' WHERE action_id = ? AND execution = 'claimed'", (action_id,))
            if incident is not None:
                await self.make_due(incident.id, "interrupted", decider)
        return True

    async def reclaim_actions(self, *, at_start: bool) -> tuple[list[int], list[str]]:
        """Mark interrupted the actions left `running` by an owner that is gone or stopped renewing
        its lease (never one a live process still runs: the CLI's or the MCP worker's apply while the
        daemon restarts); their open incidents become due for a fresh decision by this process.
        Returns (the actions interrupted, what was left to live owners); `take_due` then decides."""
        now = self.clock.now()
        rows = await self.rt.store.fetchall("SELECT * FROM actions WHERE state = 'running' ORDER BY id")
        interrupted, left = [], []
        for row in rows:
            if row["owner"] == self.me or not stale(row["owner"], row["lease_until"], now):
                if row["owner"] != self.me:
                    left.append(f"action #{row['id']} ({row['action']}) run by pid {owner_pid(row['owner'])}")
                continue
            plan = Plan.from_json(json.loads(row["plan"]))
            incident = await self.incidents.get(row["incident_id"]) if row["incident_id"] else None
            pid = owner_pid(row["owner"])
            who = ("the agent stopped during apply" if not row["owner"] else
                   f"the process that ran it (pid {pid}) is gone" if gone(row["owner"]) else
                   f"the process that ran it (pid {pid}) stopped renewing its lease")
            message = f"found running after a restart: {who}" if at_start else f"found running, but {who}"
            if await self._interrupted(row["id"], plan, incident if incident and incident.status == "open" else None,
                                       message, Outcome(False, f"interrupted: {who}")):
                interrupted.append(row["id"])
        return interrupted, left

    async def make_due(self, incident_id: int, trigger: str, decider: str | None) -> None:
        """Note that `incident_id` needs a decision (`trigger`), being made by `decider` — so that, if
        that process dies first, the reconciler makes it. The decision itself clears it (`settled`)."""
        until = iso(self.clock.now() + timedelta(seconds=DECIDE_LEASE)) if decider else None
        await self.rt.store.execute(
            "UPDATE incidents SET due_trigger = ?, decider = ?, decider_until = ? WHERE id = ? AND status = 'open'",
            (trigger, decider, until, incident_id))

    async def settled(self, incident_id: int) -> None:
        """A decision on `incident_id` was recorded: nothing is due any more (in its transaction)."""
        await self.rt.store.execute(
            "UPDATE incidents SET due_trigger = NULL, decider = NULL, decider_until = NULL WHERE id = ?"
            " AND due_trigger IS NOT NULL", (incident_id,))

    async def take_due(self) -> list[tuple[Incident, str]]:
        """The open incidents waiting for a decision whose decider is gone (or never was), each
        claimed for this process with a conditional UPDATE, with the trigger to decide them by."""
        now = self.clock.now()
        rows = await self.rt.store.fetchall(
            "SELECT id, due_trigger, decider, decider_until FROM incidents WHERE status = 'open'"
            " AND due_trigger IS NOT NULL ORDER BY id")
        taken = []
        for row in rows:
            if row["decider"] == self.me or not stale(row["decider"], row["decider_until"], now):
                continue
            changed = await self.rt.store.execute(
                "UPDATE incidents SET decider = ?, decider_until = ? WHERE id = ? AND due_trigger = ?"
                " AND decider IS ?", (self.me, iso(now + timedelta(seconds=DECIDE_LEASE)), row["id"],
                                      row["due_trigger"], row["decider"]))
            incident = await self.incidents.get(row["id"]) if changed else None
            if incident is not None:
                taken.append((incident, row["due_trigger"]))
        return taken

    # -- incidents after actions ---------------------------------------------------------

    async def on_resolved(self, incident: Incident) -> None:
        """The incident resolved: the action being verified is verified, its pending halts are
        withdrawn and the owner who was told hears it is over — in one transaction."""
        async with self.rt.store.transaction():
            if incident.verify_action_id is not None:
                row = await self._row(incident.verify_action_id)
                plan = Plan.from_json(json.loads(row["plan"]))
                await self._event("action.verified", incident.verify_action_id, plan, incident,
                                  "the incident resolved after the action")
            for halt in await self.halts.list(status="pending"):
                if halt.incident_id == incident.id:
                    try:
                        await self.halts.cancel(halt.id, "the incident resolved by itself", then=self.closed)
                    except HaltError:
                        pass  # answered or expired meanwhile: that answer stands
            if incident.last_verdict in ("notify", "ask", "deny"):
                await self.notifications.notify(f"[{self.host}] resolved: {messages.where(incident)}",
                                                f"{messages.where(incident)} is ok again: {incident.message}",
                                                severity="info", incident_id=incident.id)

    async def ineffective(self, incident: Incident) -> None:
        """An action ran but the incident is still open at its verification time: recorded, and the
        incident due for a fresh decision by this process, together."""
        async with self.rt.store.transaction():
            if incident.verify_action_id is not None:
                row = await self._row(incident.verify_action_id)
                plan = Plan.from_json(json.loads(row["plan"]))
                await self._event("action.ineffective", incident.verify_action_id, plan, incident,
                                  f"the incident is still {incident.severity} after the action")
            await self.incidents.set_verify(incident.id, None, None)
            await self.make_due(incident.id, "action_ineffective", self.me)

    # -- halts ---------------------------------------------------------------------------

    async def answer(self, halt_id: int, option: str, *, by: str, note: str | None = None,
                     channel: str | None = None) -> dict[str, Any]:
        """Record the owner's answer (exactly once) and, on approve, run the plan. An approval claims
        the execution for this process in the same write, so the plan runs here, once. Every channel
        is told who answered, in the same transaction (the Slack message loses its buttons).

        Raises:
            HaltError: no such halt, already answered, expired, or not one of its options.
        """
        snooze = snooze_seconds(option)
        again = self.clock.now() + timedelta(seconds=snooze) if snooze is not None else None

        async def then(halt: Halt) -> None:   # in the answer's transaction
            await self.closed(halt)
            if again is not None and halt.incident_id is not None:
                # "ask me later": the incident is decided anew then (a new halt, if still needed)
                await self.rt.store.execute("UPDATE incidents SET retry_at = ? WHERE id = ? AND status = 'open'",
                                            (iso(again), halt.incident_id))

        halt = await self.halts.answer(halt_id, option, by=by, note=note, claim=option == "approve",
                                       channel=channel or by.partition(":")[0], then=then)
        result: dict[str, Any] = {"halt": halt.to_json(), "executed": False}
        if again is not None:
            result["ask_again_at"] = iso(again)
        if option == "approve":
            result.update(await self.run_halt(halt, requested_by=by, claimed=True))
        return result

    async def run_halt(self, halt: Halt, *, requested_by: str, claimed: bool = False) -> dict[str, Any]:
        """Re-plan an approved halt; apply it unchanged, or ask again if the world moved. Claims the
        execution first unless the caller did (`claimed`); each end is recorded with its effect in one
        transaction (a new halt and `replanned`; the action's end and `done`)."""
        if not claimed and not await self.halts.claim_execution(halt.id):
            return {"executed": False, "message": "another process already ran this halt"}
        incident = await self.incidents.get(halt.incident_id) if halt.incident_id else None
        action = self.action(halt.plan.action)
        if action is None:
            await self.halts.finish_execution(halt.id, result="done")
            raise FaztAgentError(f"halt {halt.id}: unknown action {halt.plan.action!r}")
        ctx = self.context(halt.plan.action)
        renewal = asyncio.create_task(self._renew_claim(halt.id), name=f"claim of halt {halt.id}")
        try:
            fresh = await action.plan(action.validate(halt.plan.args, ctx), ctx)
        except (ValidationError, ActionError, OSError) as e:
            async with self.rt.store.transaction():
                await self.halts.finish_execution(halt.id, result="done")
                title, body = messages.action_report(halt.plan.summary, False, f"cannot re-plan: {e}", incident,
                                                     self.host)
                await self.notifications.notify(title, body, severity="warning", halt_id=halt.id)
            return {"executed": False, "message": f"cannot re-plan: {e}"}
        finally:
            renewal.cancel()
        change = action.material_change(halt.plan, fresh)
        if change is not None:
            rule = self.policy.rule(halt.rule or "")
            async with self.rt.store.transaction():
                new = await self.open_halt(fresh, f"the plan changed since you approved it: {change}", rule, incident)
                await self.halts.finish_execution(halt.id, result="replanned")
                await self.rt.events.emit("halt.replanned", HaltReplanned(halt_id=halt.id, new_halt_id=new.id,
                                                                          reason=change), source="halts")
            return {"executed": False, "replanned": True, "new_halt_id": new.id, "message": change}
        action_id = await self._start(halt.plan, self.policy.rule(halt.rule or ""), incident, halt.id, requested_by)
        outcome = await self._finish(action_id, halt.plan, incident)
        state = _state(outcome)
        return {"executed": True, "action_id": action_id, "ok": state == "succeeded", "state": state,
                "changed": outcome.changed, "message": outcome.message, "details": outcome.details}

    async def closed(self, halt: Halt) -> None:
        """Tell every channel a halt is over (answered, expired to its default, or withdrawn): in the
        transaction that closed it, so no channel keeps asking."""
        title, body = messages.halt_closed(halt, self.host)
        kind = {"answered": "answered", "expired": "expired"}.get(halt.status, "cancelled")
        # an approval's news on the main channel is the action's own report ("done: ..."), which follows
        await self.notifications.notify(title, body, severity="warning" if kind == "expired" else "info",
                                        halt_id=halt.id, incident_id=halt.incident_id, kind=kind,
                                        main=not (kind == "answered" and halt.answer == "approve"))

    async def _renew_claim(self, halt_id: int) -> None:
        """Keep this process's claim on a halt fresh while it re-plans (a large cleanup plans for a while)."""
        while True:
            await asyncio.sleep(LEASE / 4)
            try:
                await self.halts.renew(halt_id)
            except sqlite3.Error as e:
                log.warning("could not renew the claim of halt #%d: %s", halt_id, e)

    async def sweep_halts(self) -> None:
        """Remind and expire halts, each with its notice in the same transaction; an expired halt
        whose default acts runs it."""
        now = self.clock.now()

        async def remind(halt: Halt) -> None:
            title, body = messages.halt_reminder(halt, self.personality, self.host)
            await self.notifications.notify(title, body, severity="warning", halt_id=halt.id, kind="reminder")

        await self.halts.remind_due(now, then=remind)
        for halt in await self.halts.expire_due(now, then=self.closed):
            if halt.default_option == "approve":
                await self.run_halt(halt, requested_by="timeout")

    async def resume_halts(self, spawn: Spawn | None) -> tuple[list[int], list[int], list[str]]:
        """Approved halts nobody is carrying out: never claimed (an expiry whose run was cut off), or
        claimed by a process that is gone. One whose action exists is finished (its action's end is
        its end: an approved plan never runs twice); one whose incident is over is closed; the others
        are taken over and run here — re-planned, and asked again if the plan changed — exactly once.
        Returns (halts run, halts closed, what was left to live processes)."""
        now = self.clock.now()
        run, closed, left = [], [], []
        for halt in await self.halts.unfinished():
            if halt.execution == "claimed" and (
                    halt.owner == self.me or not stale(halt.owner, iso(halt.lease_until) if halt.lease_until else None,
                                                       now)):
                if halt.owner != self.me and halt.action_id is None:
                    left.append(f"approved halt #{halt.id} being carried out by pid {owner_pid(halt.owner)}")
                continue
            if halt.action_id is not None:
                state = await self.rt.store.scalar("SELECT state FROM actions WHERE id = ?", (halt.action_id,))
                if state != "running" and await self.rt.store.execute(
                        "UPDATE halts SET execution = 'done' WHERE id = ? AND execution = 'claimed'", (halt.id,)):
                    closed.append(halt.id)
                continue  # a running action is its owner's, or reclaim_actions' once that owner is gone
            if not await self.halts.take_over(halt):
                continue
            who = halt.answered_by or "timeout"
            incident = await self.incidents.get(halt.incident_id) if halt.incident_id else None
            if incident is not None and incident.status != "open":
                async with self.rt.store.transaction():
                    await self.halts.finish_execution(halt.id, result="done")
                    await self.rt.events.emit("halt.resumed", HaltResumed(
                        halt_id=halt.id, answered_by=who, outcome="closed",
                        reason="approved, but its execution never started and the incident is resolved now"),
                        source="halts", incident_id=halt.incident_id)
                closed.append(halt.id)
                continue
            await self.rt.events.emit("halt.resumed", HaltResumed(
                halt_id=halt.id, answered_by=who, outcome="run",
                reason="approved, but its execution never started"
                       + (f" (the process that answered, pid {owner_pid(halt.owner)}, is gone)" if halt.owner else "")),
                source="halts", incident_id=halt.incident_id)
            run.append(halt.id)
            work = self._resume(halt, who)
            if spawn is not None:
                spawn("action", work)
            else:
                await work
        return run, closed, left

    async def _resume(self, halt: Halt, requested_by: str) -> None:
        try:
            await self.run_halt(halt, requested_by=requested_by, claimed=True)
        except FaztAgentError as e:
            log.warning("approved halt #%d could not run: %s", halt.id, e)
        except Exception:  # supervisor boundary: the reconciler goes on
            log.exception("approved halt #%d failed", halt.id)

    async def ask_unasked(self) -> list[int]:
        """Pending halts whose owner was never asked (no notification: written by an older version,
        or by a process killed in between): ask now. Returns their ids."""
        asked = []
        for halt in await self.halts.unasked():
            async with self.rt.store.transaction():
                if await self.rt.store.scalar("SELECT 1 FROM notifications WHERE halt_id = ?", (halt.id,)):
                    continue
                await self.notifications.notify(halt.title, halt.body, severity="warning", halt_id=halt.id,
                                                incident_id=halt.incident_id)
            asked.append(halt.id)
        return asked


def _state(outcome: Outcome) -> str:
    """The final state of an action row: an apply that changed nothing is `ineffective`, never done."""
    if not outcome.ok:
        return "failed"
    return "succeeded" if outcome.changed else "ineffective"
