"""`disk`: space and inodes of each real filesystem, and when it will be full at its recent rate.

The fill rate is the least-squares slope of `used_bytes` over `fill_window` of stored history
plus the current sample; it needs at least 3 points spanning 10 minutes.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from ..errors import CheckError
from ..units import Duration, format_duration, format_size
from .base import Check, CheckConfig, CheckContext, CheckResult, Status, check, judge, threshold_pair, worst
from .trend import fill_rate, hours_until_full

_SKIP_FSTYPES = {"squashfs", "iso9660", "udf"}  # read-only images (snaps, CDs): always "full"


class DiskConfig(CheckConfig):
    kind: Literal["disk"]
    mounts: list[str] | None = None  # default: every real mounted filesystem
    critical: float | None = Field(95.0, ge=0, le=100)
    warning: float | None = Field(85.0, ge=0, le=100)
    inodes_critical: float | None = Field(95.0, ge=0, le=100)
    inodes_warning: float | None = Field(85.0, ge=0, le=100)
    fill_window: Duration = 6 * 3600.0
    full_in_critical: Duration | None = 4 * 3600.0
    full_in_warning: Duration | None = 24 * 3600.0

    _used = threshold_pair("warning", "critical")
    _inodes = threshold_pair("inodes_warning", "inodes_critical")

    @field_validator("full_in_warning")
    @classmethod
    def _warn_before_critical(cls, value: float | None, info: ValidationInfo) -> float | None:
        limit = info.data.get("full_in_critical")
        if value is not None and limit is not None and value < limit:
            raise ValueError(f"full_in_warning {format_duration(value)} is sooner than full_in_critical "
                             f"{format_duration(limit)}; the warning must come first (a longer time)")
        return value


@dataclass(frozen=True)
class Usage:
    mount: str
    total: int
    used: int
    free: int
    percent: float
    inodes_percent: float | None  # None when the filesystem has no inode count


def real_mounts() -> list[str]:
    """Mount points of real filesystems, one per device (bind mounts and snap loops skipped)."""
    import psutil   # here, not at import: a command that only validates the definitions never loads it

    devices: set[str] = set()
    mounts = []
    for part in sorted(psutil.disk_partitions(all=False), key=lambda p: len(p.mountpoint)):
        if part.fstype in _SKIP_FSTYPES or part.device.startswith("/dev/loop") or part.device in devices:
            continue
        devices.add(part.device)
        mounts.append(part.mountpoint)
    return sorted(mounts)


def measure(mount: str) -> Usage | None:
    """Usage of the filesystem holding `mount`; None when the path does not exist."""
    import psutil

    try:
        usage = psutil.disk_usage(mount)
        st = os.statvfs(mount)
    except FileNotFoundError:
        return None
    inodes = 100 * (st.f_files - st.f_ffree) / st.f_files if st.f_files else None
    return Usage(mount, usage.total, usage.used, usage.free, usage.percent, inodes)


def _judge_soon(seconds: float | None, warning: float | None, critical: float | None) -> Status:
    """ok / warning / critical for a time left, where lower is worse."""
    if seconds is None:
        return "ok"
    if critical is not None and seconds <= critical:
        return "critical"
    if warning is not None and seconds <= warning:
        return "warning"
    return "ok"


def _full_in_text(hours: float) -> str:
    if hours < 1:
        return "full in <1 h"
    return f"full in ~{hours:.0f} h" if hours < 48 else f"full in ~{hours / 24:.0f} d"


@check("disk")
class DiskCheck(Check):
    Config = DiskConfig
    config: DiskConfig

    async def collect(self, ctx: CheckContext) -> list[CheckResult]:
        mounts = self.config.mounts or await asyncio.to_thread(real_mounts)
        if not mounts:
            raise CheckError("no real filesystem is mounted; list the ones to watch in `mounts = [...]`")
        usages = await asyncio.to_thread(lambda: [(m, measure(m)) for m in mounts])
        results = []
        for mount, usage in usages:
            if usage is None:
                results.append(self.result(mount, "unknown", f"path {mount!r} does not exist"))
            else:
                results.append(self._judge(usage, await self._rate(ctx, usage)))
        return results

    async def _rate(self, ctx: CheckContext, usage: Usage) -> float | None:
        """Growth in bytes per hour from history plus the current sample; None without history."""
        if ctx.history is None:
            return None
        now = ctx.clock.now()
        since = now - timedelta(seconds=self.config.fill_window)
        points = await ctx.history.series(self.name, usage.mount, "used_bytes", since=since)
        return fill_rate([*points, (now, float(usage.used))])

    def _judge(self, u: Usage, rate: float | None) -> CheckResult:
        c = self.config
        metrics = {"used_percent": u.percent, "used_bytes": float(u.used), "free_bytes": float(u.free),
                   "total_bytes": float(u.total)}
        message = f"{u.mount} {u.percent:.1f}% used ({format_size(u.free)} free)"
        statuses = [judge(u.percent, c.warning, c.critical)]
        if u.inodes_percent is not None:
            metrics["inodes_used_percent"] = u.inodes_percent
            statuses.append(judge(u.inodes_percent, c.inodes_warning, c.inodes_critical))
            if statuses[-1] != "ok":
                message += f", inodes {u.inodes_percent:.1f}% used"
        if rate is not None:
            metrics["growth_bytes_per_hour"] = rate
        hours = hours_until_full(u.free, rate)
        if hours is not None:
            metrics["full_in_hours"] = hours
            statuses.append(_judge_soon(hours * 3600, c.full_in_warning, c.full_in_critical))
            message += ", " + _full_in_text(hours)
        return self.result(u.mount, worst(statuses), message, metrics)
