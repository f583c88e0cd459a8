"""Halts in a real SQLite store: created, answered exactly once, expired, reminded, claimed."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import AsyncIterator

import pytest

from _helpers import FakeClock, logged
from fazt_agent.events import EventLog
from fazt_agent.halt import Halt, HaltError, HaltStore
from fazt_agent.kernel.base import Plan
from fazt_agent.store import Store

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
PLAN = Plan(action="cleanup", args={"path": "/srv/tmp"}, summary="delete 42 files (1.2 GiB) under /srv/tmp",
            steps=["rm /srv/tmp/a"], risk="destructive", reversible=False, deletes=True)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0, mono=None)


@pytest.fixture
async def halts(tmp_path: Path, clock: FakeClock) -> AsyncIterator[HaltStore]:
    store = await Store.open(tmp_path / "agent.db")
    yield HaltStore(store, EventLog(store, clock), clock)
    await store.close()


async def _create(halts: HaltStore, **kw) -> Halt:
    return await halts.create(plan=PLAN, title="Clean /srv/tmp?", body="It is 95 % full.", **kw)


async def test_a_created_halt_is_pending_with_its_plan_and_is_listed_newest_first(halts: HaltStore) -> None:
    first = await _create(halts, incident_id=7, rule="tmp-full")
    second = await _create(halts, options=["approve", "keep-7d", "deny"], expires_in=3600)
    assert first.status == "pending" and first.plan == PLAN and first.options == ["approve", "deny"]
    assert first.default_option == "deny" and first.expires_at == T0 + timedelta(days=1)
    assert first.remind_at == T0 + timedelta(days=1) - timedelta(seconds=0.2 * 86400)
    assert second.remind_at == T0 + timedelta(seconds=3600 - 720)
    assert await halts.get(first.id) == first
    assert await halts.get(999) is None
    assert [h.id for h in await halts.list()] == [second.id, first.id]
    assert await halts.list(status="answered") == []
    assert first.to_json()["plan"]["summary"] == PLAN.summary
    assert await logged(halts, "halt.*") == [
        ("halt.requested", {"halt_id": first.id, "action": "cleanup", "summary": PLAN.summary,
                            "options": ["approve", "deny"], "default": "deny",
                            "expires_at": "2026-03-02T12:00:00.000000Z"}),
        ("halt.requested", {"halt_id": second.id, "action": "cleanup", "summary": PLAN.summary,
                            "options": ["approve", "keep-7d", "deny"], "default": "deny",
                            "expires_at": "2026-03-01T13:00:00.000000Z"})]
    event = (await halts.events.list(type_glob="halt.requested", newest_first=False))[0]
    assert event.incident_id == 7


@pytest.mark.parametrize("kw, message", [
    ({"options": []}, "1 to 10 options"),
    ({"options": [f"o{i}" for i in range(11)], "default": "o0"}, "1 to 10 options"),
    ({"options": ["approve", "approve", "deny"]}, "must be unique"),
    ({"options": ["Approve", "deny"]}, r"bad halt option\(s\) \['Approve'\]"),
    ({"options": ["approve", "x" * 33, "deny"]}, "bad halt option"),
    ({"default": "maybe"}, "the default 'maybe' is not one of the options"),
    ({"expires_in": 0}, "expires_in must be positive"),
])
async def test_bad_options_defaults_and_expiries_are_refused(halts: HaltStore, kw: dict, message: str) -> None:
    with pytest.raises(HaltError, match=message):
        await _create(halts, **kw)
    assert await halts.list() == []


async def test_a_short_halt_gets_a_reminder_at_least_a_minute_before_expiry_or_none(halts: HaltStore) -> None:
    assert (await _create(halts, expires_in=120)).remind_at == T0 + timedelta(seconds=60)
    assert (await _create(halts, expires_in=30)).remind_at is None
    assert (await _create(halts, expires_in=600, remind_before=300)).remind_at == T0 + timedelta(seconds=300)


async def test_a_halt_is_answered_once_and_a_second_answer_names_the_first(
        halts: HaltStore, clock: FakeClock) -> None:
    halt = await _create(halts)
    clock.advance(90)
    answered = await halts.answer(halt.id, "approve", by="cli:alice", note="go ahead")
    assert (answered.status, answered.answer, answered.answered_by, answered.note) == (
        "answered", "approve", "cli:alice", "go ahead")
    assert answered.answered_at == T0 + timedelta(seconds=90)
    with pytest.raises(HaltError, match=r"already answered 'approve' by cli:alice at 2026-03-01T12:01:30"):
        await halts.answer(halt.id, "deny", by="web")
    assert (await halts.get(halt.id)).answer == "approve"
    assert [t for t, _ in await logged(halts, "halt.*")] == ["halt.requested", "halt.answered", "halt.answer_refused"]
    assert (await logged(halts, "halt.answered"))[0][1] == {
        "halt_id": halt.id, "option": "approve", "by": "cli:alice", "note": "go ahead", "channel": None}


async def test_an_answer_that_is_not_an_option_is_refused_with_the_options_listed(halts: HaltStore) -> None:
    halt = await _create(halts, options=["approve", "keep-7d", "deny"])
    with pytest.raises(HaltError, match="'yes' is not an option of halt #1; answer one of: approve, keep-7d, deny"):
        await halts.answer(halt.id, "yes", by="cli")
    with pytest.raises(HaltError, match="there is no halt #42"):
        await halts.answer(42, "approve", by="cli")
    assert (await halts.get(halt.id)).status == "pending"


async def test_expiry_applies_the_default_once_and_later_answers_are_refused(
        halts: HaltStore, clock: FakeClock) -> None:
    halt = await _create(halts, options=["approve", "keep-7d", "deny"], default="keep-7d", expires_in=3600)
    assert await halts.expire_due() == []
    clock.advance(3600)
    with pytest.raises(HaltError, match=r"expired at 2026-03-01T13:00:00.*default 'keep-7d' applies"):
        await halts.answer(halt.id, "approve", by="cli")
    expired = await halts.expire_due()
    assert [(h.id, h.status, h.answer, h.answered_by) for h in expired] == [
        (halt.id, "expired", "keep-7d", "timeout")]
    assert await halts.expire_due() == []
    with pytest.raises(HaltError, match=r"expired at 2026-03-01T13:00:00.*default 'keep-7d' was applied"):
        await halts.answer(halt.id, "approve", by="cli")
    assert await logged(halts, "halt.expired") == [("halt.expired", {"halt_id": halt.id, "default": "keep-7d"})]


async def test_a_reminder_is_due_once_before_expiry(halts: HaltStore, clock: FakeClock) -> None:
    halt = await _create(halts, expires_in=1000, remind_before=100)
    answered = await _create(halts, expires_in=1000, remind_before=100)
    await halts.answer(answered.id, "deny", by="cli")
    clock.advance(899)
    assert await halts.remind_due() == []
    clock.advance(1)
    reminded = await halts.remind_due()
    assert [h.id for h in reminded] == [halt.id] and reminded[0].reminded_at == clock.now()
    clock.advance(50)
    assert await halts.remind_due() == []
    assert await logged(halts, "halt.reminded") == [
        ("halt.reminded", {"halt_id": halt.id, "expires_at": "2026-03-01T12:16:40.000000Z"})]


async def test_concurrent_answers_from_two_connections_let_exactly_one_win(
        tmp_path: Path, halts: HaltStore, clock: FakeClock) -> None:
    halt = await _create(halts)
    other_store = await Store.open(tmp_path / "agent.db")
    other = HaltStore(other_store, EventLog(other_store, clock), clock)
    try:
        results = await asyncio.gather(halts.answer(halt.id, "approve", by="cli"),
                                       other.answer(halt.id, "deny", by="web"), return_exceptions=True)
    finally:
        await other_store.close()
    winners = [r for r in results if isinstance(r, Halt)]
    losers = [r for r in results if isinstance(r, HaltError)]
    assert len(winners) == 1 and len(losers) == 1
    assert f"already answered {winners[0].answer!r} by {winners[0].answered_by}" in str(losers[0])
    assert (await halts.get(halt.id)).answer == winners[0].answer
    assert len(await logged(halts, "halt.answered")) == 1


async def test_execution_is_claimed_once_and_only_for_something_to_do(
        halts: HaltStore, clock: FakeClock) -> None:
    approved = await _create(halts)
    pending = await _create(halts)
    denied_by_timeout = await _create(halts, expires_in=60)
    await halts.answer(approved.id, "approve", by="cli")
    clock.advance(60)
    await halts.expire_due()
    assert await halts.claim_execution(pending.id) is False
    assert await halts.claim_execution(denied_by_timeout.id) is False
    claims = await asyncio.gather(*(halts.claim_execution(approved.id) for _ in range(3)))
    assert sorted(claims) == [False, False, True]
    await halts.finish_execution(approved.id, result="done", action_id=12)
    finished = await halts.get(approved.id)
    assert (finished.execution, finished.action_id) == ("done", 12)
    assert await halts.claim_execution(approved.id) is False
    with pytest.raises(HaltError, match="has execution 'done', not 'claimed'"):
        await halts.finish_execution(approved.id, result="replanned")


async def test_an_expired_halt_with_a_default_that_acts_can_be_claimed(
        halts: HaltStore, clock: FakeClock) -> None:
    halt = await _create(halts, options=["approve", "deny"], default="approve", expires_in=60)
    clock.advance(60)
    await halts.expire_due()
    assert await halts.claim_execution(halt.id) is True


async def test_a_cancelled_halt_cannot_be_answered(halts: HaltStore) -> None:
    halt = await _create(halts)
    cancelled = await halts.cancel(halt.id, "the disk was cleaned by hand")
    assert (cancelled.status, cancelled.note) == ("cancelled", "the disk was cleaned by hand")
    with pytest.raises(HaltError, match="was cancelled at .*: the disk was cleaned by hand"):
        await halts.answer(halt.id, "approve", by="cli")
    with pytest.raises(HaltError, match="was cancelled"):
        await halts.cancel(halt.id, "again")


async def test_halts_survive_closing_and_reopening_the_store(tmp_path: Path, clock: FakeClock) -> None:
    store = await Store.open(tmp_path / "agent.db")
    halt = await HaltStore(store, EventLog(store, clock), clock).create(
        plan=PLAN, title="t", body="b", options=["approve", "keep-7d", "deny"], incident_id=3)
    await store.close()
    store = await Store.open(tmp_path / "agent.db")
    try:
        again = HaltStore(store, EventLog(store, clock), clock)
        assert await again.get(halt.id) == halt
        assert (await again.answer(halt.id, "keep-7d", by="mcp")).answer == "keep-7d"
    finally:
        await store.close()
