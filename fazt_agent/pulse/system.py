"""`system`: CPU, load, memory, swap and uptime of the host, judged together as one result."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Literal

import psutil
from pydantic import Field

from ..units import format_duration, format_size
from .base import Check, CheckConfig, CheckContext, CheckResult, check, judge, threshold_pair, worst

_cpu_primed = False


class SystemConfig(CheckConfig):
    kind: Literal["system"]
    cpu_critical: float | None = Field(98.0, ge=0, le=100)
    cpu_warning: float | None = Field(90.0, ge=0, le=100)
    memory_critical: float | None = Field(97.0, ge=0, le=100)
    memory_warning: float | None = Field(90.0, ge=0, le=100)
    swap_critical: float | None = Field(95.0, ge=0, le=100)
    swap_warning: float | None = Field(80.0, ge=0, le=100)
    load_per_core_critical: float | None = Field(4.0, ge=0)
    load_per_core_warning: float | None = Field(2.0, ge=0)

    _cpu = threshold_pair("cpu_warning", "cpu_critical")
    _memory = threshold_pair("memory_warning", "memory_critical")
    _swap = threshold_pair("swap_warning", "swap_critical")
    _load = threshold_pair("load_per_core_warning", "load_per_core_critical")


def _sample() -> dict[str, float]:
    global _cpu_primed
    # The first non-blocking call has no baseline and says 0.0: measure over 0.1s once instead.
    cpu = psutil.cpu_percent(interval=None if _cpu_primed else 0.1)
    _cpu_primed = True
    load1, load5, load15 = os.getloadavg()
    cores = psutil.cpu_count() or 1
    memory = psutil.virtual_memory()
    swap = psutil.swap_memory()
    return {
        "cpu_percent": cpu,
        "load1": load1, "load5": load5, "load15": load15,
        "cores": float(cores),
        "load_per_core": load5 / cores,
        "memory_percent": memory.percent,
        "memory_used_bytes": float(memory.total - memory.available),  # what memory_percent counts
        "memory_available_bytes": float(memory.available),
        "memory_total_bytes": float(memory.total),
        "swap_percent": swap.percent,
        "swap_used_bytes": float(swap.used),
        "uptime_seconds": time.time() - psutil.boot_time(),
    }


@check("system")
class SystemCheck(Check):
    """Host-wide resource use. `load_per_core` is the 5-minute load over the logical CPU count."""

    Config = SystemConfig
    config: SystemConfig

    async def collect(self, ctx: CheckContext) -> list[CheckResult]:
        m = await asyncio.to_thread(_sample)
        c = self.config
        parts = [
            (judge(m["cpu_percent"], c.cpu_warning, c.cpu_critical), f"cpu {m['cpu_percent']:.1f}%"),
            (judge(m["memory_percent"], c.memory_warning, c.memory_critical),
             f"memory {m['memory_percent']:.1f}% used ({format_size(m['memory_available_bytes'])} available)"),
            (judge(m["swap_percent"], c.swap_warning, c.swap_critical), f"swap {m['swap_percent']:.1f}% used"),
            (judge(m["load_per_core"], c.load_per_core_warning, c.load_per_core_critical),
             f"load {m['load5']:.2f} on {m['cores']:.0f} cores ({m['load_per_core']:.2f} per core)"),
        ]
        status = worst([s for s, _ in parts])
        if status == "ok":
            message = ", ".join(text for _, text in parts) + f", up {format_duration(m['uptime_seconds'])}"
        else:
            message = "; ".join(text for s, text in parts if s != "ok")
        return [self.result("", status, message, m)]
