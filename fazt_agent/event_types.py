"""The catalogue of event types: each type name maps to the pydantic model of its `data`.

`EventLog.emit` refuses a type that is not registered here and validates the data against its
model, so the audit trail has one documented shape per type. Feature modules register their
own types with `@event_type("...")`.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from pydantic import BaseModel, ConfigDict, Field

EVENT_TYPES: dict[str, type[BaseModel]] = {}
T = TypeVar("T", bound=type[BaseModel])


def event_type(name: str) -> Callable[[T], T]:
    """Register the data model of event type `name`."""

    def register(model: T) -> T:
        if name in EVENT_TYPES:
            raise RuntimeError(f"event type {name!r} registered twice")
        EVENT_TYPES[name] = model
        return model

    return register


class EventData(BaseModel):
    # defer_build: a type's validator is built when it is first emitted, not at import: a command
    # or an idle daemon pays (in time and memory) for the few types it writes, not for all of them
    model_config = ConfigDict(extra="forbid", defer_build=True)


@event_type("agent.started")
class AgentStarted(EventData):
    version: str
    pid: int
    config: str | None
    data_dir: str
    autonomy: str
    checks: int


@event_type("agent.stopped")
class AgentStopped(EventData):
    reason: str
    uptime_s: float
    interrupted: list[str] = Field(default_factory=list)


@event_type("agent.alert")
class AgentAlert(EventData):
    """Something the owner should know about the agent itself (a refused reload, a bad check)."""

    message: str
    file: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class Problem(EventData):
    check: str
    target: str
    status: str
    message: str


@event_type("pulse.beat")
class PulseBeat(EventData):
    beat_id: int
    status: str
    duration_ms: float
    counts: dict[str, int]
    problems: list[Problem] = Field(default_factory=list)


@event_type("pulse.beat_interrupted")
class PulseBeatInterrupted(EventData):
    started_at: str
    reason: str


@event_type("store.pruned")
class StorePruned(EventData):
    before: str
    events: int
    beats: int


# --- the autonomy loop -------------------------------------------------------------------

class IncidentData(EventData):
    check: str
    target: str
    kind: str
    severity: str
    message: str
    previous: str | None = None


event_type("incident.opened")(type("IncidentOpened", (IncidentData,), {}))
event_type("incident.updated")(type("IncidentUpdated", (IncidentData,), {}))
event_type("incident.resolved")(type("IncidentResolved", (IncidentData,), {}))


@event_type("decision.made")
class DecisionMade(EventData):
    """A verdict on a plan (or on "notify only"), with everything needed to audit it."""

    trigger: str
    planner: str
    autonomy: str
    verdict: str
    reason: str
    policy_version: str
    rule: str | None = None
    action: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    plan: dict[str, Any] | None = None
    paused: bool = False
    model: str | None = None
    usage: dict[str, Any] = Field(default_factory=dict)
    rationale: str | None = None


@event_type("decision.rejected")
class DecisionRejected(EventData):
    planner: str
    action: str | None
    args: dict[str, Any] = Field(default_factory=dict)
    reason: str


@event_type("decision.failed")
class DecisionFailed(EventData):
    rule: str | None
    action: str | None
    reason: str


class ActionData(EventData):
    action_id: int
    action: str
    summary: str
    message: str = ""
    details: dict[str, Any] = Field(default_factory=dict)


for _name in ("planned", "started", "succeeded", "failed", "interrupted", "verified", "ineffective"):
    event_type(f"action.{_name}")(type(f"Action{_name.title()}", (ActionData,), {}))


@event_type("halt.requested")
class HaltRequested(EventData):
    halt_id: int
    action: str
    summary: str
    options: list[str]
    default: str
    expires_at: str


@event_type("halt.answered")
class HaltAnswered(EventData):
    halt_id: int
    option: str
    by: str                           # the owner (or `cli`, `mcp:TOKEN`)
    note: str | None = None
    channel: str | None = None        # cli, mcp, web, link, slack, email (None: before channels existed)


@event_type("halt.expired")
class HaltExpired(EventData):
    halt_id: int
    default: str


@event_type("halt.reminded")
class HaltReminded(EventData):
    halt_id: int
    expires_at: str


@event_type("halt.cancelled")
class HaltCancelled(EventData):
    halt_id: int
    reason: str


@event_type("halt.replanned")
class HaltReplanned(EventData):
    halt_id: int
    new_halt_id: int | None
    reason: str


@event_type("notification.sent")
class NotificationSent(EventData):
    notification_id: int
    channel: str
    title: str
    attempts: int
    halt_id: int | None = None


@event_type("notification.failed")
class NotificationFailed(EventData):
    notification_id: int
    attempt: int
    error: str
    next_attempt_at: str | None
    gave_up: bool = False


@event_type("notification.suppressed")
class NotificationSuppressed(EventData):
    title: str
    reason: str


@event_type("autonomy.changed")
class AutonomyChanged(EventData):
    old: str
    new: str
    by: str                      # cli, mcp:TOKEN, or config (an edit of the config file's [agent] autonomy)
    note: str | None = None      # whether it overrides the config file, or what the edit cleared


@event_type("agent.paused")
class AgentPaused(EventData):
    by: str


@event_type("agent.resumed")
class AgentResumed(EventData):
    by: str


@event_type("policy.reloaded")
class PolicyReloaded(EventData):
    version: str
    files: list[str]
    rules: int


@event_type("policy.rejected")
class PolicyRejected(EventData):
    issues: list[str]
    kept_version: str


@event_type("halt.answer_refused")
class HaltAnswerRefused(EventData):
    """An answer that did not count (already answered, expired, cancelled, not an option, no such
    halt): the audit trail keeps who tried what, through which channel (`cli`, `mcp:TOKEN`)."""

    halt_id: int | None               # None: the answer named no halt we could trust (a forged link)
    option: str
    by: str
    reason: str
    channel: str | None = None


class ActionRetryData(EventData):
    action_id: int
    action: str
    summary: str
    attempt: int                  # failed attempts on this incident so far, this one included
    max_attempts: int
    message: str                  # why the last attempt failed


@event_type("action.retry_scheduled")
class ActionRetryScheduled(ActionRetryData):
    """A failed safe action will be decided again at `next_attempt_at` while the incident stays open."""

    next_attempt_at: str


@event_type("action.retries_exhausted")
class ActionRetriesExhausted(ActionRetryData):
    """The last allowed attempt failed: no more retries on this incident."""


@event_type("incident.flapping")
class IncidentFlapping(IncidentData):
    """An incident opened as the `openings`-th of its check target within `window_s`: it is held
    open (and reported once) until the check is ok for `ok_beats` beats in a row."""

    openings: int
    window_s: float
    ok_beats: int


# -- apps (issue 13) -------------------------------------------------------------------------

@event_type("app.deployed")
class AppDeployed(EventData):
    app: str
    release: int
    previous: int | None
    files: int
    bytes: int
    new_blobs: int
    duration_ms: float
    source: str


@event_type("app.rolled_back")
class AppRolledBack(EventData):
    app: str
    from_release: int
    to_release: int
    reason: str
    automatic: bool


@event_type("app.deploy_refused")
class AppDeployRefused(EventData):
    app: str
    reason: str
    source: str


@event_type("app.deleted")
class AppDeleted(EventData):
    app: str
    releases: int


@event_type("app.env_changed")
class AppEnvChanged(EventData):
    """Only the key: values may be secrets."""

    app: str
    key: str
    change: str   # set | unset


@event_type("apps.tls_error")
class AppsTlsError(EventData):
    """A certificate the apps plane's TLS listener could not load (`apps/tls.py`): recorded once
    per version of its files; new handshakes keep the context loaded before, if any."""

    certificate: str        # the [[certificates]] name
    cert_path: str
    key_path: str
    error: str
    serving_previous: bool  # False: this certificate was never loaded, its names get the first certificate


@event_type("email.refused")
class EmailRefused(EventData):
    """An email the listener read that names no halt it could trust (`answer/email.py`): not a
    reply to a halt, a reply address whose token does not verify, a second delivery, a message it
    could not handle. Refused replies to a known halt are `halt.answer_refused` (channel email)."""

    reason: str
    sender: str | None = None       # the From address as written (not authenticated)
    message_id: str | None = None


@event_type("email.disconnected")
class EmailDisconnected(EventData):
    """The email listener's IMAP connection failed or dropped; it reconnects with backoff.
    Recorded once per outage (the log has each attempt)."""

    server: str                     # host:port
    error: str
    retry_in_s: float


@event_type("slack.refused")
class SlackRefused(EventData):
    """A Slack delivery that answered nothing and named no halt it could trust (`answer/slack.py`):
    a request to /slack/interactivity whose signature is forged, stale or altered, a payload that is
    not JSON or misses fields, an action or value this agent never posted. Refused answers to a
    halt (not an owner, already answered) are `halt.answer_refused` (channel slack)."""

    reason: str
    via: str                        # socket (Socket Mode) or http (/slack/interactivity)
    status: int | None = None       # the HTTP status answered (http)
    user: str | None = None         # the Slack user ID the payload names (unverified when refused for its signature)
    envelope_id: str | None = None  # the Socket Mode envelope
    peer: str | None = None         # the client's address (http)


@event_type("slack.disconnected")
class SlackDisconnected(EventData):
    """The Slack Socket Mode connection failed or dropped; the listener reconnects with backoff.
    Recorded once per outage (the log has each attempt)."""

    error: str
    retry_in_s: float


@event_type("webhook.refused")
class WebhookRefused(EventData):
    """A webhook request that was not accepted (`web/webhooks.py`); nothing of it was recorded."""

    source: str                     # which webhook: "alertmanager"
    status: int                     # the HTTP status answered (401, 403, 400, 413, 415, 422, ...)
    reason: str
    token: str | None = None        # the token's name when one was valid (never the token)
    peer: str | None = None         # the client's address


@event_type("local.refused")
class LocalRefused(EventData):
    """A request on the daemon's local socket (`DATA_DIR/agent.sock`, where `fazt-agent approve` and
    `deny` answer through the running daemon, `answer/local.py`) that answered nothing: not JSON,
    too long, not the fields of a request. Refused answers to a halt are `halt.answer_refused`
    (channel cli)."""

    reason: str
    peer_pid: int | None = None     # the connecting process (SO_PEERCRED)
    peer_uid: int | None = None


@event_type("web.login_refused")
class WebLoginRefused(EventData):
    """A refused login on the approvals page (`web/approvals.py`): the page says only "not
    accepted"; the reason here is for the owner. Never the token itself."""

    reason: str
    peer: str | None = None         # the client's address


