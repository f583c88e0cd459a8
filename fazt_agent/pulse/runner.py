"""Running checks: concurrently, each under its own timeout, never breaking the beat.

A check that raises or times out yields one `unknown` result that says why; the other checks
of the beat are not affected.

A problem of a check with `for = N` (N > 1) is then compared with the stored results of the
same check and target: `details.confirm` says how many beats in a row reached its severity and
which status all of the last N beats reached (what an incident may open at), and the message
ends with "(1 of 3 beats)" until the problem is confirmed.

At most `[pulse] max_concurrency` checks run at once, and at most a quarter of them (at least one)
in one lane (an http check's origin), so a server that never answers holds only its lane's slots.
A check's timeout starts when it gets a slot: the queue before it is not the check's time. When
the agent itself could not run a check in time, the result is `unknown` with `details.cause =
"agent_overloaded"` and opens no incident (it says nothing about the target): no slot freed
within the check's timeout, or the event loop stalled for most of the time a check ran whose
problem is about time (its timeout, or what `Check.timed` says: an http latency or no answer),
so the time measured the agent, not the target.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field, replace
from datetime import datetime

from ..errors import CheckError
from ..units import format_duration
from .base import (CONFIRM_KEY, OVERLOADED, SEVERITY, Check, CheckContext, CheckResult, History, Status, overloaded,
                   worst)

log = logging.getLogger(__name__)
MAX_CONCURRENCY = 64    # the default of [pulse] max_concurrency
LANE_SHARE = 4          # one lane may hold 1/LANE_SHARE of the slots
STALL_TICK = 0.05       # how often LoopWatch looks at the clock during a beat
STALL_MIN = 0.1         # a problem is not believed when the loop stalled this long, and half of the check's run


class Slots:
    """Bounded concurrency for one beat: `total` checks at once, `per_lane` of one lane."""

    def __init__(self, total: int = MAX_CONCURRENCY):
        self.total = total
        self.per_lane = max(1, total // LANE_SHARE)
        self._all = asyncio.Semaphore(total)
        self._lanes: dict[str, asyncio.Semaphore] = {}

    async def acquire(self, lane: str | None, patience: float) -> list[asyncio.Semaphore]:
        """Wait for a slot of `lane` (if any), then one of all; give them back with `release`.

        Raises:
            TimeoutError: none freed within `patience` seconds (nothing is held then).
        """
        wanted = [self._all]
        if lane is not None:
            wanted.insert(0, self._lanes.setdefault(lane, asyncio.Semaphore(self.per_lane)))
        held: list[asyncio.Semaphore] = []
        try:
            if all(not s.locked() for s in wanted):  # the usual case: no timer needed
                for s in wanted:
                    await s.acquire()
                    held.append(s)
                return held
            async with asyncio.timeout(patience):
                for s in wanted:
                    await s.acquire()
                    held.append(s)
        except BaseException:
            self.release(held)
            raise
        return held

    @staticmethod
    def release(held: list[asyncio.Semaphore]) -> None:
        for s in reversed(held):
            s.release()


class LoopWatch:
    """Notices when the event loop stalls during a beat (blocked, or the process starved of CPU): a
    task that wakes every STALL_TICK seconds and records how late it woke."""

    def __init__(self) -> None:
        self._stalls: list[tuple[float, float]] = []
        self._due = math.inf   # when the watch should wake next
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-watch")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            self._due = time.monotonic() + STALL_TICK
            await asyncio.sleep(STALL_TICK)
            woke = time.monotonic()
            if woke - self._due > 0.005:
                self._stalls.append((self._due, woke))

    def stalled(self, start: float, end: float) -> float:
        """Seconds the loop stalled between `start` and `end` (time.monotonic), including a stall
        that just ended and the watch has not woken up from yet."""
        spans = [*self._stalls, (self._due, time.monotonic())]
        return sum(max(0.0, min(end, b) - max(start, a)) for a, b in spans)


@dataclass(frozen=True)
class BeatResult:
    """One collection round."""

    ts: datetime
    results: list[CheckResult]
    duration_ms: float
    id: int | None = None
    host: str = ""
    interrupted: bool = False
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def status(self) -> Status:
        return worst([r.status for r in self.results])

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "ts": self.ts.isoformat(), "status": self.status, "host": self.host,
                "duration_ms": round(self.duration_ms, 3),
                "results": [r.to_json() for r in self.results]}


async def run_check(check: Check, ctx: CheckContext, default_timeout: float, slots: Slots | None = None,
                    watch: LoopWatch | None = None) -> list[CheckResult]:
    """Run one check under its timeout; any failure becomes an `unknown` result.

    With `slots`, it first waits for one (at most its timeout; that wait does not count against
    it). With `watch`, a problem found while the loop stalled is not believed (module docstring).
    """
    timeout = check.config.timeout or default_timeout
    held: list[asyncio.Semaphore] = []
    if slots is not None:
        queued = time.monotonic()
        try:
            held = await slots.acquire(check.lane(), timeout)
        except TimeoutError:
            waited = time.monotonic() - queued
            return _with_service(check, [_overloaded(
                check.result(check.target, "unknown", ""), waited_s=round(waited, 3),
                why=f"no check slot was free within {format_duration(waited)} "
                    f"([pulse] max_concurrency = {slots.total}, {slots.per_lane} per server)")], 0.0)
    start = time.perf_counter()
    began = time.monotonic()
    timed_out = False
    try:
        async with asyncio.timeout(timeout):   # not wait_for: no task of its own per check and beat
            results = await check.collect(ctx)
        if not results:
            raise CheckError("the check returned no result")
    except TimeoutError:
        timed_out = True
        results = [check.result(check.target, "unknown", f"timed out after {timeout:g}s")]
    except CheckError as e:
        results = [check.result(check.target, "unknown", str(e))]
    except asyncio.CancelledError:
        raise
    except Exception as e:  # supervisor boundary: one broken check never breaks the beat
        log.warning("check %r failed: %s: %s", check.name, type(e).__name__, e)
        results = [check.result(check.target, "unknown", f"check failed: {type(e).__name__}: {e}")]
    finally:
        Slots.release(held)
    elapsed = (time.perf_counter() - start) * 1000
    timing = [r.status != "ok" and (timed_out or check.timed(r)) for r in results]
    if watch is not None and any(timing):
        ran = time.monotonic() - began
        stalled = watch.stalled(began, began + ran)
        if stalled >= STALL_MIN and stalled >= ran / 2:
            why = (f"its event loop stalled {format_duration(stalled)} of the {format_duration(ran)} "
                   "this check ran")
            results = [_overloaded(r, stalled_s=round(stalled, 3), why=why) if t else r
                       for r, t in zip(results, timing, strict=True)]
    return _with_service(check, results, elapsed)


def _with_service(check: Check, results: list[CheckResult], elapsed_ms: float) -> list[CheckResult]:
    """`results` with the check's duration, and its `service` in details (for restarts)."""
    service = check.config.service
    return [replace(r, duration_ms=elapsed_ms, details={**r.details, "service": service} if service else r.details)
            for r in results]


