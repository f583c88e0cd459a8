"""The daemon's timetable (`_ticker.py`): fixed slots on the loop's clock, late slots coalesced,
a failing job kept on its timetable, and a stop that ends every timetable."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from fazt_agent._ticker import Ticker


async def test_slots_missed_while_the_loop_was_blocked_run_once() -> None:
    loop = asyncio.get_running_loop()
    runs: list[float] = []
    unblocked: list[float] = []

    async def job() -> None:
        runs.append(loop.time())
        if len(runs) == 1:
            time.sleep(0.45)   # blocks the loop over four slots
            unblocked.append(loop.time())

    ticker = Ticker()
    ticker.every(0.1, job, name="test")
    await asyncio.sleep(0.8)
    ticker.stop()
    late = [t for t in runs[1:] if t < unblocked[0] + 0.03]
    assert len(late) <= 1, runs            # one run for the missed slots, not four
    assert 3 <= len(runs) <= 6, runs       # and the timetable goes on


async def test_slots_do_not_drift_with_the_jobs_run_time() -> None:
    loop = asyncio.get_running_loop()
    runs: list[float] = []

    async def job() -> None:
        runs.append(loop.time())
        await asyncio.sleep(0.03)   # a job that takes a third of its interval

    start = loop.time()
    ticker = Ticker()
    ticker.every(0.1, job, name="test", first=0.05)
    await asyncio.sleep(1.02)
    ticker.stop()
    # drifting by the run time, ten slots would have taken 1.3 s: fewer than eight runs
    assert len(runs) >= 9, [round(t - start, 3) for t in runs]
    assert runs[0] - start >= 0.05


async def test_a_failing_job_keeps_its_timetable(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    async def job() -> None:
        calls.append(1)
        raise RuntimeError("boom")

    ticker = Ticker()
    with caplog.at_level(logging.ERROR, logger="fazt_agent._ticker"):
        ticker.every(0.05, job, name="flaky")
        await asyncio.sleep(0.4)
        ticker.stop()
    assert len(calls) >= 3
    assert "flaky failed" in caplog.text and "boom" in caplog.text


async def test_stop_ends_every_timetable() -> None:
    calls: list[str] = []

    async def job(name: str) -> None:
        calls.append(name)

    ticker = Ticker()
    ticker.every(0.05, lambda: job("a"), name="a")
    ticker.every(0.05, lambda: job("b"), name="b")
    await asyncio.sleep(0.2)
    ticker.stop()
    seen = len(calls)
    await asyncio.sleep(0.2)
    assert len(calls) == seen and {"a", "b"} <= set(calls)


async def test_an_interval_must_be_positive() -> None:
    async def job() -> None:
        pass

    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive"):
            Ticker().every(bad, job, name="x")