@event_type("web.refused")
class WebRefused(EventData):
    """A dashboard form that did nothing (`web/dashboard.py`): no session, a missing or wrong CSRF
    token, a scope too narrow, a value it does not accept. Refused halt answers are
    `halt.answer_refused` (channel web)."""

    action: str                     # what was asked: "autonomy high", "rollback blog to release 2"
    reason: str
    by: str | None = None           # the session's token name (None: no session)
    peer: str | None = None         # the client's address


# -- crash safety (issue 10) ------------------------------------------------------------------

@event_type("halt.resumed")
class HaltResumed(EventData):
    """The reconciler took over an approved halt whose execution never started: it runs it
    (re-planned, asked again if the plan changed), or closes it when its incident is over."""

    halt_id: int
    answered_by: str
    outcome: str        # run | closed
    reason: str


@event_type("agent.reconciled")
class AgentReconciled(EventData):
    """What the reconciler found unfinished and completed (at start, always; later, when it did
    something): steps a crash separated from the step they follow."""

    at_start: bool
    decided: list[int] = Field(default_factory=list)          # incidents decided (never decided since due)
    interrupted: list[int] = Field(default_factory=list)      # actions whose owner is gone
    halts_run: list[int] = Field(default_factory=list)        # approved halts run
    halts_closed: list[int] = Field(default_factory=list)     # approved halts whose execution had ended
    asked: list[int] = Field(default_factory=list)            # pending halts whose owner was never asked
    resent: list[int] = Field(default_factory=list)           # notifications abandoned mid-send
    left_to_owners: list[str] = Field(default_factory=list)   # running work of live processes, untouched
