"""Running checks: concurrently, each under its own timeout, never breaking the beat.

A check that raises or times out yields one `unknown` result that says why; the other checks
of the beat are not affected.

A problem of a check with `for = N` (N > 1) is then compared with the stored results of the
same check and target: `details.confirm` says how many beats in a row reached its severity and
which status all of the last N beats reached (what an incident may open at), and the message
ends with "(1 of 3 beats)" until the problem is confirmed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from datetime import datetime

from ..errors import CheckError
from .base import CONFIRM_KEY, SEVERITY, Check, CheckContext, CheckResult, History, Status, worst

log = logging.getLogger(__name__)


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


async def run_check(check: Check, ctx: CheckContext, default_timeout: float) -> list[CheckResult]:
    """Run one check under its timeout; any failure becomes an `unknown` result."""
    timeout = check.config.timeout or default_timeout
    start = time.perf_counter()
    try:
        results = await asyncio.wait_for(check.collect(ctx), timeout)
        if not results:
            raise CheckError("the check returned no result")
    except asyncio.TimeoutError:
        results = [check.result(check.target, "unknown", f"timed out after {timeout:g}s")]
    except CheckError as e:
        results = [check.result(check.target, "unknown", str(e))]
    except asyncio.CancelledError:
        raise
    except Exception as e:  # supervisor boundary: one broken check never breaks the beat
        log.warning("check %r failed: %s: %s", check.name, type(e).__name__, e)
        results = [check.result(check.target, "unknown", f"check failed: {type(e).__name__}: {e}")]
    elapsed = (time.perf_counter() - start) * 1000
    service = check.config.service
    return [replace(r, duration_ms=elapsed, details={**r.details, "service": service} if service else r.details)
            for r in results]


async def run_checks(checks: list[Check], ctx: CheckContext, default_timeout: float) -> list[CheckResult]:
    """Run `checks` concurrently; results come back in the order of `checks`, problems of `for = N`
    checks annotated with how far they are confirmed (see the module docstring)."""
    groups = await asyncio.gather(*(run_check(c, ctx, default_timeout) for c in checks))
    return [await confirm(c, r, ctx.history) for c, group in zip(checks, groups, strict=True) for r in group]


async def confirm(check: Check, result: CheckResult, history: History | None) -> CheckResult:
    """`result` with `details.confirm` when its check wants N > 1 beats before an incident opens.

    One indexed query (the last N-1 stored statuses of this check and target), only for results
    that are not ok. Without history the stored beats are unknown: this beat is the first.
    """
    if result.status == "ok":
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