async def run_checks(checks: list[Check], ctx: CheckContext, default_timeout: float,
                     max_concurrency: int = MAX_CONCURRENCY) -> list[CheckResult]:
    """Run `checks` concurrently, at most `max_concurrency` at once; results come back in the order
    of `checks`, problems of `for = N` checks annotated with how far they are confirmed (see the
    module docstring)."""
    slots, watch = Slots(max_concurrency), LoopWatch()
    if ctx.memo is None:   # one beat: what several checks read (CheckContext.once) is read once
        ctx = replace(ctx, memo={})
    watch.start()
    try:
        groups = await asyncio.gather(*(run_check(c, ctx, default_timeout, slots, watch) for c in checks))
    finally:
        watch.stop()
    late = sum(1 for group in groups for r in group if overloaded(r))
    if late:
        log.warning("%d of %d checks not measured in time: the agent is overloaded (see [pulse] max_concurrency)",
                    late, len(checks))
    return [await confirm(c, r, ctx.history) for c, group in zip(checks, groups, strict=True) for r in group]


def _overloaded(result: CheckResult, *, why: str, **details: float) -> CheckResult:
    """`result` as `unknown` because the agent could not measure in time; what it found, if anything,
    is kept in details.measured (never believed: no incident opens or changes on it)."""
    measured = {"status": result.status, "message": result.message} if result.message else None
    return replace(result, status="unknown", message=f"not measured in time, the agent was overloaded: {why}",
                   details={**result.details, "cause": OVERLOADED, **details,
                            **({"measured": measured} if measured else {})})


async def confirm(check: Check, result: CheckResult, history: History | None) -> CheckResult:
    """`result` with `details.confirm` when its check wants N > 1 beats before an incident opens.

    One indexed query (the last N-1 stored statuses of this check and target), only for results
    that are not ok. Without history the stored beats are unknown: this beat is the first.
    """
    if result.status == "ok" or overloaded(result):
        return result
    needed, at_once = check.confirmation(result)
    if needed <= 1:
        return result
    previous = await history.statuses(result.check, result.target, needed - 1) if history is not None else []
    window = [result.status, *previous]
    level = SEVERITY[result.status]
    beats = next((i for i, s in enumerate(window) if SEVERITY[s] < level), len(window))
    # what every one of the last N beats reached; fewer than N beats stored: nothing confirmed yet
    reached: Status = min(window, key=SEVERITY.__getitem__) if len(window) >= needed else "ok"  # type: ignore
    confirmed = worst([reached, at_once])
    details = {**result.details, CONFIRM_KEY: {"for": needed, "beats": beats, "confirmed": confirmed}}
    message = result.message if beats >= needed else f"{result.message} ({beats} of {needed} beats)"
    return replace(result, message=message, details=details)
