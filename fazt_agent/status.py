"""The one-screen summary behind `fazt-agent status` (and later the MCP status tool)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ._lock import DataDirLock
from .pulse.base import worst
from .runtime import Runtime


async def gather_status(rt: Runtime) -> dict[str, Any]:
    """Health (worst latest result), last beat, autonomy, daemon pid, current problems."""
    now = rt.clock.now()
    horizon = now - timedelta(seconds=max(3 * rt.config.file.pulse.interval, 3600))
    latest = await rt.beats.latest(since=horizon)
    configured = {c.name for c in rt.pulse.checks}
    results = [r for _, r in latest if r.check in configured]
    last = await rt.beats.last_beat()
    pid = DataDirLock(rt.config.data_dir).holder()
    notes = []
    if not results:
        notes.append("no recent beat: start the daemon (fazt-agent run) or run `fazt-agent beat`")
    return {
        "health": worst([r.status for r in results]) if results else "unknown",
        "autonomy": await rt.autonomy(),
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
            "note": f"decisions by {section.model} under the policy gate (rules planner as fallback)"}
