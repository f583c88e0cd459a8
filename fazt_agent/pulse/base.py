"""What every check kind shares: the result type, statuses, the config base and the registry.

A kind is a class registered with `@check("name")`; its `Config` is a pydantic model with a
`kind: Literal["name"]` field, so the definition files validate through one discriminated union
and an unknown kind or misspelt key fails at load time with the file and key named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Awaitable, Callable, ClassVar, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from ..clock import Clock
from ..units import Duration, format_value

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
    """Keys every check has. Kinds subclass this and add `kind: Literal[...]` and their own.

    `for = N` (Monit's "for N cycles"): a problem opens an incident only after N beats in a row at
    that severity or worse; until then the result says "(2 of 3 beats)" and nothing is sent. The
    default is 1, except where a kind says otherwise (`system`: 3 when CPU or load alone is over
    its threshold). Flap control: when `flap_count` incidents of one check and target open within
    `flap_window`, the last is held open as flapping (reported once) until `flap_ok` ok beats in
    a row; `flap_count = 0` turns it off.
    """

    # defer_build: a kind's validator is built when a table of that kind is first validated
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    name: str = Field(pattern=NAME_PATTERN)
    interval: Duration | None = None   # default: [pulse] interval
    timeout: Duration | None = None    # default: [pulse] timeout
    enabled: bool = True
    service: str | None = None         # the unit serving what this check watches (for restarts)
    for_: int | None = Field(None, alias="for", ge=1, le=1000)  # default: 1, or the kind's (`Check.confirmation`)
    flap_count: int = Field(3, ge=0, le=1000)
    flap_window: Duration = 3600.0
    flap_ok: int = Field(5, ge=1, le=1000)

    @field_validator("flap_count")
    @classmethod
    def _flap_count(cls, value: int) -> int:
        if value == 1:
            raise ValueError("1 would call every incident flapping: use 2 or more, or 0 to turn flap control off")
        return value


def threshold_pair(warning: str, critical: str) -> Any:
    """A validator refusing a `warning` level beyond its `critical` one (higher is worse).

    The critical field must be declared before the warning field so its value is known.
    """

    def _check(cls: Any, value: float | None, info: ValidationInfo) -> float | None:
        limit = info.data.get(critical)
        if value is not None and limit is not None and value > limit:
            kind = cls.model_fields[warning].annotation  # a Size or Duration reads in its unit
            raise ValueError(f"warning threshold {format_value(value, kind)} is beyond {critical} "
                             f"{format_value(limit, kind)}")
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
    """Read access to stored results: trends (disk fill rate), the previous result (the CPU
    counters of the last beat) and recent statuses (confirmation of a problem over N beats)."""

    async def series(self, check: str, target: str, metric: str, since: datetime) -> list[tuple[datetime, float]]:
        ...

    async def last_result(self, check: str, target: str) -> tuple[datetime, CheckResult] | None:
        ...

    async def statuses(self, check: str, target: str, limit: int) -> list[str]:
        ...


T = TypeVar("T")


class Shared:
    """What the checks of one Pulse share across checks and beats (the HTTP connection pool): a kind
    makes its own at first use under a key; the Pulse's `aclose()` closes them (daemon stop, the
    end of a CLI beat)."""

    def __init__(self) -> None:
        self._items: dict[str, Any] = {}

    def get(self, key: str, make: Callable[[], T]) -> T:
        item = self._items.get(key)
        if item is None:
            item = self._items[key] = make()
        return item  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        items, self._items = list(self._items.values()), {}
        for item in items:
            await item.aclose()


@dataclass(frozen=True)
class CheckContext:
    clock: Clock
    history: History | None = None
    interval: float = 60.0   # the [pulse] interval, for checks whose config does not set their own
    shared: Shared | None = None   # None: a check run on its own makes what it needs and closes it
    memo: dict[str, Any] | None = None   # what the checks of one beat read once (`once`); None: no sharing

    def once(self, key: str, make: Callable[[], Awaitable[T]]) -> Awaitable[T]:
        """What every check of this beat asking `key` shares (the process table, the apps plane's
        listing): made by the first to ask, so N checks cost one read and not N; a check that
        times out stops waiting without cancelling it for the others."""
        import asyncio

        if self.memo is None:
            return make()
        task = self.memo.get(key)
        if task is None:
            task = self.memo[key] = asyncio.ensure_future(make())
        return asyncio.shield(task)


OVERLOADED = "agent_overloaded"   # details.cause of a result the agent could not measure in time


def overloaded(result: CheckResult) -> bool:
    """Whether `result` says the agent itself could not run its check in time (its event loop
    stalled, or no concurrency slot freed): no news about the target, so no incident changes."""
    return result.details.get("cause") == OVERLOADED


CONFIRM_KEY = "confirm"


def confirmed_status(result: CheckResult) -> Status:
    """The status an incident may take from `result`: its own, unless a `for = N` check has not
    seen it for N beats yet (then the worst status all of the last N beats reached, often ok)."""
    confirm = result.details.get(CONFIRM_KEY)
    if isinstance(confirm, dict) and confirm.get("confirmed") in SEVERITY:
        return confirm["confirmed"]  # type: ignore[no-any-return]
    return result.status


def pending(result: CheckResult) -> tuple[int, int] | None:
    """(beats so far, beats needed) for a problem its check's `for` has not confirmed yet, else None."""
    confirm = result.details.get(CONFIRM_KEY)
    if result.status == "ok" or not isinstance(confirm, dict):
        return None
    beats, needed = int(confirm.get("beats", 0)), int(confirm.get("for", 1))
    return (beats, needed) if beats < needed else None


class Check:
    """A configured check. Subclasses set `Config` and implement `collect`."""

    kind: ClassVar[str]
    Config: ClassVar[type[CheckConfig]]

    def __init__(self, config: CheckConfig):
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def target(self) -> str:
        """What a check of one target measures (a path, a URL): the target of its `unknown` result
        when it cannot measure, so that incident is the same one its measurements open and resolve.
        "" for kinds that report several targets (disk) or none (system)."""
        return ""

    def confirmation(self, result: CheckResult) -> tuple[int, Status]:
        """How many beats in a row `result`'s status needs before an incident opens, and the status
        it may open at without waiting (a kind whose metrics differ in noise overrides this)."""
        return self.config.for_ or 1, "ok"

    def timed(self, result: CheckResult) -> bool:
        """Whether `result`'s problem rests on how long something took (no answer in time, slower
        than a latency threshold): not believed when the agent's event loop stalled meanwhile."""
        return False

    def lane(self) -> str | None:
        """Checks of one lane (an http check's origin) take at most a share of `[pulse]
        max_concurrency`, so one target that never answers cannot hold every slot. None: no lane."""
        return None

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
