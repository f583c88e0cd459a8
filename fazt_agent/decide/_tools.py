"""The tools offered to the LLM for one call: which, under which names, with which schemas.

Three kinds: read-only investigation tools; action tools, one per kernel action the policy
could let past `notify` for this incident at this autonomy level (calling one *proposes* the
action, nothing runs); and `notify_only`, the answer "tell the owner, do nothing". A denied
action is never offered. API names match `^[a-zA-Z0-9_-]{1,64}$` (`service.restart` is offered
as `service_restart`); a name the model invents is not in the set and is refused.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..kernel import ACTIONS, Plan
from ..policy.evaluate import PERMISSIVE, ceiling, stricter
from ..policy.model import Level, Policy, Rule
from .investigate import INVESTIGATIONS
from .rules import matches

if TYPE_CHECKING:
    from ..incidents import Incident

NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
NOTIFY_ONLY = "notify_only"
SAFE_PLAN = Plan("any", {}, "a safe plan", risk="safe")
CACHE = {"type": "ephemeral"}


def api_name(action: str) -> str:
    """The tool name of a kernel action: characters outside [a-zA-Z0-9_-] become '_'."""
    name = re.sub(r"[^a-zA-Z0-9_-]", "_", action)[:64]
    assert NAME.match(name), name
    return name


def action_of(name: str) -> str | None:
    """The kernel action whose tool name is `name`, if any (offered or not)."""
    return next((a for a in ACTIONS if api_name(a) == name), None)


@dataclass(frozen=True)
class Tool:
    name: str
    kind: Literal["investigate", "action", "notify_only"]
    description: str
    schema: dict[str, Any]
    action: str | None = None       # the kernel action an action tool proposes
    rule: Rule | None = None        # the policy rule that offers it (None: no rule names it)


def _clean(schema: Any) -> Any:
    """A JSON schema without pydantic's `title`s (they only cost tokens)."""
    if isinstance(schema, dict):
        return {k: _clean(v) for k, v in schema.items() if k != "title" or not isinstance(v, str)}
    if isinstance(schema, list):
        return [_clean(v) for v in schema]
    return schema


def offered_actions(policy: Policy, incident: Incident, level: Level) -> list[tuple[str, Rule]]:
    """(action, rule) for every action a rule matching `incident` could let past `notify` at `level`.

    A safe plan stands for the best case: when even that only notifies (low autonomy, or the
    rule says notify or deny), the action is not offered.
    """
    out: dict[str, Rule] = {}
    for rule in policy.rules:
        if rule.action in out or rule.action not in ACTIONS or not matches(rule, incident):
            continue
        top, _ = ceiling(level, SAFE_PLAN)
        verdict = stricter(top, getattr(rule.verdicts, level) or top)
        if PERMISSIVE[verdict] > PERMISSIVE["notify"]:
            out[rule.action] = rule
    return sorted(out.items())


def _action_tool(action: str, rule: Rule) -> Tool:
    cls = ACTIONS[action]
    schema = copy.deepcopy(_clean(cls.Args.model_json_schema()))
    schema.setdefault("properties", {})["rationale"] = {
        "type": "string", "maxLength": 600, "description": "why this action, for the owner and the audit trail"}
    schema["required"] = [*schema.get("required", []), "rationale"]
    description = (f"Propose the kernel action `{action}`: {cls.description} Nothing runs now: the policy gate "
                   f"judges the exact plan after you finish. Durations are seconds (or text like '7d'), sizes "
                   f"bytes (or text like '500MB'). Offered by policy rule {rule.name!r}"
                   + (f" (its default arguments: {rule.args})." if rule.args else "."))
    return Tool(api_name(action), "action", description, schema, action=action, rule=rule)


NOTIFY_TOOL = Tool(NOTIFY_ONLY, "notify_only",
                   "Propose no action: the owner is told about the incident, with your reason.",
                   {"type": "object", "additionalProperties": False, "required": ["reason"],
                    "properties": {"reason": {"type": "string", "maxLength": 800,
                                              "description": "what the owner should know and why you do not act"}}})


def investigation_tools(names: tuple[str, ...] | None = None) -> list[Tool]:
    return [Tool(name, "investigate", description, _clean(args.model_json_schema()))
            for name, (description, args, _) in INVESTIGATIONS.items() if names is None or name in names]


class ToolSet:
    """The tools of one conversation, in a fixed order (so the definitions stay byte-identical)."""

    def __init__(self, tools: list[Tool]):
        self.tools = tools
        self.by_name = {t.name: t for t in tools}
        if len(self.by_name) != len(tools):
            raise ValueError(f"two tools share a name: {[t.name for t in tools]}")

    @classmethod
    def for_incident(cls, policy: Policy, incident: Incident, level: Level) -> ToolSet:
        actions = [_action_tool(action, rule) for action, rule in offered_actions(policy, incident, level)]
        return cls(investigation_tools() + actions + [NOTIFY_TOOL])

    @property
    def actions(self) -> list[Tool]:
        return [t for t in self.tools if t.kind == "action"]

    def get(self, name: str) -> Tool | None:
        return self.by_name.get(name)

    def definitions(self) -> list[dict[str, Any]]:
        """The `tools` of a Messages API request; the last carries the cache breakpoint."""
        defs: list[dict[str, Any]] = [{"name": t.name, "description": t.description, "input_schema": t.schema}
                                      for t in self.tools]
        if defs:
            defs[-1]["cache_control"] = CACHE
        return defs
