"""The read-scope MCP tools: status, pulse, incidents, events, decisions, halts, policy, actions.

Each tool is a thin coroutine over a helper that the resources share (`fazt://pulse/status`
reads exactly what `fazt_pulse_status` returns). None of them changes anything.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from mcp.server.mcpserver import Context
from pydantic import Field

from ..clock import iso, parse_iso
from ..events import Event
from ..kernel import ACTIONS
from ..policy.explain import explain
from ..status import gather_status
from ..units import INT64_MAX, MAX_DURATION
from ._registry import Deps, deps_of, tool
from .models import (Actions, ActionOut, BeatOut, CheckResultOut, EventOut, Events, HaltOut, Halts, IncidentOut,
                     Incidents, PolicyExplanation, PulseHistory, PulseStatus, RuleOut, SystemStatus)

Limit = Annotated[int, Field(ge=1, le=500, description="at most this many items")]
# ids are SQLite integers: 1 to 2**63-1; beyond, the driver raises OverflowError inside the tool
IdBounds = Field(ge=1, le=INT64_MAX)
MAX_HOURS = MAX_DURATION / 3600   # ten years
DECISIONS = "decision.[mr]*"  # decision.made and decision.rejected


# -- helpers shared with the resources ------------------------------------------------------

async def system_status(deps: Deps) -> SystemStatus:
    rt = deps.rt
    status = await gather_status(rt)
    pending = await rt.store.scalar("SELECT COUNT(*) FROM halts WHERE status = 'pending'")
    incidents = await rt.store.scalar("SELECT COUNT(*) FROM incidents WHERE status = 'open'")
    return SystemStatus(**status, pending_halts=pending, open_incidents=incidents)


async def pulse_status(deps: Deps) -> PulseStatus:
    rt = deps.rt
    configured = {c.name for c in rt.pulse.checks}
    return PulseStatus(results=[CheckResultOut(**r.to_json(), measured_at=iso(ts))
                                for ts, r in await rt.beats.latest(peek=True) if r.check in configured])


async def pulse_history(deps: Deps, hours: float, limit: int) -> PulseHistory:
    beats = await deps.rt.beats.history(deps.rt.clock.now() - timedelta(hours=hours))
    kept = beats[-limit:]
    return PulseHistory(hours=hours, beats=[BeatOut(**b) for b in kept], truncated=len(kept) < len(beats))


async def incidents(deps: Deps, include_resolved: bool, limit: int) -> Incidents:
    items = await deps.engine.incidents.list(status=None if include_resolved else "open", limit=limit)
    return Incidents(incidents=[IncidentOut(**i.to_json()) for i in items])


async def events(deps: Deps, *, type_glob: str | None = None, since_hours: float | None = None,
                 incident_id: int | None = None, after_id: int | None = None, limit: int = 50) -> Events:
    since = deps.rt.clock.now() - timedelta(hours=since_hours) if since_hours is not None else None
    found = await deps.rt.events.list(type_glob=type_glob, since=since, incident_id=incident_id,
                                      after_id=after_id, limit=limit)
    return Events(events=[event_out(e) for e in found])


async def halts(deps: Deps, include_closed: bool, limit: int) -> Halts:
    found = await deps.engine.executor.halts.list(status=None if include_closed else "pending", limit=limit)
    now = deps.rt.clock.now()
    return Halts(halts=[halt_out(h.to_json(), now) for h in found])


def policy_explanation(deps: Deps) -> PolicyExplanation:
    policy = deps.rt.definitions.policy
    return PolicyExplanation(version=policy.version, files=list(policy.files),
                             rules=[RuleOut(**row) for row in explain(policy)])


def event_out(e: Event) -> EventOut:
    data = e.to_json()
    del data["hash"]
    return EventOut(**data)


def halt_out(data: dict[str, Any], now: datetime) -> HaltOut:
    keep = {k: v for k, v in data.items() if k in HaltOut.model_fields}
    overdue = data["status"] == "pending" and parse_iso(data["expires_at"]) <= now
    return HaltOut(**keep, summary=data["plan"]["summary"], overdue=overdue)


# -- tools ----------------------------------------------------------------------------------

@tool("fazt_system_status", scope="read", title="System status", read_only=True)
async def fazt_system_status(ctx: Context) -> SystemStatus:
    """The server at a glance: overall health (worst latest check), autonomy level and where it comes
    from (the config file or a run-time override), whether the agent is paused (by whom, since when) and
    the daemon runs, the last beat, current problems, open incidents and pending halts. Start here."""
    return await system_status(deps_of(ctx))


@tool("fazt_pulse_status", scope="read", title="Latest check results", read_only=True)
async def fazt_pulse_status(ctx: Context) -> PulseStatus:
    """The newest result of every configured health check and target (status, message, metrics)."""
    return await pulse_status(deps_of(ctx))


@tool("fazt_pulse_history", scope="read", title="Beat history", read_only=True)
async def fazt_pulse_history(
        ctx: Context,
        hours: Annotated[float, Field(gt=0, le=24 * 90, allow_inf_nan=False,
                                      description="how far back, in hours")] = 24,
        limit: Annotated[int, Field(ge=1, le=2000, description="at most this many (newest) beats")] = 200,
) -> PulseHistory:
    """Beats (collection rounds) of the last `hours`, oldest first, each with what was not ok in it."""
    return await pulse_history(deps_of(ctx), hours, limit)


@tool("fazt_pulse_ask", scope="read", title="Ask about the server's health", read_only=True, open_world=True)
async def fazt_pulse_ask(
        ctx: Context,
        question: Annotated[str, Field(min_length=1, max_length=2000, description="a question in plain words")],
) -> dict[str, Any]:
    """Ask the agent's LLM a question about the server's health, answered from its beats, trends and
    events (needs the [llm] configuration)."""
    from ._ask import ask

    return await ask(deps_of(ctx).rt, question)


@tool("fazt_incidents_list", scope="read", title="Incidents", read_only=True)
async def fazt_incidents_list(
        ctx: Context,
        include_resolved: Annotated[bool, Field(description="also list resolved incidents")] = False,
        limit: Limit = 50,
) -> Incidents:
    """Problems the agent has seen (a check out of ok, per check and target), newest first: open only,
    unless `include_resolved`. `last_verdict` says what was decided about each."""
    return await incidents(deps_of(ctx), include_resolved, limit)


@tool("fazt_events_list", scope="read", title="Audit trail", read_only=True)
async def fazt_events_list(
        ctx: Context,
        type: Annotated[str | None, Field(description="a type glob such as 'halt.*' or 'action.failed'")] = None,
        since_hours: Annotated[float | None, Field(gt=0, le=MAX_HOURS, allow_inf_nan=False,
                                                   description="only the last N hours")] = None,
        incident_id: Annotated[int | None, IdBounds, Field(description="only events of this incident")] = None,
        after_id: Annotated[int | None, Field(ge=0, le=INT64_MAX, description="only events after this id")] = None,
        limit: Limit = 50,
) -> Events:
    """Events of the append-only audit trail, newest first: beats, incidents, decisions, actions,
    halts, notifications, MCP calls."""
    return await events(deps_of(ctx), type_glob=type, since_hours=since_hours, incident_id=incident_id,
                        after_id=after_id, limit=limit)


@tool("fazt_decisions_list", scope="read", title="Decisions", read_only=True)
async def fazt_decisions_list(
        ctx: Context,
        incident_id: Annotated[int | None, IdBounds, Field(description="only decisions about this incident")] = None,
        limit: Limit = 50,
) -> Events:
    """Decisions, newest first: `decision.made` (trigger, planner, autonomy, verdict, reason, plan,
    policy version) and `decision.rejected` (a proposal refused before planning, and why)."""
    return await events(deps_of(ctx), type_glob=DECISIONS, incident_id=incident_id, limit=limit)


@tool("fazt_halts_list", scope="read", title="Approval requests", read_only=True)
async def fazt_halts_list(
        ctx: Context,
        include_closed: Annotated[bool, Field(description="also list answered, expired and cancelled halts")] = False,
        limit: Limit = 50,
) -> Halts:
    """Halts (approval requests) waiting for the owner, newest first, each with its exact plan and
    options. Answer one with fazt_halt_answer."""
    return await halts(deps_of(ctx), include_closed, limit)


@tool("fazt_policy_explain", scope="read", title="Explain the policy", read_only=True)
async def fazt_policy_explain(ctx: Context) -> PolicyExplanation:
    """The policy in force: each rule, what it matches, the action it proposes, and its verdict (act,
    ask, notify, deny) at each autonomy level for a safe, a destructive and a costly plan."""
    return policy_explanation(deps_of(ctx))


@tool("fazt_actions_list", scope="read", title="Kernel actions", read_only=True)
async def fazt_actions_list(ctx: Context) -> Actions:
    """The actions the agent can take, with the JSON schema of their arguments (for fazt_action_plan
    and fazt_action_run)."""
    return Actions(actions=[ActionOut(name=name, description=cls.description, timeout_s=cls.timeout,
                                      args_schema=cls.Args.model_json_schema())
                            for name, cls in sorted(ACTIONS.items())])
