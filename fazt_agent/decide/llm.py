"""The LLM planner: Anthropic tool use under the policy gate.

The model sees the incident, its recent results and events, earlier decisions on the same
check with their outcomes, the owner's earlier answers, and only the tools the policy could
allow here (`_tools`). It may investigate (read-only) for up to `[llm] max_steps` calls, then
answers with action tool calls (proposals) or `notify_only`. It is advice, never authority:

- every proposal is validated against the action's schema and the policy's constraints,
  planned and judged by `Engine.gate`, exactly like a rule's proposal;
- a proposal the gate refuses, a tool that was not offered, a failed call (timeout, 429, 529,
  5xx after the SDK's retries), a refusal, an empty or malformed answer, or an exhausted
  budget: `decision.rejected` / `llm.fallback` / `llm.budget_exhausted` say why, and the rules
  planner decides instead, as if there were no LLM.

In the daemon a decision runs as a task (`Engine.spawn`): a slow model never delays a beat.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Coroutine, Protocol

from ..clock import iso
from ..config import LlmSection
from ..event_types import DecisionRejected
from ._client import AnthropicClient, LlmClient
from ._loop import Call, Transcript, converse, run_investigation
from ._tools import CACHE, Tool, ToolSet, action_of
from .budget import Budget
from .context import decide_values
from .investigate import Scope
from .llm_events import LlmBudgetExhausted, LlmDiscarded, LlmFallback
from .prompt import Fence, Prompts, TemplateError, render
from .rules import Proposal

if TYPE_CHECKING:
    from ..decision import Decision, Evaluation
    from ..incidents import Incident, IncidentStore
    from ..policy.model import Policy
    from ..runtime import Runtime

log = logging.getLogger(__name__)
MAX_PROPOSALS = 3
LOW_OFFER = ("No actions are offered at this autonomy level: investigate if it helps, then call notify_only with "
             "what the owner should know (what is wrong, the likely cause, what you would do).")


def base_request(llm: LlmSection, system: str, tools: ToolSet) -> dict[str, Any]:
    """The fixed part of every call: model, limits, the cached system prompt and tools.

    Tool use is never forced (`tool_choice` stays auto: current models refuse forced tool use).
    """
    request: dict[str, Any] = {"model": llm.model, "max_tokens": llm.max_tokens,
                               "system": [{"type": "text", "text": system, "cache_control": CACHE}]}
    if llm.effort != "model":
        request["output_config"] = {"effort": llm.effort}
    if tools.tools:
        request["tools"] = tools.definitions()
    return request


class Gate(Protocol):
    """What the LLM planner needs from the engine that owns it (the engine is above this layer)."""

    rt: Runtime
    incidents: IncidentStore
    host: str
    spawn: Callable[[str, Coroutine[Any, Any, None]], None] | None

    @property
    def policy(self) -> Policy: ...

    async def evaluate(self, proposal: Proposal, incident: Incident | None, autonomy: str) -> Evaluation: ...

    async def gate(self, proposal: Proposal, *, incident: Incident | None, trigger: str,
                   requested_by: str = "agent", evaluation: Evaluation | None = None) -> Decision: ...

    async def decide_by_rules(self, incident: Incident, trigger: str) -> Decision: ...

    async def notify_only(self, incident: Incident, trigger: str, reason: str, *, rule: Any = None,
                          record: bool = True, proposal: Proposal | None = None) -> Decision: ...


class LlmDecider:
    """Decides incidents with the LLM for the engine (`Gate`), falling back to its rules planner."""

    def __init__(self, engine: Gate):
        self.engine = engine
        self.rt = engine.rt
        self.section = self.rt.config.file.llm
        self.client: LlmClient = AnthropicClient(self.rt.config)
        self.budget = Budget(self.rt.store, self.rt.clock, self.section)
        self._busy: dict[int, str | None] = {}   # incident id -> a trigger that arrived meanwhile

    async def submit(self, incident: Incident, trigger: str) -> Decision | None:
        """Decide now (no spawn: the CLI) or as a task (the daemon; returns None at once)."""
        if self.engine.spawn is None:
            return await self.decide(incident, trigger)
        if incident.id in self._busy:
            if trigger != "retry":
                self._busy[incident.id] = trigger
            return None
        self._busy[incident.id] = None
        # should the task never finish (the daemon stops), the next beat decides again
        await self.rt.store.execute("UPDATE incidents SET retry_at = ? WHERE id = ?",
                                    (iso(self.rt.clock.now()), incident.id))
        self.engine.spawn("decide", self._run(incident, trigger))
        return None

    async def _run(self, incident: Incident, trigger: str) -> None:
        try:
            while True:
                await self.decide(incident, trigger)
                queued = self._busy.get(incident.id)
                fresh = await self.engine.incidents.get(incident.id)
                if queued is None or fresh is None or fresh.status != "open":
                    return
                self._busy[incident.id] = None
                incident, trigger = fresh, queued
        except Exception:  # supervisor boundary: the incident is decided again on a later beat
            log.exception("decision on incident %s failed", incident.id)
        finally:
            self._busy.pop(incident.id, None)

    async def decide(self, incident: Incident, trigger: str) -> Decision | None:
        """One LLM decision on `incident`, or the rules planner's when the LLM cannot give one."""
        autonomy = await self.rt.autonomy()
        tools = ToolSet.for_incident(self.engine.policy, incident, autonomy)
        try:  # read at every decision: an edit applies at once, a broken one leaves the rules planner
            prompts = Prompts.load(self.rt.config.folders["prompts"])
        except TemplateError as e:
            return await self._fall_back(incident, trigger, "prompt", "; ".join(map(str, e.issues)), Transcript())
        try:
            t = await self._consult(prompts, incident, trigger, autonomy, tools)
        except Exception as e:  # supervisor boundary: a bug in the LLM path leaves the rules planner
            log.exception("the LLM planner failed on incident %s", incident.id)
            return await self._fall_back(incident, trigger, "internal", f"{type(e).__name__}: {e}", Transcript())
        return await self._conclude(incident, trigger, autonomy, t)

    async def _consult(self, prompts: Prompts, incident: Incident, trigger: str, autonomy: str,
                       tools: ToolSet) -> Transcript:
        offer = (f"Actions offered: {', '.join(t.name for t in tools.actions)}. Each is judged by the owner's policy "
                 "on its exact plan; prefer notify_only when unsure." if tools.actions else LOW_OFFER)
        fence = Fence()  # a new tag per decision, named in its first message
        values = {"trigger": trigger, "autonomy": autonomy, "offer": offer, "max_steps": str(self.section.max_steps),
                  **await decide_values(self.rt, incident, fence)}
        scope = Scope.of(self.rt, incident, fence)

        async def run(tool: Tool, args: dict[str, Any]) -> tuple[str, bool]:
            return await run_investigation(scope, tool, args)

        system = prompts.system_prompt(self.engine.host, self.rt.config.agent.personality)
        return await converse(self.client, self.budget, "decide", base_request(self.section, system, tools),
                              fence.introduce(render(prompts.decide, values).strip()), tools, run,
                              self.section.max_steps)

    async def _conclude(self, incident: Incident, trigger: str, autonomy: str, t: Transcript) -> Decision | None:
        if t.exhausted is not None:
            ex = t.exhausted
            await self.rt.events.emit("llm.budget_exhausted", LlmBudgetExhausted(
                purpose="decide", limit=ex.limit, used=ex.used, allowed=ex.allowed,  # type: ignore[arg-type]
                reason=ex.reason), source="llm", incident_id=incident.id)
            return await self.engine.decide_by_rules(incident, trigger)
        if t.failure is not None:
            return await self._fall_back(incident, trigger, *t.failure, t)
        if t.unknown:
            for name in t.unknown:
                await self._rejected(incident, action_of(name) or name, {},
                                     f"the tool {name!r} was not offered for this incident at {autonomy} autonomy")
            return await self._fall_back(incident, trigger, "unknown_tool",
                                         f"the model called tools that were not offered: {', '.join(t.unknown)}", t)
        current = await self.engine.incidents.get(incident.id)
        if current is None or current.status != "open":
            await self.rt.events.emit("llm.discarded", LlmDiscarded(
                reason="the incident resolved while the model was deciding", model=self.section.model,
                usage=t.record(), rationale=t.text or None), source="llm", incident_id=incident.id)
            return None
        acts = [c for c in t.answer if c.tool.kind == "action"]
        notes = [str(c.input.get("reason") or "") for c in t.answer if c.tool.kind == "notify_only"]
        if acts and notes:
            return await self._fall_back(current, trigger, "malformed", "both actions and notify_only", t)
        if len(acts) > MAX_PROPOSALS:
            return await self._fall_back(current, trigger, "malformed",
                                         f"{len(acts)} proposals (at most {MAX_PROPOSALS})", t)
        if acts:
            return await self._propose(current, trigger, autonomy, acts, t)
        reason = (notes[0] if notes else t.text).strip()[:800]
        if not reason:
            return await self._fall_back(current, trigger, "empty", "notify_only without a reason", t)
        note = Proposal(None, {}, None, "llm", reason, model=self.section.model, usage=t.record())
        return await self.engine.notify_only(current, trigger, reason, proposal=note)

    async def _propose(self, incident: Incident, trigger: str, autonomy: str, acts: list[Call],
                       t: Transcript) -> Decision | None:
        """Every proposal through the gate; when one is refused, none runs and the rules decide."""
        proposals = [Proposal(c.tool.action, {k: v for k, v in c.input.items() if k != "rationale"}, c.tool.rule,
                              "llm", str(c.input.get("rationale") or t.text).strip()[:600], model=self.section.model,
                              usage=t.record()) for c in acts]
        evaluations = [await self.engine.evaluate(p, incident, autonomy) for p in proposals]
        refused = [(p, ev.rejected) for p, ev in zip(proposals, evaluations, strict=True) if ev.rejected is not None]
        for p, why in refused:
            await self._rejected(incident, p.action, p.args, why)
        if refused:
            return await self._fall_back(incident, trigger, "rejected", "; ".join(why for _, why in refused), t)
        decision = None
        for p, ev in zip(proposals, evaluations, strict=True):
            decision = await self.engine.gate(p, incident=incident, trigger=trigger, evaluation=ev)
        return decision

    async def _rejected(self, incident: Incident, action: str | None, args: dict[str, Any], reason: str) -> None:
        await self.rt.events.emit("decision.rejected", DecisionRejected(planner="llm", action=action, args=args,
                                                                        reason=reason),
                                  source="engine", incident_id=incident.id)

    async def _fall_back(self, incident: Incident, trigger: str, kind: str, reason: str, t: Transcript) -> Decision:
        await self.rt.events.emit("llm.fallback", LlmFallback(
            purpose="decide", kind=kind, reason=f"{reason}; the rules planner decides",  # type: ignore[arg-type]
            model=self.section.model, usage=t.record(), rationale=t.text or None), source="llm",
            incident_id=incident.id)
        return await self.engine.decide_by_rules(incident, trigger)
