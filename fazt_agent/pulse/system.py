"""`system`: CPU, load, memory, swap and uptime of the host, judged together as one result.

CPU use is the average since the previous beat, from the kernel's CPU time counters: no beat
sleeps to measure it. The previous counters are kept in memory (the daemon) and stored with each
result (`details.cpu_sample`), so a one-off `fazt-agent beat` measures since the last stored beat.
Without a usable earlier sample (none, older than 10 intervals, from before a reboot, or too
recent to measure) the 1-minute load per core stands in, and the details and message say so.

CPU and load are noisy: by default a problem they alone cause needs 3 beats in a row before an
incident opens (`for`); memory and swap problems open one at once.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from ..units import format_duration, format_size
from .base import Check, CheckConfig, CheckContext, CheckResult, Status, check, judge, threshold_pair, worst

NOISY_FOR = 3           # default `for` when CPU or load alone make the status
STALE_INTERVALS = 10    # an earlier sample older than this many intervals is not "since the last beat"
MIN_WINDOW = 0.2        # seconds: a shorter window measures nothing useful (10 ms counter ticks)


@dataclass(frozen=True)
class CpuSample:
    """The kernel's CPU time counters (seconds, all CPUs, since boot) at one moment."""

    busy: float
    total: float
    boot: float   # boot time: counters from before a reboot cannot be subtracted
    at: float     # wall-clock time of the sample

    def to_json(self) -> dict[str, float]:
        return {"busy": self.busy, "total": self.total, "boot": self.boot, "at": self.at}

    @classmethod
    def from_json(cls, data: Any) -> CpuSample | None:
        try:
            return cls(float(data["busy"]), float(data["total"]), float(data["boot"]), float(data["at"]))
        except (KeyError, TypeError, ValueError):
            return None


# The previous sample of each system check, in this process (the daemon measures beat to beat).
_previous: dict[str, CpuSample] = {}


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


def cpu_sample() -> CpuSample:
    """Busy and total CPU time as psutil's `cpu_percent` counts them (idle and iowait are not busy;
    guest time is already inside user time on Linux)."""
    import psutil   # here, not at import: a command that only validates the definitions never loads it

    t = psutil.cpu_times()
    total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
    busy = total - t.idle - getattr(t, "iowait", 0.0)
    return CpuSample(busy, total, psutil.boot_time(), time.time())


def cpu_since(previous: CpuSample | None, now: CpuSample, max_age: float, load1: float,
              cores: int) -> tuple[float, dict[str, Any], CpuSample]:
    """CPU percent between `previous` and `now`, how it was measured (for the details), and the
    sample the next beat should measure from.

    Falls back to the 1-minute load per core (capped at 100 %) when `previous` is missing, older
    than `max_age`, from before a reboot or too close to `now` (then it stays the baseline)."""
    estimate = min(100.0, 100.0 * load1 / max(cores, 1))
    age = now.at - previous.at if previous is not None else 0.0
    if previous is None:
        why = "no earlier sample"
    elif abs(previous.boot - now.boot) > 2 or now.total < previous.total or now.busy < previous.busy:
        why = "the earlier sample is from before a reboot"
    elif age < 0:
        why = "the clock went back since the earlier sample"
    elif age > max_age:
        why = f"the earlier sample is {format_duration(age)} old"
    elif age < MIN_WINDOW or now.total <= previous.total:
        note = "the earlier sample is too recent to measure from; it stays the baseline"
        return estimate, {"cpu_source": "load estimate", "cpu_note": note}, previous
    else:
        percent = 100.0 * (now.busy - previous.busy) / (now.total - previous.total)
        return max(0.0, min(100.0, percent)), {"cpu_source": "since the last beat", "cpu_window_s": round(age, 3)}, now
    return estimate, {"cpu_source": "load estimate", "cpu_note": why}, now


def _sample() -> dict[str, float]:
    import psutil

    load1, load5, load15 = os.getloadavg()
    cores = psutil.cpu_count() or 1
    memory = psutil.virtual_memory()
    swap = psutil.swap_memory()
    return {
        "load1": load1, "load5": load5, "load15": load15,
        "cores": float(cores),
        "load_per_core": load5 / cores,
        "memory_percent": memory.percent,
        "memory_used_bytes": float(memory.total - memory.available),  # what memory_percent counts
        "memory_available_bytes": float(memory.available),
        "memory_total_bytes": float(memory.total),
        "swap_percent": swap.percent,
        "swap_used_bytes": float(swap.used),
        "uptime_seconds": time.clock_gettime(time.CLOCK_BOOTTIME),  # the kernel's uptime, whatever the date
    }


@check("system")
class SystemCheck(Check):
    """Host-wide resource use. `load_per_core` is the 5-minute load over the logical CPU count."""

    Config = SystemConfig
    config: SystemConfig

    async def collect(self, ctx: CheckContext) -> list[CheckResult]:
        m, now = await asyncio.to_thread(lambda: (_sample(), cpu_sample()))
        previous = _previous.get(self.name) or await self._stored_sample(ctx)
        max_age = STALE_INTERVALS * (self.config.interval or ctx.interval)
        cpu, how, baseline = cpu_since(previous, now, max_age, m["load1"], int(m["cores"]))
        _previous[self.name] = baseline
        m = {"cpu_percent": cpu, **m}
        cpu_text = f"cpu {cpu:.1f}%" if how["cpu_source"] != "load estimate" else f"cpu ~{cpu:.0f}% (from load)"
        parts = self._parts(m)
        texts = [cpu_text,
                 f"memory {m['memory_percent']:.1f}% used ({format_size(m['memory_available_bytes'])} available)",
                 f"swap {m['swap_percent']:.1f}% used",
                 f"load {m['load5']:.2f} on {m['cores']:.0f} cores ({m['load_per_core']:.2f} per core)"]
        status = worst(list(parts.values()))
        if status == "ok":
            message = ", ".join(texts) + f", up {format_duration(m['uptime_seconds'])}"
        else:
            message = "; ".join(text for s, text in zip(parts.values(), texts, strict=True) if s != "ok")
        return [self.result("", status, message, m, **how, cpu_sample=baseline.to_json())]

    def _parts(self, m: dict[str, float]) -> dict[str, Status]:
        """The status of each judged metric, in message order."""
        c = self.config
        return {"cpu": judge(m["cpu_percent"], c.cpu_warning, c.cpu_critical),
                "memory": judge(m["memory_percent"], c.memory_warning, c.memory_critical),
                "swap": judge(m["swap_percent"], c.swap_warning, c.swap_critical),
                "load": judge(m["load_per_core"], c.load_per_core_warning, c.load_per_core_critical)}

    async def _stored_sample(self, ctx: CheckContext) -> CpuSample | None:
        """The counters stored with this check's last result (a new process: `fazt-agent beat`)."""
        if ctx.history is None:
            return None
        last = await ctx.history.last_result(self.name, "")
        return CpuSample.from_json(last[1].details.get("cpu_sample")) if last else None

    def confirmation(self, result: CheckResult) -> tuple[int, Status]:
        """`for` when the config sets it; else 3 beats when CPU or load alone make the status (one
        busy moment is not a problem), while memory and swap problems count at once."""
        if self.config.for_ is not None or "cpu_percent" not in result.metrics:
            return self.config.for_ or 1, "ok"
        parts = self._parts(result.metrics)
        steady = worst([parts["memory"], parts["swap"]])
        return (1 if steady == result.status else NOISY_FOR), steady
