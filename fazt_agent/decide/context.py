"""What the LLM sees besides the tools: the values of the prompt templates, read from the store.

Everything that came from the server or its history is fenced (`prompt.Fence`, the one of the
conversation the values are for); the tables are
compact (one line per row) so a decision costs a few thousand tokens, not tens of thousands.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ..clock import iso
from .prompt import Fence, number

if TYPE_CHECKING:
    from ..events import Event
    from ..incidents import Incident
    from ..runtime import Runtime

TREND_ROWS = 12
OUTCOMES = ("decision.made", "action.succeeded", "action.failed", "action.verified", "action.ineffective",
            "halt.answered", "halt.expired")


def _compact(data: Any, limit: int = 1500) -> str:
    return json.dumps(data, separators=(",", ":"), default=str)[:limit]


def _numbers(metrics: dict[str, Any]) -> str:
    return " ".join(f"{k}={number(v)}" for k, v in list(metrics.items())[:8])


def _event_line(e: Event) -> str:
    d = e.data
    what = d.get("reason") or d.get("summary") or d.get("message") or ""
    extra = "".join(f" {k}={d[k]}" for k in ("verdict", "planner", "action", "option", "by") if d.get(k))
    return f"{iso(e.ts)[:19]} {e.type}{extra}: {str(what)[:200]}".rstrip(": ")


async def decide_values(rt: Runtime, incident: Incident, fence: Fence) -> dict[str, str]:
    """incident, trend, events, history and answers for prompts/decide.md."""
    facts = (f"check: {incident.check} (kind {incident.kind})\ntarget: {incident.target}\n"
             f"severity: {incident.severity} (peak {incident.peak_severity}), "
             f"open since {iso(incident.opened_at)[:19]}, {incident.beats} beats\nmessage: {incident.message}\n"
             f"metrics: {_numbers(incident.metrics)}\ndetails: {_compact(incident.details)}")
    rows = await rt.store.fetchall(
        "SELECT ts, status, message, metrics FROM results WHERE check_name = ? AND target = ? "
        "ORDER BY ts DESC LIMIT ?", (incident.check, incident.target, TREND_ROWS))
    trend = "\n".join(f"{r['ts'][:19]} {r['status']:8} {_numbers(json.loads(r['metrics']))}" for r in reversed(rows))
    events = await rt.events.list(incident_id=incident.id, limit=12)
    lines = [_event_line(e) for e in reversed(events) if not e.type.startswith("notification.")]
    return {"incident": fence(f"incident {incident.id}", facts),
            "trend": fence(f"results of {incident.check}", trend or "none stored"),
            "events": fence(f"events of incident {incident.id}", "\n".join(lines) or "none"),
            "history": await _history(rt, incident, fence), "answers": await _answers(rt, incident, fence)}


async def _history(rt: Runtime, incident: Incident, fence: Fence) -> str:
    earlier = await rt.store.fetchall(
        "SELECT * FROM incidents WHERE check_name = ? AND id != ? ORDER BY id DESC LIMIT 5",
        (incident.check, incident.id))
    blocks = []
    for row in earlier:
        events = await rt.events.list(incident_id=row["id"], limit=40)
        steps = [_event_line(e) for e in reversed(events) if e.type in OUTCOMES][-6:]
        blocks.append(f"incident {row['id']} on {row['target']} ({row['severity']}, {row['status']}, opened "
                      f"{row['opened_at'][:16]}): {row['message'][:160]}\n" + "\n".join(f"  {s}" for s in steps))
    return fence("earlier incidents of this check", "\n".join(blocks)) if blocks else "none"


async def _answers(rt: Runtime, incident: Incident, fence: Fence) -> str:
    rows = await rt.store.fetchall(
        "SELECT h.id, h.answer, h.answered_by, h.note, h.plan, h.answered_at, i.check_name FROM halts h "
        "LEFT JOIN incidents i ON h.incident_id = i.id WHERE h.answer IS NOT NULL AND h.answered_by != 'timeout' "
        "ORDER BY (i.check_name IS ?) DESC, h.id DESC LIMIT 5", (incident.check,))
    lines = [f"halt {r['id']} ({r['check_name'] or 'manual'}): {json.loads(r['plan'])['summary'][:160]} -> "
             f"{r['answer']} by {r['answered_by']}" + (f", note: {r['note'][:200]}" if r["note"] else "")
             for r in rows]
    return fence("the owner's answers", "\n".join(lines)) if lines else "none"


async def overview_values(rt: Runtime, fence: Fence) -> dict[str, str]:
    """status, beats and events for prompts/ask.md and prompts/summary.md."""
    from ..status import gather_status

    status = await gather_status(rt)
    open_incidents = await rt.store.fetchall(
        "SELECT id, check_name, target, severity, message, opened_at, last_verdict FROM incidents "
        "WHERE status = 'open' ORDER BY id")
    text = (f"health: {status['health']}; autonomy: {status['autonomy']}; checks: {status['checks']}; "
            f"last beat: {status['last_beat']}\nproblems:\n"
            + "\n".join(f"  {p['check']} {p['target']}: {p['status']}: {p['message'][:160]}"
                        for p in status["problems"])
            + "\nopen incidents:\n"
            + "\n".join(f"  {r['id']} {r['check_name']} {r['target']} {r['severity']} since {r['opened_at'][:16]} "
                        f"(last verdict {r['last_verdict']}): {r['message'][:160]}" for r in open_incidents))
    beats = await rt.beats.history(rt.clock.now() - timedelta(hours=24))
    step = max(1, len(beats) // 48)
    beat_lines = [f"{b['ts'][:16]} {b['status']} " + "; ".join(f"{p['check']} {p['target']}: {p['message'][:80]}"
                                                              for p in b["problems"][:4])
                  for b in beats[::step]]
    events = [e for e in await rt.events.list(limit=200)
              if e.type != "pulse.beat" and not e.type.startswith("notification.")][:30]
    return {"status": fence("status", text),
            "beats": fence("beats of the last 24 h", "\n".join(beat_lines) or "none stored"),
            "events": fence("recent events", "\n".join(_event_line(e) for e in reversed(events)) or "none")}
