"""Running checks: concurrently, each under its own timeout, never breaking the beat.

A check that raises or times out yields one `unknown` result that says why; the other checks
of the beat are not affected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from datetime import datetime

from ..errors import CheckError
from .base import Check, CheckContext, CheckResult, Status, worst

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
        results = [check.result("", "unknown", f"timed out after {timeout:g}s")]
    except CheckError as e:
        results = [check.result("", "unknown", str(e))]
    except asyncio.CancelledError:
        raise
    except Exception as e:  # supervisor boundary: one broken check never breaks the beat
        log.warning("check %r failed: %s: %s", check.name, type(e).__name__, e)
        results = [check.result("", "unknown", f"check failed: {type(e).__name__}: {e}")]
    elapsed = (time.perf_counter() - start) * 1000
    service = check.config.service
    return [replace(r, duration_ms=elapsed, details={**r.details, "service": service} if service else r.details)
            for r in results]


async def run_checks(checks: list[Check], ctx: CheckContext, default_timeout: float) -> list[CheckResult]:
    """Run `checks` concurrently; results come back in the order of `checks`."""
    groups = await asyncio.gather(*(run_check(c, ctx, default_timeout) for c in checks))
    return [r for group in groups for r in group]
