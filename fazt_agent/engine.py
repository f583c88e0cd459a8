"""The autonomy loop: beat -> incidents -> planner -> policy gate -> act | ask | notify | deny.

Every proposal, whoever made it (a rule, the LLM, the owner on the CLI), passes `Engine.gate`:
arguments are validated against the action's schema and the policy's constraints, the action
plans, and the pure `policy.judge` decides. Every step is an event.

Decisions happen on incident transitions only (opened, worsened, an action that did not help,
a held-back action whose wait is over, a restart after a crash), never on every beat.

Nothing a crash cuts off is lost: a transition that calls for a decision commits with a note that
a decision is due (and by which process); a decision commits with everything it starts (the
halt, its event and its notification; the action row); and `reconcile` — at start and in every
housekeeping round — completes what a dead process left: due decisions, running actions,
approved halts, unasked owners, notifications cut off mid-send.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Coroutine

from pydantic import ValidationError

from ._faults import crash_point
from ._toml import toml_files
from .clock import iso
from .decide.rules import Proposal, rules_planner
from .decision import Decision, Evaluation
from .errors import ActionError
from .event_types import (AgentReconciled, DecisionFailed, DecisionMade, DecisionRejected, PolicyRejected,
                          PolicyReloaded)
from .executor import Executor
from .incidents import Incident, transitions
from .kernel import ACTIONS
from .kernel.settings import load_kernel
from .policy.evaluate import Judgement, judge
from .policy.model import Policy, Rule, load_policy
from .pulse import CHECKS
from .pulse.runner import BeatResult
from .runtime import PAUSED_KEY, Runtime

if TYPE_CHECKING:
    from .decide.llm import LlmDecider

log = logging.getLogger(__name__)
Spawn = Callable[[str, Coroutine[Any, Any, None]], None]
DUE = {"opened": "opened", "flapping": "flapping", "worsened": "worsened"}   # transitions that call for a decision


class Engine:
    def __init__(self, rt: Runtime, *, spawn: Spawn | None = None):
        self.rt = rt
        self.clock = rt.clock
        self.executor = Executor(rt)
        self.incidents = self.executor.incidents
        self.host = self.executor.host
        self.spawn = spawn
        self._loaded = self._fingerprint()
        self.llm: LlmDecider | None = None   # made at the first decision when [llm] is configured
        self._loop = asyncio.Lock()   # a beat's decisions and the reconciler's never interleave

    @property
    def policy(self) -> Policy:
        return self.rt.definitions.policy

    # -- the loop ------------------------------------------------------------------------

    async def on_beat(self, beat: BeatResult) -> None:
        """Record incident transitions and decide on the ones that need a decision."""
        async with self._loop:
            await self._on_beat(beat)

    async def _on_beat(self, beat: BeatResult) -> None:
        now = self.clock.now()
        open_incidents = await self.incidents.open_incidents()
        flaps = await self.incidents.flaps(open_incidents, beat.results,
                                           {c.name: c.config for c in self.rt.pulse.checks}, beat.id)
        async with self.rt.store.transaction():   # a transition and the decision it makes due commit together
            changes = await self.incidents.apply(transitions(open_incidents, beat.results, flaps))
            for t, incident in changes:
                if t.change in DUE:
                    await self.executor.make_due(incident.id, DUE[t.change], self.executor.me)
        if any(t.change == "opened" for t, _ in changes):
            crash_point("incident.opened")
        paused = await self.paused()
        for t, incident in changes:
            if t.change == "resolved":
                await self.executor.on_resolved(incident)
                continue
            if t.change == "flapping":  # reported once; no decision on each flip
                await self.notify_only(incident, "flapping", f"flapping: {t.flap.describe()}")
                continue
            trigger = self._trigger(t.change, incident, now, paused)
            if trigger == "action_ineffective":
                await self.executor.ineffective(incident)
            if trigger is not None:
                await self.decide(incident, trigger)

    def _trigger(self, change: str, incident: Incident, now: datetime, paused: bool) -> str | None:
        if change == "opened":
            return "opened"
        if change == "worsened":
            return "worsened"
        if incident.verify_by is not None and now >= incident.verify_by:
            return "action_ineffective"
        if incident.last_verdict == "paused" and not paused:
            return "resumed"
        if incident.retry_at is not None and now >= incident.retry_at:
            return "retry"
        return None

    async def decide(self, incident: Incident, trigger: str) -> Decision | None:
        """Decide on `incident`: by the LLM planner when it is configured (in the daemon as a task:
        None is returned at once), else by the rules planner, which also decides whenever the LLM
        cannot (failure, budget, a proposal the gate refuses)."""
        if self.rt.config.llm_ready and not await self.paused():
            if self.llm is None:
                from .decide.llm import LlmDecider  # only an agent that uses the LLM imports it

                self.llm = LlmDecider(self)
            return await self.llm.submit(incident, trigger)
        return await self.decide_by_rules(incident, trigger)

    async def decide_by_rules(self, incident: Incident, trigger: str) -> Decision:
        """Ask the rules planner for a proposal on `incident` and put it through the gate."""
        proposal = rules_planner(self.policy, incident)
        if proposal.error is not None or proposal.action is None:
            reason = proposal.reason
            if trigger == "action_ineffective":
                reason = f"the last action did not resolve it; {reason}"
            return await self.notify_only(incident, trigger, reason, rule=proposal.rule)
        return await self.gate(proposal, incident=incident, trigger=trigger)

    async def evaluate(self, proposal: Proposal, incident: Incident | None, autonomy: str) -> Evaluation:
        """Validate, plan and judge a proposal without side effects (also `policy simulate`)."""
        assert proposal.action is not None
        action = self.executor.action(proposal.action)
        if action is None:
            return Evaluation(rejected=f"unknown action {proposal.action!r}")
        ctx = self.executor.context(proposal.action)
        try:
            args = action.validate(proposal.args, ctx)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'args'}: {err['msg']}" for err in e.errors())
            return Evaluation(rejected=f"arguments refused: {problems}")
        except ActionError as e:
            return Evaluation(rejected=f"arguments refused: {e}")
        try:
            plan = await asyncio.wait_for(action.plan(args, ctx), timeout=min(action.timeout, 120))
        except (ActionError, OSError, asyncio.TimeoutError) as e:
            return Evaluation(failed=f"could not plan {proposal.action}: {e or 'timed out'}")
        history = await self.executor.history(proposal.rule, incident)
        j = judge(proposal.rule, plan, autonomy, history, self.clock.now(),  # type: ignore[arg-type]
                  self.policy.schedule, self.policy.defaults)
        return Evaluation(plan=plan, judgement=j)

    async def gate(self, proposal: Proposal, *, incident: Incident | None, trigger: str,
                   requested_by: str = "agent", evaluation: Evaluation | None = None) -> Decision:
        """Validate, plan and judge one proposal (unless `evaluation` did); then act, ask, notify or deny."""
        autonomy = await self.rt.autonomy()
        paused = await self.paused()
        ev = evaluation or await self.evaluate(proposal, incident, autonomy)
        if ev.rejected is not None:
            return await self._reject(proposal, incident, trigger, ev.rejected)
        if ev.failed is not None:
            await self.rt.events.emit("decision.failed", DecisionFailed(
                rule=proposal.rule.name if proposal.rule else None, action=proposal.action, reason=ev.failed),
                source=proposal.planner, incident_id=incident.id if incident else None)
            if incident is not None:
                return await self.notify_only(incident, trigger, ev.failed, rule=proposal.rule, record=False)
            return Decision("deny", ev.failed)
        assert ev.plan is not None and ev.judgement is not None
        plan, j = ev.plan, ev.judgement
        if trigger == "action_ineffective" and j.verdict != "act":
            j = replace(j, reason=f"the last action did not resolve it; {j.reason}")
        if proposal.planner == "llm" and proposal.reason:  # the owner reads why the model proposed it
            told = replace(j, reason=f"{j.reason}. Why it was proposed: {proposal.reason}")
        else:
            told = j
        async with self.rt.store.transaction():   # the decision and what it starts commit together
            await self.rt.store.after_commit(_committed)
            await self._record(trigger, proposal, incident, j, autonomy, plan.to_json(), paused)
            crash_point("decision.made")
            if incident is not None:
                await self.executor.settled(incident.id)
            if paused:
                if incident is not None:
                    await self.incidents.mark_decided(incident.id, "paused")
                return Decision(j.verdict, f"{told.reason} (agent paused: recorded only)", plan.to_json(),
                                paused=True)
            if incident is not None:  # before the action: a failed action sets the next retry_at afterwards
                await self.incidents.mark_decided(incident.id, j.verdict, retry_at=j.retry_at)
            d = await self.executor.record(told, plan, proposal.rule, incident, requested_by)
        return await self.executor.carry_out(d, plan, incident, self.spawn)

    async def notify_only(self, incident: Incident, trigger: str, reason: str, *, rule: Rule | None = None,
                          record: bool = True, proposal: Proposal | None = None) -> Decision:
        """No action to propose (or none possible): tell the owner, once per transition."""
        paused = await self.paused()
        autonomy = await self.rt.autonomy() if record else ""
        async with self.rt.store.transaction():   # the decision and the notice commit together
            await self.rt.store.after_commit(_committed)
            if record:
                j = Judgement("notify", reason)
                await self._record(trigger, proposal or Proposal(None, {}, rule, "rules", reason), incident, j,
                                   autonomy, None, paused)
                crash_point("decision.made")
            await self.executor.settled(incident.id)
            if paused:
                await self.incidents.mark_decided(incident.id, "paused")
                return Decision("notify", f"{reason} (agent paused: recorded only)", paused=True)
            await self.executor.tell(incident, reason)
            await self.incidents.mark_decided(incident.id, "notify")
        return Decision("notify", reason)

    async def _record(self, trigger: str, proposal: Proposal, incident: Incident | None, j: Judgement,
                      autonomy: str, plan: dict[str, Any] | None, paused: bool) -> None:
        await self.rt.events.emit("decision.made", DecisionMade(
            trigger=trigger, planner=proposal.planner, autonomy=autonomy, verdict=j.verdict, reason=j.reason,
            policy_version=self.policy.version, rule=proposal.rule.name if proposal.rule else None,
            action=proposal.action, args=proposal.args, plan=plan, paused=paused, model=proposal.model,
            usage=proposal.usage, rationale=proposal.reason or None), source="engine",
            incident_id=incident.id if incident else None)

    async def _reject(self, proposal: Proposal, incident: Incident | None, trigger: str, reason: str) -> Decision:
        await self.rt.events.emit("decision.rejected", DecisionRejected(
            planner=proposal.planner, action=proposal.action, args=proposal.args, reason=reason),
            source="engine", incident_id=incident.id if incident else None)
        if incident is not None and proposal.planner == "rules":
            return await self.notify_only(incident, trigger, reason, rule=proposal.rule)
        return Decision("deny", reason)

    # -- owner controls ------------------------------------------------------------------

    async def paused(self) -> bool:
        return await self.rt.store.get_setting(PAUSED_KEY) == "1"

    async def set_paused(self, paused: bool, *, by: str) -> bool:
        """Pause (observe and record only) or resume. Returns False when nothing changed."""
        if await self.paused() == paused:
            return False
        await self.rt.store.set_setting(PAUSED_KEY, "1" if paused else "0")
        await self.rt.events.emit("agent.paused" if paused else "agent.resumed", {"by": by}, source=by)
        return True

    async def set_autonomy(self, level: str, *, by: str) -> str:
        """Set the autonomy level at run time and record the change. Returns the old level.

        The level overrides the config file's until `[agent] autonomy` is edited there (recorded
        with who and when, shown by `status`); setting the file's own level clears the override.
        """
        from .runtime import Override

        state = await self.rt.autonomy_state()
        if state.level == level:
            return state.level
        if level == state.config:
            await self.rt.set_autonomy_override(None)
            note = "the config file's level again (the override is cleared)"
        else:
            override = Override(level, by, iso(self.clock.now()), state.config)  # type: ignore[arg-type]
            await self.rt.set_autonomy_override(override)
            note = f"overrides the config file's {state.config} until [agent] autonomy is edited there"
        await self._autonomy_changed(state.level, level, by, note)
        return state.level

    async def follow_config_autonomy(self, before: str, after: str) -> bool:
        """The config file's `[agent] autonomy` was edited from `before` to `after` (the daemon watches
        it): the file wins over an override set before the edit, which is cleared. Returns True when
        something changed (then recorded as `autonomy.changed` by `config`)."""
        override = await self.rt.autonomy_override()
        if override is not None and override.config == after:
            return False   # set after the edit: it already overrides the new level
        old = override.level if override is not None and override.config in (None, before) else before
        note = f"[agent] autonomy edited in the config file from {before} to {after}"
        if override is not None:
            await self.rt.set_autonomy_override(None)
            note += (f"; the override to {override.level} (set by {override.by or 'an owner command'}"
                     f"{' at ' + override.at if override.at else ''}) is cleared")
        elif old == after:
            return False
        await self._autonomy_changed(old, after, "config", note)
        return True

    async def _autonomy_changed(self, old: str, new: str, by: str, note: str) -> None:
        from .event_types import AutonomyChanged

        await self.rt.events.emit("autonomy.changed", AutonomyChanged(old=old, new=new, by=by, note=note), source=by)
        if old != new:  # open incidents get a fresh decision on the next beat, under the new level
            await self.rt.store.execute("UPDATE incidents SET retry_at = ? WHERE status = 'open'",
                                        (iso(self.clock.now()),))

    # -- housekeeping --------------------------------------------------------------------

    def _fingerprint(self) -> tuple[tuple[str, int, int], ...]:
        files = [p for name in ("policies", "kernel") for p in toml_files(self.rt.config.folders[name])]
        out = []
        for p in files:
            try:
                st = p.stat()
                out.append((str(p), st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((str(p), -1, -1))
        return tuple(out)

    async def reload_policy(self) -> bool:
        """Reload policies/ and kernel/ when they changed; a broken edit keeps the last good set.

        Returns True when a new policy is in force.
        """
        fingerprint = self._fingerprint()
        if fingerprint == self._loaded:
            return False
        self._loaded = fingerprint
        # in a thread: reading the files, validating them and asking git for the policy's version
        # (two subprocesses) would otherwise hold the daemon's loop, its beats and its listeners
        policy, issues = await asyncio.to_thread(load_policy, self.rt.config.folders["policies"], set(ACTIONS),
                                                 set(CHECKS))
        kernel, kernel_issues = await asyncio.to_thread(load_kernel, self.rt.config.folders["kernel"])
        issues += kernel_issues
        if issues:
            await self.rt.events.emit("policy.rejected", PolicyRejected(
                issues=[str(i) for i in issues], kept_version=self.policy.version), source="policy")
            await self.executor.notifications.notify(
                f"[{self.executor.host}] policy edit refused",
                "The edited policy has errors; the last good policy stays in force.\n"
                + "\n".join(str(i) for i in issues), severity="warning")
            return False
        self.rt.definitions = replace(self.rt.definitions, policy=policy, kernel=kernel)
        await self.rt.events.emit("policy.reloaded", PolicyReloaded(
            version=policy.version, files=list(policy.files), rules=len(policy.rules)), source="policy")
        return True

    async def sweep(self) -> None:
        """Expire and remind halts, retry notifications, complete what dead processes left (the
        daemon runs this every few seconds)."""
        await self.executor.sweep_halts()
        await self.executor.notifications.deliver_due(self.clock.now())
        await self.reconcile(at_start=False)

    async def reconcile(self, *, at_start: bool = True) -> AgentReconciled:
        """Complete what a crash (of the daemon, a CLI command, the MCP worker) cut off, never work a
        live process owns: actions left running by a dead owner are interrupted (their incidents
        become due); approved halts nobody carries out are run, exactly once; incidents due for a
        decision whose decider is gone are decided; pending halts whose owner was never asked are
        asked; notifications abandoned mid-send are sent. At start also: incidents of checks no
        longer configured are resolved. Recorded as `agent.reconciled` when it did something (at
        start also when it left running work to live processes)."""
        if at_start:
            await self.incidents.resolve_orphans({c.name for c in self.rt.pulse.checks})
        interrupted, left = await self.executor.reclaim_actions(at_start=at_start)
        halts_run, halts_closed, carried = await self.executor.resume_halts(self.spawn)
        left += carried
        decided = []
        async with self._loop:
            for incident, trigger in await self.executor.take_due():
                decided.append(incident.id)
                await self._decide_due(incident, trigger)
        asked = await self.executor.ask_unasked()
        resent = await self.executor.notifications.resend_abandoned(self.clock.now())
        report = AgentReconciled(at_start=at_start, decided=decided, interrupted=interrupted, halts_run=halts_run,
                                 halts_closed=halts_closed, asked=asked, resent=resent, left_to_owners=left)
        did = any((decided, interrupted, halts_run, halts_closed, asked, resent))
        if did or (at_start and left):
            log.info("completed what a stopped process left%s: %s", " (at start)" if at_start else "",
                     report.model_dump_json(exclude={"at_start"}, exclude_defaults=True))
        if did or (at_start and left):
            await self.rt.events.emit("agent.reconciled", report)
        return report

    async def _decide_due(self, incident: Incident, trigger: str) -> None:
        """Make the decision a dead process owed (`trigger`: the transition that called for it)."""
        try:
            if trigger == "flapping":
                await self.notify_only(incident, "flapping", "flapping: opened again and again; held open "
                                                             "without a notice for each change")
            else:
                await self.decide(incident, trigger)
        except Exception:  # supervisor boundary: the next round (or restart) tries again
            log.exception("the decision due on incident %s failed", incident.id)


async def _committed() -> None:
    """The first step after a decision's commit, before anything is sent or applied (a fault point)."""
    crash_point("decision.committed")
