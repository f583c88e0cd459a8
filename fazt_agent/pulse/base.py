"""What every check kind shares: the result type, statuses, the config base and the registry.

A kind is a class registered with `@check("name")`; its `Config` is a pydantic model with a
`kind: Literal["name"]` field, so the definition files validate through one discriminated union
and an unknown kind or misspelt key fails at load time with the file and key named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, ClassVar, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from ..clock import Clock
from ..units import Duration

Status = Literal["ok", "warning", "critical", "unknown"]
SEVERITY: dict[str, int] = {"ok": 0, "unknown": 1, "warning": 2, "critical": 3}
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"


def worst(statuses: list[str]) -> Status:
    """The most severe of `statuses` (ok < unknown < warning < critical); ok when empty."""
    return max(statuses, key=SEVERITY.__getitem__, default="ok")  # type: ignore[return-value]


@dataclass(frozen=True)
class CheckResult:
    """What one check saw about one target."""

    check: str
    kind: str
    target: str
    status: Status
    message: str
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    duration_ms: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "kind": self.kind, "target": self.target, "status": self.status,
                "message": self.message, "metrics": self.metrics, "details": self.details,
                "duration_ms": round(self.duration_ms, 3)}


class CheckConfig(BaseModel):
    """Keys every check has. Kinds subclass this and add `kind: Literal[...]` and their own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    interval: Duration | None = None   # default: [pulse] interval
    timeout: Duration | None = None    # default: [pulse] timeout
    enabled: bool = True
    service: str | None = None         # the unit serving what this check watches (for restarts)


def threshold_pair(warning: str, critical: str) -> Any:
    """A validator refusing a `warning` level beyond its `critical` one (higher is worse).

    The critical field must be declared before the warning field so its value is known.
    """

    def _check(cls: Any, value: float | None, info: ValidationInfo) -> float | None:
        limit = info.data.get(critical)
        if value is not None and limit is not None and value > limit:
            raise ValueError(f"warning threshold {value:g} is beyond {critical} {limit:g}")
        return value

    return field_validator(warning)(_check)


def judge(value: float, warning: float | None, critical: float | None) -> Status:
    """ok / warning / critical for a value where higher is worse."""
    if critical is not None and value >= critical:
        return "critical"
    if warning is not None and value >= warning:
        return "warning"
    return "ok"


class History(Protocol):
    """Read access to stored results, for checks that need a trend (disk fill rate)."""

    async def series(self, check: str, target: str, metric: str, since: datetime) -> list[tuple[datetime, float]]:
        ...


@dataclass(frozen=True)
class CheckContext:
    clock: Clock
    history: History | None = None


class Check:
    """A configured check. Subclasses set `Config` and implement `collect`."""

    kind: ClassVar[str]
    Config: ClassVar[type[CheckConfig]]

    def __init__(self, config: CheckConfig):
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    async def collect(self, ctx: CheckContext) -> list[CheckResult]:
        """Measure; return one result per target. Raise CheckError when it cannot measure."""
        raise NotImplementedError

    def result(self, target: str, status: Status, message: str, metrics: dict[str, float] | None = None,
               **details: Any) -> CheckResult:
        return CheckResult(self.name, self.kind, target, status, message, metrics or {}, details)


CHECKS: dict[str, type[Check]] = {}
C = TypeVar("C", bound=type[Check])


def check(kind: str) -> Callable[[C], C]:
    """Register a check kind under `kind` (must match its Config's `kind` literal)."""

    def register(cls: C) -> C:
        if kind in CHECKS:
            raise RuntimeError(f"check kind {kind!r} registered twice")
        cls.kind = kind
        CHECKS[kind] = cls
        return cls

    return register
