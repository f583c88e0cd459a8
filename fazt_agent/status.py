"""The one-screen summary behind `fazt-agent status` (and later the MCP status tool)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ._lock import DataDirLock
from .pulse.base import worst
from .runtime import Runtime


async def gather_status(rt: Runtime) -> dict[str, Any]:
    """Health (worst latest result), last beat, autonomy and where it comes from, whether the agent is
    paused, daemon pid, current problems."""
    now = rt.clock.now()
    horizon = now - timedelta(seconds=max(3 * rt.config.file.pulse.interval, 3600))
    latest = await rt.beats.latest(since=horizon)
    configured = {c.name for c in rt.pulse.checks}
    results = [r for _, r in latest if r.check in configured]
    last = await rt.beats.last_beat()
    pid = DataDirLock(rt.config.data_dir).holder()
    autonomy = await rt.autonomy_state()
    notes = []
    if not results:
        notes.append("no recent beat: start the daemon (fazt-agent run) or run `fazt-agent beat`")
    if autonomy.problem:
        notes.append(f"the config file's [agent] autonomy cannot be read, its last good value ({autonomy.config}) "
                     f"counts: {autonomy.problem}")
    notes += [str(w) for w in rt.config.warnings]
    return {
        "health": worst([r.status for r in results]) if results else "unknown",
        "autonomy": autonomy.level,
        "autonomy_detail": autonomy.to_json(),   # where the level comes from, what the config file says
        **await rt.pause_state(),                # paused, paused_by, paused_at
        "personality": rt.config.agent.personality,
        "daemon": {"running": pid is not None, "pid": pid},
        "last_beat": ({"id": last["id"], "ts": last["ts"], "status": last["status"],
                       "duration_ms": round(last["duration_ms"], 1)} if last else None),
        "checks": len(rt.pulse.checks),
        "problems": [r.to_json() for r in results if r.status != "ok"],
        "config": str(rt.config.source) if rt.config.source else None,
        "data_dir": str(rt.config.data_dir),
        "llm": await _llm(rt),
        "notes": notes,
    }


async def _llm(rt: Runtime) -> dict[str, Any]:
    """Whether decisions use the LLM, and its spending against the budget."""
    section = rt.config.file.llm
    if not rt.config.llm_ready:
        return {"configured": False, "model": section.model,
                "note": f"{rt.config.llm_note}: decisions use the rules planner"}
    from .decide.budget import Budget

    spent = await Budget(rt.store, rt.clock, section).spent()
    return {"configured": True, "model": section.model, "spent": spent, "budget": section.budget.model_dump(),
            "price_known": section.price is not None,   # else the USD budget is not applied
            "note": f"decisions by {section.model} under the policy gate (rules planner as fallback)"}
