"""Events in words: one line per event, its facts, and its phase in an incident's life (seen,
decided, asked, answered, acted, verified), for the dashboard's timeline and event pages."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from ..events import Event
from ..units import format_duration, format_number

# what an event is in an incident's life (a type not listed: its family's, else "noted")
PHASES = {"incident.opened": "seen", "incident.flapping": "seen", "incident.updated": "changed",
          "incident.resolved": "resolved", "halt.requested": "asked", "halt.reminded": "asked",
          "halt.answered": "answered", "halt.answer_refused": "refused", "halt.expired": "answered",
          "halt.cancelled": "withdrawn", "halt.replanned": "asked", "halt.resumed": "acted",
          "action.verified": "verified", "action.ineffective": "verified"}
FAMILIES = {"decision": "decided", "llm": "decided", "action": "acted", "notification": "told"}


def stamp(at: datetime) -> str:
    """A time to the second: "2025-06-01 14:30:05 UTC"."""
    return f"{at.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S} UTC"


def summary(e: Event) -> str:
    """One line saying what an event is about."""
    d = e.data
    if e.type == "pulse.beat":
        counts = ", ".join(f"{n} {s}" for s, n in sorted(d.get("counts", {}).items()))
        return f"beat #{d.get('beat_id')}: {d.get('status')} ({counts})"
    if e.type == "decision.made":
        what = f" {d['action']}" if d.get("action") else ""
        return f"{d.get('verdict')}{what} by the {d.get('planner')} planner: {d.get('reason', '')}"
    if e.type == "halt.answered":
        via = f" via {d['channel']}" if d.get("channel") else ""
        return f"halt #{d.get('halt_id')} answered '{d.get('option')}' by {d.get('by')}{via}"
    if e.type == "halt.answer_refused":
        via = f" via {d['channel']}" if d.get("channel") else ""
        return f"{d.get('by')} tried '{d.get('option')}'{via}: {d.get('reason')}"
    for key in ("reason", "summary", "message", "note", "title"):
        if isinstance(d.get(key), str) and d[key]:
            prefix = f"halt #{d['halt_id']}: " if d.get("halt_id") is not None else ""
            return prefix + d[key]
    text = json.dumps(d, separators=(", ", ": "), default=str)
    return text if len(text) <= 160 else text[:157] + "..."


def timeline_entry(e: Event) -> dict[str, Any]:
    """An event as the incident's timeline shows it: its phase, what it says, and its facts."""
    phase = PHASES.get(e.type) or FAMILIES.get(e.type.split(".", 1)[0], "noted")
    return {"e": e, "phase": phase, "summary": summary(e), "facts": facts(e)}


def facts(e: Event) -> list[tuple[str, str]]:
    """The fields of an event worth a line each, in words: for a decision everything an audit needs
    (planner, rule, verdict, reason, policy version; the LLM's model, tokens, cost, tool calls)."""
    d = e.data
    out: list[tuple[str, str]] = []

    def add(label: str, value: Any) -> None:
        if value not in (None, "", [], {}):
            out.append((label, value if isinstance(value, str) else json.dumps(value, default=str)))

    if e.type == "decision.made":
        for label, key in (("trigger", "trigger"), ("planner", "planner"), ("rule", "rule"), ("verdict", "verdict"),
                           ("autonomy", "autonomy"), ("action", "action"), ("reason", "reason"),
                           ("rationale", "rationale"), ("policy version", "policy_version"), ("model", "model")):
            add(label, d.get(key))
        if d.get("plan"):
            add("plan", f"{d['plan'].get('summary')} (risk {d['plan'].get('risk')})")
        if d.get("paused"):
            add("paused", "recorded only: the agent was paused")
        add_usage(add, d.get("usage") or {})
        return out
    if e.type == "halt.answered":
        for label, key in (("answer", "option"), ("by", "by"), ("via", "channel"), ("note", "note")):
            add(label, d.get(key))
        return out
    for key, value in d.items():
        if key in ("summary", "reason", "message") or isinstance(value, (dict, list)):
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        add(key.replace("_", " "), format_number(value) if number else value)
    return out


def add_usage(add: Any, usage: dict[str, Any]) -> None:
    """An LLM decision's tokens, calls, cost and tool calls (`decide/llm.py`'s usage)."""
    if not usage:
        return
    add("tokens", f"input {usage.get('input_tokens', 0):,}, cache read {usage.get('cache_read_tokens', 0):,}, "
                  f"cache write {usage.get('cache_write_tokens', 0):,}, output {usage.get('output_tokens', 0):,}")
    add("calls", f"{usage.get('calls', 0)} in {format_duration(usage.get('latency_ms', 0) / 1000)}")
    if "cost_usd" in usage:
        add("cost", f"about ${usage['cost_usd']:.4f}")
    for call in usage.get("tool_calls", []):
        result = (f" -> {'ok' if call.get('ok') else 'refused'}, {call['result_chars']:,} characters"
                  if "result_chars" in call else "")
        what = call.get("name") if call.get("kind") == call.get("name") else f"{call.get('kind')} {call.get('name')}"
        add(f"tool call {call.get('step', '?')}", f"{what} {json.dumps(call.get('input'), default=str)[:200]}{result}")
