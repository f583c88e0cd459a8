"""Kernel actions: plan first, then apply.

An action turns validated arguments into a `Plan` — exactly what it will do, its risk class and
whether it can be undone — without changing anything. The policy judges the plan, the owner
sees it in a halt, and only then `apply` executes it under a timeout. Before an approved plan is
applied it is planned again; `Action.material_change` says whether the world moved enough that
the owner must be asked again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

from ..clock import Clock

Risk = Literal["safe", "destructive", "costly"]
RISK_ORDER: dict[str, int] = {"safe": 0, "destructive": 1, "costly": 2}


@dataclass(frozen=True)
class Plan:
    """What an action will do. Plans are data: stored in halts and events, shown to the owner."""

    action: str
    args: dict[str, Any]
    summary: str                          # one line for people: "delete 42 files (1.2 GiB) under /srv/tmp"
    steps: list[str] = field(default_factory=list)   # the exact operations, in order
    risk: Risk = "safe"
    reversible: bool = True
    deletes: bool = False                 # removes data for good (always asks at high autonomy)
    noop: bool = False                    # nothing to do (e.g. no file matches)
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "args": self.args, "summary": self.summary, "steps": self.steps,
                "risk": self.risk, "reversible": self.reversible, "deletes": self.deletes,
                "noop": self.noop, "details": self.details}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        return cls(**data)


@dataclass(frozen=True)
class Outcome:
    """What `apply` did.

    `ok` is False when something went wrong. `changed` is False when nothing went wrong but
    nothing was changed either (every planned file was gone or had changed since the plan): the
    owner must not read "done" for that, and there is nothing to verify afterwards.
    """

    ok: bool
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    changed: bool = True


class Notifier(Protocol):
    async def notify(self, title: str, body: str, *, severity: str = "info",
                     halt_id: int | None = None, incident_id: int | None = None) -> object:
        ...


@dataclass(frozen=True)
class Constraints:
    """Argument constraints from the policy files: where and on what actions may work."""

    cleanup_roots: tuple[Path, ...] = ()
    service_units: tuple[str, ...] = ()      # globs, e.g. "nginx.service", "app-*.service"
    domains: tuple[str, ...] = ()            # globs, e.g. "*.example.com"


@dataclass(frozen=True)
class ActionContext:
    clock: Clock
    constraints: Constraints
    settings: dict[str, Any]                 # this action's table from kernel/*.toml
    notifier: Notifier | None = None
    data_dir: Path | None = None


class ActionArgs(BaseModel):
    """Base of every action's argument schema: unknown arguments are refused."""

    # defer_build: an action's schema is built when its arguments are first validated, not at import
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class Action:
    """A kernel action. Subclasses set `Args`, `timeout`, and implement plan and apply."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Args: ClassVar[type[ActionArgs]]
    timeout: ClassVar[float] = 300.0

    def validate(self, args: dict[str, Any], ctx: ActionContext) -> ActionArgs:
        """Check `args` against the schema and the policy's constraints.

        Raises:
            pydantic.ValidationError: the arguments do not fit the schema.
            ActionError(permanent=True): the arguments break a constraint.
        """
        return self.Args.model_validate(args)

    async def plan(self, args: ActionArgs, ctx: ActionContext) -> Plan:
        raise NotImplementedError

    async def apply(self, plan: Plan, ctx: ActionContext) -> Outcome:
        raise NotImplementedError

    def material_change(self, approved: Plan, fresh: Plan) -> str | None:
        """Why `fresh` differs too much from the plan the owner approved, or None.

        The default compares summaries; actions with sizes (cleanup) override it.
        """
        if fresh.risk != approved.risk and RISK_ORDER[fresh.risk] > RISK_ORDER[approved.risk]:
            return f"the risk rose from {approved.risk} to {fresh.risk}"
        if fresh.steps != approved.steps:
            return "the steps changed"
        return None


ACTIONS: dict[str, type[Action]] = {}
A = TypeVar("A", bound=type[Action])


def action(name: str) -> Callable[[A], A]:
    """Register an action class under `name`."""

    def register(cls: A) -> A:
        if name in ACTIONS:
            raise RuntimeError(f"action {name!r} registered twice")
        cls.name = name
        ACTIONS[name] = cls
        return cls

    return register
