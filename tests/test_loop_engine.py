"""Time-dependent parts of the loop, driven in-process with a fake clock: halt expiry and
reminders, verification that an action helped, cooldowns; and the gate's property."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _helpers import FakeClock, fill, turn, types
from conftest import Ops, next_local
from fazt_agent.clock import parse_iso
from fazt_agent.config import load_config
from fazt_agent.engine import Engine
from fazt_agent.kernel.base import Plan
from fazt_agent.policy.evaluate import PERMISSIVE, History, ceiling, judge
from fazt_agent.policy.model import Defaults, Match, Rule, Schedule, Verdicts
from fazt_agent.runtime import Runtime


@pytest.fixture
def clock() -> FakeClock:
    """From the real now; a test that needs a weekday or an hour moves it there, and the files a
    test ages are aged by it (`fill(..., clock=clock)`: the clock the cleanup reads)."""
    return FakeClock()


@pytest.fixture
async def engine(ops: Ops, clock: FakeClock, junk: Path) -> AsyncIterator[Engine]:
    rt = await Runtime.open(load_config(ops.config), clock=clock)
    yield Engine(rt)
    await rt.close()


async def test_an_unanswered_halt_is_reminded_then_expires_to_deny(engine: Engine, clock: FakeClock, junk: Path,
                                                                   ops: Ops) -> None:
    (ops.dir / "kernel" / "actions.toml").write_text('[cleanup]\ndestructive_above = "16KB"\n')
    await engine.reload_policy()
    await engine.set_autonomy("medium", by="test")
    fill(junk, 10, clock=clock)
    await turn(engine)
    [halt] = await engine.executor.halts.list(status="pending")
    clock.advance(20 * 3600)  # the reminder goes out at 80 % of the 24 h
    await engine.sweep()
    assert [h["halt_id"] for h in await types(engine, "halt.reminded")] == [halt.id]
    await engine.sweep()
    assert len(await types(engine, "halt.reminded")) == 1  # once
    clock.advance(4 * 3600 + 1)
    await engine.sweep()
    assert await types(engine, "halt.expired") == [{"halt_id": halt.id, "default": "deny"}]
    assert len(list(junk.iterdir())) == 10
    expired = await engine.executor.halts.get(halt.id)
    assert expired.status == "expired" and expired.answer == "deny" and expired.answered_by == "timeout"
    titles = [n["title"] for n in await engine.executor.notifications.pending()] or \
             [e["title"] for e in await types(engine, "notification.sent")]
    assert any("reminder" in t for t in titles) and any("expired" in t for t in titles)


async def test_a_policy_snooze_option_puts_the_question_off_and_asks_again_later(
        engine: Engine, clock: FakeClock, junk: Path, ops: Ops) -> None:
    (ops.dir / "kernel" / "actions.toml").write_text('[cleanup]\ndestructive_above = "16KB"\n')
    policy = ops.dir / "policies" / "default.toml"
    text, n = re.subn(r'(?m)^halt_options = .*$', 'halt_options = ["approve", "deny", "snooze-4h"]', policy.read_text())
    assert n == 1
    policy.write_text(text)
    await engine.reload_policy()
    await engine.set_autonomy("medium", by="test")
    fill(junk, 10, clock=clock)
    await turn(engine)
    [halt] = await engine.executor.halts.list(status="pending")
    assert halt.options == ["approve", "deny", "snooze-4h"] and "snooze-4h" in halt.body
    result = await engine.executor.answer(halt.id, "snooze-4h", by="cli")
    asked_again = parse_iso(result["ask_again_at"])
    assert result["executed"] is False and abs((asked_again - clock.now()).total_seconds() - 4 * 3600) < 1
    clock.advance(3 * 3600)
    await turn(engine)
    assert await engine.executor.halts.list(status="pending") == []   # not before its time
    clock.advance(3600 + 1)
    await turn(engine)
    [again] = await engine.executor.halts.list(status="pending")
    assert again.id != halt.id and again.incident_id == halt.incident_id
    assert len(list(junk.iterdir())) == 10   # nothing was done without an answer


async def test_an_action_that_did_not_help_is_reported_once(engine: Engine, clock: FakeClock, junk: Path) -> None:
    await engine.set_autonomy("medium", by="test")
    fill(junk, 3, clock=clock)
    fill(junk, 10, clock=clock, age_days=0, prefix="fresh")  # too young to clean: the directory stays too big
    await turn(engine)
    assert len(await types(engine, "action.succeeded")) == 1
    clock.advance(60)
    await turn(engine)
    assert await types(engine, "action.ineffective") == []  # not yet: verify_after is 3 minutes
    clock.advance(180)
    await turn(engine)
    assert len(await types(engine, "action.ineffective")) == 1
    decisions = await types(engine, "decision.made")
    assert [d["trigger"] for d in decisions] == ["opened", "action_ineffective"]
    assert decisions[-1]["verdict"] == "notify" and "did not resolve it" in decisions[-1]["reason"]
    for _ in range(3):
        clock.advance(3600)
        await turn(engine)
    assert len(await types(engine, "decision.made")) == 2
    assert len(await types(engine, "action.started")) == 1


async def test_a_recurring_problem_waits_for_the_cooldown_then_acts_again(engine: Engine, clock: FakeClock,
                                                                         junk: Path) -> None:
    await engine.set_autonomy("medium", by="test")
    fill(junk, 6, clock=clock)
    await turn(engine)
    clock.advance(60)
    await turn(engine)
    assert len(await types(engine, "incident.resolved")) == 1
    fill(junk, 6, clock=clock, prefix="again")
    clock.advance(60)
    await turn(engine)
    held = (await types(engine, "decision.made"))[-1]
    assert held["verdict"] == "notify" and "cooldown" in held["reason"]
    assert len(list(junk.iterdir())) == 6
    clock.advance(3600)
    await turn(engine)
    assert (await types(engine, "decision.made"))[-1]["trigger"] == "retry"
    assert len(list(junk.iterdir())) == 0
    assert len(await types(engine, "action.succeeded")) == 2


async def test_a_policy_edit_is_reloaded_and_a_broken_one_refused(engine: Engine, ops: Ops) -> None:
    before = engine.policy.version
    (ops.dir / "policies" / "extra.toml").write_text('[[rules]]\nname = "x"\naction = "notify"\nverdicts = "act"\n')
    assert await engine.reload_policy() is False
    [rejected] = await types(engine, "policy.rejected")
    assert "extra.toml:rules[0].verdicts" in rejected["issues"][0] and rejected["kept_version"] == before
    assert engine.policy.version == before
    (ops.dir / "policies" / "extra.toml").write_text('[[rules]]\nname = "x"\naction = "notify"\nargs = { message = "hi" }\n')
    assert await engine.reload_policy() is True
    assert engine.policy.rule("x") is not None and engine.policy.version != before
    assert len(await types(engine, "policy.reloaded")) == 1


async def test_a_policy_reload_leaves_the_loop_free_while_git_answers(engine: Engine, ops: Ops, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The policy's version asks git; a slow git (a big repository, a cold disk) must not stop the
    daemon's loop, which also runs the beats and serves the control plane."""
    import asyncio
    import os
    import shutil

    slow = tmp_path / "slow-bin"
    slow.mkdir()
    (slow / "git").write_text(f"#!/bin/sh\nsleep 0.4\nexec {shutil.which('git')} \"$@\"\n")
    (slow / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{slow}{os.pathsep}{os.environ['PATH']}")
    (ops.dir / "policies" / "extra.toml").write_text('[[rules]]\nname = "x"\naction = "notify"\nargs = { message = "hi" }\n')
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        assert await engine.reload_policy() is True
    finally:
        ticker.cancel()
    assert engine.policy.rule("x") is not None
    assert ticks >= 10   # git took at least 0.4 s, during which the loop kept turning (0 when it blocked)


async def test_maintenance_window_holds_actions_silently(engine: Engine, clock: FakeClock, junk: Path, ops: Ops) -> None:
    default = ops.dir / "policies" / "default.toml"
    default.write_text(default.read_text().replace('timezone = "UTC"', 'timezone = "Europe/Berlin"')
                       .replace("maintenance = []", 'maintenance = ["mon 12:00-14:00"]'))
    await engine.reload_policy()
    await engine.set_autonomy("medium", by="test")
    clock.advance_to(next_local(clock.now(), 0, 13, "Europe/Berlin"))  # a Monday, 13:00 in Berlin
    fill(junk, 5, clock=clock)
    await turn(engine)  # inside the window
    [decision] = await types(engine, "decision.made")
    assert decision["verdict"] == "notify" and "maintenance window" in decision["reason"]
    assert len(list(junk.iterdir())) == 5
    assert await types(engine, "notification.sent") == []
    clock.advance(3600)
    await turn(engine)  # 14:00 in Berlin, the window is over: decided again, and the cleanup runs
    assert len(list(junk.iterdir())) == 0


LEVELS = st.sampled_from(["low", "medium", "high"])
PLANS = st.builds(lambda risk, reversible, deletes, noop: Plan("x", {}, "p", risk=risk, reversible=reversible,
                                                                deletes=deletes, noop=noop),
                  st.sampled_from(["safe", "destructive", "costly"]), st.booleans(), st.booleans(), st.booleans())
VERDICT = st.none() | st.sampled_from(["act", "ask", "notify", "deny"])
RULES = st.none() | st.builds(lambda lo, me, hi, cooldown: Rule(name="r", match=Match(), action="cleanup",
                                                                 verdicts=Verdicts(low=lo, medium=me, high=hi),
                                                                 cooldown=cooldown),
                              VERDICT, VERDICT, VERDICT, st.none() | st.floats(0, 7200))
SCHEDULES = st.sampled_from([Schedule(), Schedule(quiet_hours=["00:00-23:59"]), Schedule(maintenance=["mon 00:00-23:59"])])


@settings(max_examples=500, deadline=None)
@given(rule=RULES, plan=PLANS, level=LEVELS, schedule=SCHEDULES, minutes_since=st.none() | st.floats(0, 600),
       count=st.integers(0, 10), day=st.integers(0, 6), hour=st.integers(0, 23))
def test_no_plan_above_the_levels_allowed_risk_is_ever_act(rule, plan, level, schedule, minutes_since, count,
                                                           day, hour) -> None:
    # judge() is pure and everything it sees is dated from `now`: a fixed week is fine here
    now = datetime(2026, 11, 2, hour, tzinfo=timezone.utc) + timedelta(days=day)  # Monday 2 November + day
    history = History(last_action_at=None if minutes_since is None else now - timedelta(minutes=minutes_since),
                      actions_in_window=count)
    verdict = judge(rule, plan, level, history, now, schedule, Defaults()).verdict
    top, _ = ceiling(level, plan)
    assert PERMISSIVE[verdict] <= PERMISSIVE[top]
    if verdict == "act":
        assert level != "low"
        assert plan.risk == "safe" or level == "high"
        assert plan.risk != "costly" and not (plan.deletes and plan.risk != "safe")
        assert not plan.noop


async def test_an_incident_of_a_check_removed_from_the_config_is_resolved_at_start(ops: Ops, clock: FakeClock,
                                                                                   junk: Path) -> None:
    fill(junk, 10, clock=clock)
    rt = await Runtime.open(load_config(ops.config), clock=clock)
    try:
        await turn(Engine(rt))
    finally:
        await rt.close()
    ops.write_pulse("other", f'[[checks]]\nname = "other"\nkind = "dir_size"\npath = "{junk}"\n')  # "junk" is gone
    rt = await Runtime.open(load_config(ops.config), clock=clock)
    try:
        engine = Engine(rt)
        await engine.reconcile()
        [incident] = await engine.incidents.list()
        assert incident.status == "resolved" and "no longer configured" in incident.message
        assert len(await types(engine, "incident.resolved")) == 1
    finally:
        await rt.close()
