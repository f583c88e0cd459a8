"""Event types of the LLM planner: why the rules planner decided instead, and discarded answers.

A successful LLM decision is an ordinary `decision.made` (planner "llm", with `model`, `usage`
and `rationale`); a proposal the gate refuses is an ordinary `decision.rejected`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ..event_types import EventData, event_type

FallbackKind = Literal["timeout", "connection", "rate_limited", "overloaded", "server_error", "api_error",
                       "malformed", "unknown_tool", "refusal", "empty", "max_steps", "rejected", "prompt", "internal"]


@event_type("llm.fallback")
class LlmFallback(EventData):
    """The LLM could not decide (or proposed something the gate refused): the rules planner decides."""

    purpose: str
    kind: FallbackKind
    reason: str
    model: str
    usage: dict[str, Any] = Field(default_factory=dict)
    rationale: str | None = None


@event_type("llm.budget_exhausted")
class LlmBudgetExhausted(EventData):
    """An LLM call was not made: a budget limit is reached. Decisions fall back to the rules planner."""

    purpose: str
    limit: Literal["calls_per_hour", "tokens_per_day", "usd_per_day"]
    used: float
    allowed: float
    reason: str


@event_type("llm.discarded")
class LlmDiscarded(EventData):
    """The LLM answered after its incident resolved: nothing is done with the answer."""

    reason: str
    model: str
    usage: dict[str, Any] = Field(default_factory=dict)
    rationale: str | None = None
