"""The operate- and admin-scope MCP tools: plan, run, answer halts; autonomy, pause, resume.

`fazt_action_run` goes through `Engine.gate` like any proposal. When the policy asks, the gate
opens a halt; a client that declared form elicitation is then asked approve/deny right away —
mid-call on protocol revisions up to 2025-11-25, or with an `InputRequiredResult` that the client
answers and retries on 2026-07-28 and later — and the answer goes to `Executor.answer` as the
caller's answer to that halt, so it is recorded and carried out exactly once. Any other client
gets the halt's id to answer later.

What a call sets going — an approved plan, an action the gate lets act — is held (`Store.hold`):
it runs to its end and is recorded even when the client goes away or the server stops (the daemon
died and the worker's stdin closed), and the server closes its store only after it. Meanwhile the
action row names this process as its owner, so a restarting daemon leaves it alone.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from mcp.server.elicitation import AcceptedElicitation, render_elicitation_schema
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp_types import ElicitRequest, ElicitRequestFormParams, ElicitResult, InputRequiredResult
from mcp_types.version import is_version_at_least
from pydantic import Field, ValidationError

from ..decide.rules import Proposal
from ..halt.store import Halt
from ._registry import Caller, Deps, caller, deps_of, tool
from .models import (ActionPlan, ActionRunResult, Approval, Autonomy, AutonomyChange, AutonomyDetailOut,
                     HaltAnswerResult, PauseState, PlanOut)
from .tools import halt_out

ActionName = Annotated[str, Field(min_length=1, max_length=64, description="an action from fazt_actions_list")]
ActionArgs = Annotated[dict[str, Any], Field(description="the action's arguments (see its args_schema)")]
INPUT_REQUIRED = "2026-07-28"   # from this revision, elicitation rides an InputRequiredResult
APPROVAL_KEY = "approval"
PAST = {"approve": "approved", "deny": "denied", "decline": "declined", "cancel": "cancelled"}


@tool("fazt_halt_answer", scope="operate", title="Answer an approval request", read_only=False,
      destructive=True, idempotent=False)
async def fazt_halt_answer(
        ctx: Context,
        halt_id: Annotated[int, Field(description="the halt's id (from fazt_halts_list)")],
        option: Annotated[str, Field(description="one of the halt's options, e.g. 'approve' or 'deny'")],
        note: Annotated[str | None, Field(max_length=2000, description="why (kept in the audit trail)")] = None,
) -> HaltAnswerResult:
    """Answer a pending halt, exactly once. 'approve' re-plans and runs the plan now (if the plan
    changed materially a new halt asks again); 'deny' refuses it."""
    deps = deps_of(ctx)
    return await _answer(deps, halt_id, option, caller(deps), note)


@tool("fazt_action_plan", scope="operate", title="Plan an action (dry run)", read_only=True)
async def fazt_action_plan(ctx: Context, name: ActionName, args: ActionArgs | None = None) -> ActionPlan:
    """Plan an action and show the exact plan (steps, risk, reversibility) and the verdict the policy
    would give it now. Changes nothing."""
    deps = deps_of(ctx)
    level = await deps.rt.autonomy()
    ev = await deps.engine.evaluate(Proposal(name, args or {}, None, "manual"), None, level)
    if ev.rejected or ev.failed:
        raise ToolError(ev.rejected or ev.failed)
    assert ev.plan is not None and ev.judgement is not None
    return ActionPlan(plan=PlanOut(**ev.plan.to_json()), autonomy=level, verdict=ev.judgement.verdict,  # type: ignore[arg-type]
                      reason=ev.judgement.reason)


@tool("fazt_action_run", scope="operate", title="Run an action through the policy", read_only=False,
      destructive=True, idempotent=False)
async def fazt_action_run(ctx: Context, name: ActionName,
                          args: ActionArgs | None = None) -> ActionRunResult | InputRequiredResult:
    """Propose an action to the policy gate, like any rule's proposal: it runs (verdict act), asks for
    approval (ask: you are asked right away if your client supports elicitation, otherwise a halt is
    opened and its id returned), or does not run (notify, deny). Nothing destructive runs silently."""
    deps = deps_of(ctx)
    who = caller(deps)
    resumed = _resumed(ctx)
    if resumed is not None:
        return await _settle(deps, resumed, who, _answered(ctx))
    d = await deps.rt.store.hold(deps.engine.gate(
        Proposal(name, args or {}, None, "manual", f"requested over MCP by {who.name}"), incident=None,
        trigger="manual", requested_by=who.by))
    result = ActionRunResult(verdict=d.verdict, reason=d.reason, plan=PlanOut(**d.plan) if d.plan else None,
                             paused=d.paused, action_id=d.action_id, outcome=d.outcome, halt_id=d.halt_id,
                             approval="pending" if d.halt_id is not None else None)
    if d.halt_id is None or not _can_elicit(ctx):
        return result
    halt = await deps.engine.executor.halts.get(d.halt_id)
    assert halt is not None
    question = _question(halt, d.reason)
    if _input_required(ctx):
        form = ElicitRequestFormParams(message=question, requested_schema=render_elicitation_schema(Approval))
        return InputRequiredResult(input_requests={APPROVAL_KEY: ElicitRequest(params=form)},
                                   request_state=json.dumps({"halt_id": halt.id, "reason": d.reason}))
    try:
        outcome = await ctx.elicit(question, Approval)
    except (MCPError, ValueError):  # the client could not ask: the halt stays pending for later
        return result
    answer = outcome.data if isinstance(outcome, AcceptedElicitation) else outcome.action
    return await _settle(deps, {"halt_id": halt.id, "reason": d.reason}, who, answer)


@tool("fazt_autonomy_get", scope="read", title="Autonomy level", read_only=True)
async def fazt_autonomy_get(ctx: Context) -> Autonomy:
    """The autonomy level in force (low: notify only; medium: act on safe plans, ask before destructive
    ones; high: act on all but costly plans and deletions), where it comes from (the config file, or an
    override set at run time, by whom and when, until the config file's line is edited) and whether the
    agent is paused."""
    deps = deps_of(ctx)
    state = await deps.rt.autonomy_state()
    return Autonomy(autonomy=state.level, detail=AutonomyDetailOut(**state.to_json()),
                    paused=await deps.engine.paused())


@tool("fazt_autonomy_set", scope="admin", title="Set the autonomy level", read_only=False)
async def fazt_autonomy_set(
        ctx: Context,
        level: Annotated[Literal["low", "medium", "high"], Field(description="low, medium or high")],
) -> AutonomyChange:
    """Set the autonomy level (persisted and recorded); open incidents get a fresh decision on the next
    beat under the new level. It overrides the config file's [agent] autonomy until that line is
    edited; setting the file's own level clears the override."""
    deps = deps_of(ctx)
    old = await deps.engine.set_autonomy(level, by=caller(deps).by)
    state = await deps.rt.autonomy_state()
    return AutonomyChange(old=old, new=level, changed=old != level, detail=AutonomyDetailOut(**state.to_json()))


@tool("fazt_agent_pause", scope="admin", title="Pause the agent", read_only=False)
async def fazt_agent_pause(ctx: Context) -> PauseState:
    """Pause: the agent keeps observing and recording, but runs no action, opens no halt and sends no
    notification until resumed."""
    deps = deps_of(ctx)
    changed = await deps.engine.set_paused(True, by=caller(deps).by)
    return PauseState(paused=True, changed=changed)


@tool("fazt_agent_resume", scope="admin", title="Resume the agent", read_only=False)
async def fazt_agent_resume(ctx: Context) -> PauseState:
    """End a pause: incidents decided while paused get a fresh decision on the next beat."""
    deps = deps_of(ctx)
    changed = await deps.engine.set_paused(False, by=caller(deps).by)
    return PauseState(paused=False, changed=changed)


# -- approvals ------------------------------------------------------------------------------

async def _answer(deps: Deps, halt_id: int, option: str, who: Caller, note: str | None) -> HaltAnswerResult:
    r = await deps.rt.store.hold(deps.engine.executor.answer(halt_id, option, by=who.by, note=note))
    halt = await deps.engine.executor.halts.get(halt_id)
    assert halt is not None
    return HaltAnswerResult(halt=halt_out(halt.to_json(), deps.rt.clock.now()), executed=r["executed"],
                            ok=r.get("ok"), message=r.get("message"), action_id=r.get("action_id"),
                            replanned=r.get("replanned", False), new_halt_id=r.get("new_halt_id"))


async def _settle(deps: Deps, state: dict[str, Any], who: Caller, answer: Approval | str) -> ActionRunResult:
    """Answer the halt the way the person did: approve runs it; deny, decline or cancel denies it."""
    said = answer.decision if isinstance(answer, Approval) else answer
    option = "approve" if said == "approve" else "deny"
    note = (answer.note if isinstance(answer, Approval) else "") or f"{PAST[said]} in the MCP client"
    result = await _answer(deps, state["halt_id"], option, who, note)
    return ActionRunResult(verdict="ask", reason=state["reason"], plan=result.halt.plan, paused=False,
                           action_id=result.action_id, halt_id=state["halt_id"],
                           approval="approved" if option == "approve" else "denied", answer=result)


def _can_elicit(ctx: Context) -> bool:
    """The client declared form elicitation (a bare `elicitation: {}` means form)."""
    caps = ctx.client_capabilities
    el = caps.elicitation if caps is not None else None
    if el is None or (el.form is None and el.url is not None):
        return False
    return _input_required(ctx) or ctx.session.can_send_request


def _input_required(ctx: Context) -> bool:
    pv = ctx.protocol_version
    return pv is not None and is_version_at_least(pv, INPUT_REQUIRED)


def _resumed(ctx: Context) -> dict[str, Any] | None:
    """On the retry of an InputRequiredResult: the halt we asked about (state sealed by the SDK)."""
    if not _input_required(ctx) or not ctx.request_state:
        return None
    state = json.loads(ctx.request_state)
    return state if isinstance(state, dict) and isinstance(state.get("halt_id"), int) else None


def _answered(ctx: Context) -> Approval | str:
    """The person's answer on the retry: an Approval, or 'decline'/'cancel'."""
    response = (ctx.input_responses or {}).get(APPROVAL_KEY)
    if not isinstance(response, ElicitResult):
        raise ToolError("the approval answer is missing from the retried call; answer the halt with fazt_halt_answer")
    if response.action != "accept":
        return response.action
    try:
        return Approval.model_validate(response.content or {})
    except ValidationError:
        raise ToolError("the approval form came back without a valid decision (approve or deny)") from None


def _question(halt: Halt, reason: str) -> str:
    plan = halt.plan
    traits = [f"risk {plan.risk}", "reversible" if plan.reversible else "not reversible"]
    if plan.deletes:
        traits.append("deletes data for good")
    steps = "\n".join(f"  - {s}" for s in plan.steps[:10])
    more = f"\n  ... and {len(plan.steps) - 10} more" if len(plan.steps) > 10 else ""
    return (f"Run this now? {plan.summary} ({', '.join(traits)}).\n{steps}{more}\n"
            f"The policy asks first: {reason}.\nApprove runs it now; deny refuses it (halt #{halt.id}).")
