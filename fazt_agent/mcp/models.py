"""Structured outputs of the MCP tools (each tool publishes one of these as its output schema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CheckResultOut(Out):
    check: str
    kind: str
    target: str
    status: str
    message: str
    metrics: dict[str, float] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)
    duration_ms: float = 0.0
    measured_at: str | None = None


class DaemonOut(Out):
    running: bool
    pid: int | None


class LastBeatOut(Out):
    id: int
    ts: str
    status: str
    duration_ms: float


class AutonomyDetailOut(Out):
    level: Literal["low", "medium", "high"] = Field(description="the level in force")
    source: Literal["config", "override"] = Field(
        description="config: the config file's [agent] autonomy; override: set at run time (CLI or MCP), "
                    "in force until that line of the config file is edited")
    config: Literal["low", "medium", "high"] = Field(description="what the config file says")
    file: str | None = Field(description="the config file (None: the embedded defaults)")
    by: str | None = Field(None, description="who set the override in force")
    at: str | None = Field(None, description="when the override was set")
    problem: str | None = Field(None, description="the config file's level cannot be read now (its last good "
                                                  "one counts)")
    summary: str = Field(description="one line, e.g. \"high (set by cli at ..., overrides config.toml's low)\"")


class SystemStatus(Out):
    model_config = ConfigDict(extra="allow")   # other features add their part of the status (e.g. llm)

    health: str = Field(description="worst status of the latest results: ok, warning, critical or unknown")
    autonomy: str
    autonomy_detail: AutonomyDetailOut
    paused: bool
    paused_by: str | None = Field(None, description="who paused the agent (while paused)")
    paused_at: str | None = Field(None, description="since when (while paused)")
    personality: str
    daemon: DaemonOut
    last_beat: LastBeatOut | None
    checks: int
    problems: list[CheckResultOut]
    pending_halts: int
    open_incidents: int
    config: str | None
    data_dir: str
    notes: list[str]


class PulseStatus(Out):
    results: list[CheckResultOut] = Field(description="the newest result of every configured check and target")


class BeatOut(Out):
    id: int
    ts: str
    status: str
    duration_ms: float
    problems: list[CheckResultOut]


class PulseHistory(Out):
    hours: float
    beats: list[BeatOut] = Field(description="oldest first")
    truncated: bool = Field(description="true when only the newest `limit` beats are listed")


class IncidentOut(Out):
    id: int
    check: str
    target: str
    kind: str
    status: str
    severity: str
    peak_severity: str
    message: str
    metrics: dict[str, float]
    details: dict[str, Any]
    opened_at: str
    updated_at: str
    resolved_at: str | None
    beats: int
    last_verdict: str | None
    flapping_since: str | None = Field(None, description="set when it opened as flapping: held open, reported once")


class Incidents(Out):
    incidents: list[IncidentOut]


class EventOut(Out):
    id: int
    ts: str
    type: str
    source: str
    incident_id: int | None
    data: dict[str, Any]


class Events(Out):
    events: list[EventOut] = Field(description="newest first")


class PlanOut(Out):
    action: str
    args: dict[str, Any]
    summary: str
    steps: list[str]
    risk: Literal["safe", "destructive", "costly"]
    reversible: bool
    deletes: bool
    noop: bool
    details: dict[str, Any]


class HaltOut(Out):
    id: int
    status: str
    title: str
    summary: str
    plan: PlanOut
    options: list[str]
    default_option: str
    incident_id: int | None
    created_at: str
    expires_at: str
    overdue: bool = Field(description="pending past its expiry: the agent's next sweep applies the default")
    answer: str | None
    answered_by: str | None
    note: str | None
    execution: str | None
    action_id: int | None


class Halts(Out):
    halts: list[HaltOut]


class HaltAnswerResult(Out):
    halt: HaltOut
    executed: bool = Field(description="whether the approved plan ran now")
    ok: bool | None = None
    message: str | None = None
    action_id: int | None = None
    replanned: bool = False
    new_halt_id: int | None = Field(None, description="the plan changed since it was asked: a new halt asks again")


class RuleOut(Out):
    rule: str
    description: str
    match: str
    action: str
    args: dict[str, Any]
    levels: dict[str, dict[str, str]] = Field(description="verdict per autonomy level, per plan risk")
    limits: str


class PolicyExplanation(Out):
    version: str
    files: list[str]
    rules: list[RuleOut]
    unmatched: str = "anything no rule matches → notify"


class ActionOut(Out):
    name: str
    description: str
    timeout_s: float
    args_schema: dict[str, Any]


class Actions(Out):
    actions: list[ActionOut]


class ActionPlan(Out):
    plan: PlanOut
    autonomy: str
    verdict: Literal["act", "ask", "notify", "deny"]
    reason: str


class Approval(BaseModel):
    """The form shown to the person at the client when the policy asks."""

    decision: Literal["approve", "deny"] = Field(description="approve runs the plan now; deny refuses it")
    note: str = Field("", description="why (kept in the audit trail)")


class ActionRunResult(Out):
    verdict: str = Field(description="act (it ran), ask (approval needed), notify or deny (it did not run)")
    reason: str
    plan: PlanOut | None
    paused: bool = Field(description="the agent is paused: the verdict was recorded, nothing ran")
    action_id: int | None = None
    outcome: dict[str, Any] | None = None
    halt_id: int | None = Field(None, description="the approval request (answer with fazt_halt_answer)")
    approval: Literal["approved", "denied", "pending"] | None = Field(
        None, description="for ask: what the person answered through elicitation, or pending")
    answer: HaltAnswerResult | None = None


class Autonomy(Out):
    autonomy: Literal["low", "medium", "high"]
    detail: AutonomyDetailOut
    paused: bool


class AutonomyChange(Out):
    old: str
    new: str
    changed: bool
    detail: AutonomyDetailOut


class PauseState(Out):
    paused: bool
    changed: bool
