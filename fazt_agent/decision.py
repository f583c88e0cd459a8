"""What the policy gate decides: the types the engine, the executor and the planners share.

They live below all three so that each layer imports only below itself (the engine calls the
executor and the LLM planner; neither imports the engine).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .kernel.base import Plan
from .policy.evaluate import Judgement


@dataclass(frozen=True)
class Evaluation:
    """The gate's judgement before anything happens: a plan and verdict, or why there is none."""

    plan: Plan | None = None
    judgement: Judgement | None = None
    rejected: str | None = None   # the proposal breaks the schema or the constraints
    failed: str | None = None     # the action could not plan


@dataclass(frozen=True)
class Decision:
    """What the gate decided about one proposal, and what followed."""

    verdict: str
    reason: str
    plan: dict[str, Any] | None = None
    halt_id: int | None = None
    action_id: int | None = None
    outcome: dict[str, Any] | None = None
    paused: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "reason": self.reason, "plan": self.plan, "halt_id": self.halt_id,
                "action_id": self.action_id, "outcome": self.outcome, "paused": self.paused}
