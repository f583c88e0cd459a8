"""The daemon's timetable: a few jobs, each run at a fixed interval on the event loop.

The daemon has three jobs (the beat, housekeeping, retention), each of which only spawns its work
and returns at once (`Daemon.spawn`), so one task per job is the whole scheduler:

- fire times are fixed slots, `first + k * interval`, on the loop's monotonic clock: a job does not
  drift by its own run time, and a step of the wall clock (NTP at boot on a board without an RTC, an
  owner's `date -s`) neither stalls the beats for the size of the step nor fires a burst of them;
- missed slots coalesce: a job late by several intervals (the loop was blocked) runs once, then
  keeps to the next slot still ahead;
- a job that raises is logged and keeps its timetable.

This replaces APScheduler's AsyncIOScheduler (3.11), which the daemon used for exactly this: it
computes fire times from wall-clock datetimes, and importing it scans every installed package's
entry points (importlib.metadata, email, zipfile, csv): ~4.4 MiB of the idle daemon's RSS and
~100 ms of its start-up before /healthz, measured with bench/idle.py and bench/cli_latency.py.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Awaitable, Callable

log = logging.getLogger(__name__)
Job = Callable[[], Awaitable[None]]


class Ticker:
    """Runs jobs at fixed intervals on the running loop until `stop()`."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    def every(self, seconds: float, job: Job, *, name: str, first: float = 0.0) -> None:
        """Run `job` `first` seconds from now, then every `seconds` (slots missed while the loop was
        busy are run once, not once each)."""
        if not seconds > 0 or not math.isfinite(seconds):
            raise ValueError(f"{name}: the interval must be a positive number of seconds, not {seconds!r}")
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._run(loop, seconds, job, loop.time() + max(first, 0.0), name),
                                            name=f"ticker:{name}"))

    @staticmethod
    async def _run(loop: asyncio.AbstractEventLoop, seconds: float, job: Job, start: float, name: str) -> None:
        due = start
        while True:
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:  # supervisor boundary: the job's next slot still comes
                log.exception("%s failed", name)
            # the next slot ahead of now: late runs coalesce into one
            due = start + (math.floor((loop.time() - start) / seconds) + 1) * seconds

    def stop(self) -> None:
        """Cancel every job's timetable (a job's spawned work is not touched: the daemon drains it)."""
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
