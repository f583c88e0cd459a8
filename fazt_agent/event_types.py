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
    model_config = ConfigDict(extra="forbid")


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
