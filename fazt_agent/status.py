"""The one-screen summary behind `fazt-agent status` (and later the MCP status tool).

Two ways gather its parts, and `assemble` makes the summary from them for both: `gather_status`
from an open Runtime, and the CLI's light read path (`cli/_light.py`) from the store with plain
sqlite3 and what the validated load found (`_snapshot`). This module imports neither pydantic
nor asyncio, so the light path can use it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ._lock import DataDirLock

if TYPE_CHECKING:
    from ._autonomy import AutonomyState
    from .config import Config
    from .runtime import Runtime

# pulse.base.SEVERITY (tests/test_import_budget.py checks they are equal): ok < unknown < warning < critical
SEVERITY: dict[str, int] = {"ok": 0, "unknown": 1, "warning": 2, "critical": 3}


def horizon(now: datetime, interval: float) -> datetime:
    """Results older than this are not the current state: three beats, at least an hour."""
    return now - timedelta(seconds=max(3 * interval, 3600))


async def gather_status(rt: Runtime) -> dict[str, Any]:
    """Health (worst latest result), last beat, autonomy and where it comes from, whether the agent is
    paused, daemon pid, current problems."""
    latest = await rt.beats.latest(since=horizon(rt.clock.now(), rt.config.file.pulse.interval))
    configured = {c.name for c in rt.pulse.checks}
    results = [r.to_json() for _, r in latest if r.check in configured]
    return assemble(results=results, last=await rt.beats.last_beat(), autonomy=await rt.autonomy_state(),
                    pause=await rt.pause_state(), checks=len(rt.pulse.checks), config=rt.config,
                    llm=await _llm(rt), warnings=[str(w) for w in rt.config.warnings])


def assemble(*, results: list[dict[str, Any]], last: dict[str, Any] | None, autonomy: AutonomyState,
             pause: dict[str, Any], checks: int, config: Any, llm: dict[str, Any],
             warnings: list[str]) -> dict[str, Any]:
    """The summary from its parts: the latest results of the configured checks (as
    `CheckResult.to_json`), the last beat's row, and `config` with `agent.personality`, `source`
    and `data_dir` (a Config, or the light path's stand-in)."""
    pid = DataDirLock(config.data_dir).holder()
    notes = []
    if not results:
        notes.append("no recent beat: start the daemon (fazt-agent run) or run `fazt-agent beat`")
    if autonomy.problem:
        notes.append(f"the config file's [agent] autonomy cannot be read, its last good value ({autonomy.config}) "
                     f"counts: {autonomy.problem}")
    notes += warnings
    return {
        "health": max((r["status"] for r in results), key=SEVERITY.__getitem__) if results else "unknown",
        "autonomy": autonomy.level,
        "autonomy_detail": autonomy.to_json(),   # where the level comes from, what the config file says
        **pause,                                 # paused, paused_by, paused_at
        "personality": config.agent.personality,
        "daemon": {"running": pid is not None, "pid": pid},
        "last_beat": ({"id": last["id"], "ts": last["ts"], "status": last["status"],
                       "duration_ms": round(last["duration_ms"], 1)} if last else None),
        "checks": checks,
        "problems": [r for r in results if r["status"] != "ok"],
        "config": str(config.source) if config.source else None,
        "data_dir": str(config.data_dir),
        "llm": llm,
        "notes": notes,
    }


def llm_parts(config: Config) -> dict[str, Any]:
    """The summary's `llm` but the spending, which needs the store (`with_spent` adds it): what the
    validated config says of the LLM. The light read path keeps it in its snapshot."""
    section = config.file.llm
    if not config.llm_ready:
        return {"configured": False, "model": section.model,
                "note": f"{config.llm_note}: decisions use the rules planner"}
    return {"configured": True, "model": section.model, "budget": section.budget.model_dump(),
            "price_known": section.price is not None,   # else the USD budget is not applied
            "note": f"decisions by {section.model} under the policy gate (rules planner as fallback)"}


def with_spent(parts: dict[str, Any], spent: dict[str, float]) -> dict[str, Any]:
    """`llm_parts` with the LLM's spending (`decide.budget.Budget.spent`) where decisions use it."""
    if not parts["configured"]:
        return parts
    return {"configured": True, "model": parts["model"], "spent": spent,
            **{key: parts[key] for key in ("budget", "price_known", "note")}}


async def _llm(rt: Runtime) -> dict[str, Any]:
    """Whether decisions use the LLM, and its spending against the budget."""
    parts = llm_parts(rt.config)
    if not parts["configured"]:
        return parts
    from .decide.budget import Budget

    return with_spent(parts, await Budget(rt.store, rt.clock, rt.config.file.llm).spent())
