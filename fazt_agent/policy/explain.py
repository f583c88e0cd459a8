"""`policy explain` and `policy simulate` helpers: the rules in words, incidents from JSON."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ..kernel.base import Plan
from ..units import format_duration
from .evaluate import History, judge
from .model import Policy, Schedule

SAMPLE_PLANS = {
    "safe": Plan("x", {}, "a safe plan", risk="safe"),
    "destructive": Plan("x", {}, "a destructive deletion", risk="destructive", reversible=False, deletes=True),
    "costly": Plan("x", {}, "a costly plan", risk="costly"),
}


def _either(own: Any, default: Any) -> Any:
    """The rule's own value, else the policy default (a rule's 0 is a value, not "unset")."""
    return own if own is not None else default


def explain(policy: Policy) -> list[dict[str, Any]]:
    """Each rule with its verdict per autonomy level for a safe, destructive and costly plan."""
    now = datetime(2000, 1, 3, 12, tzinfo=timezone.utc)  # outside any window: the rule's own verdicts
    rows = []
    for rule in policy.rules:
        m = rule.match
        parts = [f"{name} in {values}" for name, values in
                 (("check", m.check), ("kind", m.kind), ("target", m.target), ("severity", m.severity)) if values]
        levels = {level: {risk: judge(rule, plan, level, History(), now, Schedule(), policy.defaults).verdict  # type: ignore[arg-type]
                          for risk, plan in SAMPLE_PLANS.items()} for level in ("low", "medium", "high")}
        d = policy.defaults
        limits = (f"cooldown {format_duration(_either(rule.cooldown, d.cooldown))}, at most "
                  f"{_either(rule.max_actions, d.max_actions)} actions per "
                  f"{format_duration(_either(rule.window, d.window))}, "
                  f"halts expire after {format_duration(_either(rule.halt_expiry, d.halt_expiry))}")
        rows.append({"rule": rule.name, "description": rule.description, "match": " and ".join(parts) or "any incident",
                     "action": rule.action, "args": rule.args, "levels": levels, "limits": limits})
    return rows


def incident_from_json(data: Any) -> Any:
    """An unsaved Incident from a JSON object (for `policy simulate`).

    Raises:
        ValueError: a required field is missing or has the wrong type.
    """
    from ..incidents import Incident

    if not isinstance(data, dict):
        raise ValueError("expected a JSON object with check, kind, target, severity")
    for key in ("check", "kind", "severity"):
        if not isinstance(data.get(key), str):
            raise ValueError(f"missing or non-string {key!r}")
    if data["severity"] not in ("unknown", "warning", "critical"):
        raise ValueError(f"severity must be unknown, warning or critical, got {data['severity']!r}")
    now = datetime.now(timezone.utc)
    return Incident(0, data["check"], str(data.get("target", "")), data["kind"], "open", data["severity"],
                    data["severity"], str(data.get("message", "")), dict(data.get("metrics", {})),
                    dict(data.get("details", {})), now, now, None, 1)
