"""The rules planner: the first policy rule that matches an incident proposes its action."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..policy.model import Policy, Rule
from ..policy.templates import TemplateError, fill

if TYPE_CHECKING:
    from ..incidents import Incident


@dataclass(frozen=True)
class Proposal:
    """A candidate action (None: notify only) with its arguments and who proposed it.

    An LLM proposal also carries the model and its usage (tokens, cost, latency, tool calls).
    """

    action: str | None
    args: dict[str, Any]
    rule: Rule | None
    planner: str
    reason: str = ""
    error: str | None = None
    model: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)


def _any(patterns: list[str], value: str) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(value, p) for p in patterns)


def matches(rule: Rule, incident: Incident) -> bool:
    m = rule.match
    return (_any(m.check, incident.check) and _any(m.kind, incident.kind) and _any(m.target, incident.target)
            and (not m.severity or incident.severity in m.severity))


def rules_planner(policy: Policy, incident: Incident) -> Proposal:
    """The first matching rule's action with arguments filled from the incident."""
    for rule in policy.rules:
        if not matches(rule, incident):
            continue
        try:
            args = fill(rule.args, incident.values())
        except TemplateError as e:
            return Proposal(None, {}, rule, "rules", f"rule {rule.name!r} cannot apply: {e}", error=str(e))
        return Proposal(rule.action, args, rule, "rules", f"rule {rule.name!r} matches")
    return Proposal(None, {}, None, "rules", "no policy rule matches this incident")
