"""`process`: is a program running, how many of it, and how much CPU and memory it takes.

`cpu_percent` is summed over the matching processes and measured since the previous beat
(the first beat after start says 0).
"""

from __future__ import annotations

import asyncio
from typing import Literal

from pydantic import Field

from ..units import Size, format_size
from .base import Check, CheckConfig, CheckContext, CheckResult, check, judge, threshold_pair, worst


class ProcessConfig(CheckConfig):
    kind: Literal["process"]
    process: str = Field(min_length=1)
    match: Literal["name", "cmdline"] = "name"  # exact process name, or a substring of the command line
    min_count: int = Field(1, ge=1)
    rss_critical: Size | None = None
    rss_warning: Size | None = None
    cpu_critical: float | None = Field(None, ge=0)
    cpu_warning: float | None = Field(None, ge=0)

    _rss = threshold_pair("rss_warning", "rss_critical")
    _cpu = threshold_pair("cpu_warning", "cpu_critical")


def find(process: str, match: Literal["name", "cmdline"]) -> tuple[int, float, int]:
    """Count, summed cpu percent and summed rss bytes of the matching processes."""
    import psutil   # here, not at import: a command that only validates the definitions never loads it

    count, cpu, rss = 0, 0.0, 0
    for p in psutil.process_iter(["name", "cmdline"]):
        if match == "name":
            hit = p.info["name"] == process
        else:
            hit = process in " ".join(p.info["cmdline"] or ())
        if not hit:
            continue
        try:
            with p.oneshot():
                rss_now, cpu_now = p.memory_info().rss, p.cpu_percent(interval=None)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue  # exited meanwhile, or not ours to inspect
        count, cpu, rss = count + 1, cpu + cpu_now, rss + rss_now
    return count, cpu, rss


@check("process")
class ProcessCheck(Check):
    Config = ProcessConfig
    config: ProcessConfig

    @property
    def target(self) -> str:
        return self.config.process

    async def collect(self, ctx: CheckContext) -> list[CheckResult]:
        c = self.config
        count, cpu, rss = await asyncio.to_thread(find, c.process, c.match)
        metrics = {"count": float(count), "cpu_percent": cpu, "rss_bytes": float(rss)}
        if count == 0:
            return [self.result(c.process, "critical", f"{c.process} is not running", metrics)]
        if count < c.min_count:
            message = f"{c.process}: {count} running, expected at least {c.min_count}"
            return [self.result(c.process, "critical", message, metrics)]
        status = worst([judge(rss, c.rss_warning, c.rss_critical), judge(cpu, c.cpu_warning, c.cpu_critical)])
        noun = "process" if count == 1 else "processes"
        message = f"{c.process}: {count} {noun}, cpu {cpu:.1f}%, rss {format_size(rss)}"
        return [self.result(c.process, status, message, metrics)]
