"""`process`: is a program running, how many of it, and how much CPU and memory it takes.

`cpu_percent` is summed over the matching processes and measured since the previous beat
(the first beat after start says 0).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Literal

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


class Table:
    """The process table of one beat: names and command lines read in one pass, and each process's
    memory and CPU read once, by the first check it matches. Every `process` check of a beat reads
    this one table (CheckContext.once): 500 checks cost one pass, not 500; and two checks matching
    the same process both see its CPU (psutil's `cpu_percent` measures since its previous call on
    that process, so a second call in the same beat would see almost nothing)."""

    def __init__(self) -> None:
        import psutil   # here, not at import: a command that only validates the definitions never loads it

        self._psutil = psutil
        self.processes = [(p, p.info["name"], " ".join(p.info["cmdline"] or ()))
                          for p in psutil.process_iter(["name", "cmdline"])]
        self._usage: dict[int, tuple[int, float] | None] = {}
        self._lock = threading.Lock()   # checks read it from worker threads

    def find(self, process: str, match: Literal["name", "cmdline"]) -> tuple[int, float, int]:
        """Count, summed cpu percent and summed rss bytes of the matching processes."""
        count, cpu, rss = 0, 0.0, 0
        for p, name, cmdline in self.processes:
            if not (name == process if match == "name" else process in cmdline):
                continue
            usage = self._usage_of(p)
            if usage is None:
                continue  # exited meanwhile, or not ours to inspect
            count, cpu, rss = count + 1, cpu + usage[1], rss + usage[0]
        return count, cpu, rss

    def _usage_of(self, p: Any) -> tuple[int, float] | None:
        with self._lock:
            if p.pid not in self._usage:
                try:
                    with p.oneshot():
                        self._usage[p.pid] = (p.memory_info().rss, p.cpu_percent(interval=None))
                except (self._psutil.NoSuchProcess, self._psutil.AccessDenied):
                    self._usage[p.pid] = None
            return self._usage[p.pid]


@check("process")
class ProcessCheck(Check):
    Config = ProcessConfig
    config: ProcessConfig

    @property
    def target(self) -> str:
        return self.config.process

    async def collect(self, ctx: CheckContext) -> list[CheckResult]:
        c = self.config
        table = await ctx.once("process.table", lambda: asyncio.to_thread(Table))
        count, cpu, rss = await asyncio.to_thread(table.find, c.process, c.match)
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
