"""The notification outbox: the log channel, apprise against a real local HTTP server, retries
with backoff, giving up, secrets kept out of events and logs, and exactly-once delivery."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest

from _helpers import FakeClock, logged
from fazt_agent.clock import iso
from fazt_agent.events import EventLog
from fazt_agent.notify import Notifications, NotifyError, backoff
from fazt_agent.store import Store

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
SECRET = "tok3n-s3cr3t-9f8e7d"


class Hook:
    """A real HTTP server on loopback that records apprise's JSON posts and answers scripted codes."""

    def __init__(self) -> None:
        self.codes: list[int] = []          # answered in order; 200 once used up
        self.posts: list[tuple[str, dict[str, Any]]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    hook.posts.append((self.path, payload))
                    code = hook.codes.pop(0) if hook.codes else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"json://127.0.0.1:{self.server.server_address[1]}/hooks/{SECRET}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.server.shutdown()
    h.server.server_close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0, mono=None)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "agent.db")
    yield s
    await s.close()


def _notifications(store: Store, clock: FakeClock, urls: list[str], **kw: Any) -> Notifications:
    return Notifications(store, EventLog(store, clock), clock, urls, **kw)


async def _row(store: Store, notification_id: int) -> dict[str, Any]:
    row = await store.fetchone("SELECT * FROM notifications WHERE id = ?", (notification_id,))
    assert row is not None
    return dict(row)


async def test_without_urls_a_notification_goes_to_the_log_at_warning(
        store: Store, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    n = _notifications(store, clock, [])
    with caplog.at_level(logging.WARNING, logger="fazt_agent.notify"):
        nid = await n.notify("Disk almost full", "/ is 95 % full", severity="warning", halt_id=4)
    [record] = [r for r in caplog.records if r.name == "fazt_agent.notify"]
    assert record.levelno == logging.WARNING
    assert "Disk almost full" in record.getMessage() and "/ is 95 % full" in record.getMessage()
    row = await _row(store, nid)
    assert (row["status"], row["attempts"], row["sent_at"]) == ("sent", 1, iso(T0))
    assert await logged(n, "notification.*") == [("notification.sent", {
        "notification_id": nid, "channel": "log", "title": "Disk almost full", "attempts": 1, "halt_id": 4})]
    assert await n.pending() == []


async def test_a_failed_apprise_delivery_is_retried_after_backoff_and_then_sent(
        store: Store, clock: FakeClock, hook: Hook) -> None:
    hook.codes = [500]
    n = _notifications(store, clock, [hook.url])
    nid = await n.notify("Approve cleanup?", "delete 42 files under /srv/tmp", severity="failure")
    row = await _row(store, nid)
    retry_at = iso(T0 + timedelta(seconds=30))
    assert (row["status"], row["attempts"], row["next_attempt_at"]) == ("pending", 1, retry_at)
    assert "error=500" in row["last_error"]
    [(kind, data)] = await logged(n, "notification.*")
    assert kind == "notification.failed"
    assert data == {"notification_id": nid, "attempt": 1, "error": row["last_error"],
                    "next_attempt_at": retry_at, "gave_up": False}
    assert [p["id"] for p in await n.pending()] == [nid]

    clock.advance(29)
    assert await n.deliver_due() == 0
    clock.advance(1)
    assert await n.deliver_due() == 1
    row = await _row(store, nid)
    assert (row["status"], row["attempts"], row["sent_at"]) == ("sent", 2, retry_at)
    assert [p for _, p in hook.posts] == [
        {"version": "1.0", "title": "Approve cleanup?", "message": "delete 42 files under /srv/tmp",
         "attachments": [], "type": "failure"}] * 2
    assert (await logged(n, "notification.*"))[-1] == ("notification.sent", {
        "notification_id": nid, "channel": "apprise", "title": "Approve cleanup?", "attempts": 2, "halt_id": None})
    assert await n.deliver_due() == 0


def test_backoff_doubles_from_30_seconds_and_caps_at_an_hour() -> None:
    assert [backoff(a).total_seconds() for a in range(1, 10)] == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]


async def test_retries_wait_longer_each_time_and_give_up_after_max_attempts(
        store: Store, clock: FakeClock, hook: Hook) -> None:
    hook.codes = [500] * 5
    n = _notifications(store, clock, [hook.url], max_attempts=5)
    nid = await n.notify("t", "b")
    waits = []
    for _ in range(4):
        row = await _row(store, nid)
        due = datetime.fromisoformat(row["next_attempt_at"].replace("Z", "+00:00"))
        waits.append((due - clock.now()).total_seconds())
        clock.t = due
        assert await n.deliver_due() == 1
    assert waits == [30, 60, 120, 240]
    row = await _row(store, nid)
    assert (row["status"], row["attempts"]) == ("gave_up", 5)
    failed = [d for t, d in await logged(n, "notification.*") if t == "notification.failed"]
    assert [(d["attempt"], d["gave_up"]) for d in failed] == [(a, a == 5) for a in range(1, 6)]
    assert failed[-1]["next_attempt_at"] is None
    clock.advance(86400)
    assert await n.deliver_due() == 0 and len(hook.posts) == 5
    assert await n.pending() == []


async def test_a_secret_url_never_appears_in_events_rows_or_logs(
        store: Store, clock: FakeClock, hook: Hook, caplog: pytest.LogCaptureFixture) -> None:
    hook.codes = [500]
    bad = "nonsense://pw123"     # too short for apprise's own masking of its log lines
    caplog.set_level(logging.DEBUG, logger="fazt_agent")   # as the daemon: fazt_agent verbose, others WARNING
    n = _notifications(store, clock, [hook.url, bad])
    nid = await n.notify("t", "b")
    clock.advance(30)
    await n.deliver_due()
    assert (await _row(store, nid))["status"] == "sent"
    assert len(hook.posts) == 2 and hook.posts[0][0] == f"/hooks/{SECRET}"   # the secret did its job
    stored = [e.to_json() for e in await n.events.list(limit=None)]
    stored += [dict(r) for r in await store.fetchall("SELECT * FROM notifications")]
    assert SECRET not in json.dumps(stored) and "pw123" not in json.dumps(stored)
    leaks = [r for r in caplog.records if SECRET in r.getMessage() or "pw123" in r.getMessage()]
    assert caplog.records and leaks == []
    assert "nonsense://***" in caplog.text


async def test_an_invalid_apprise_url_fails_with_a_clear_error_and_no_exception(
        store: Store, clock: FakeClock) -> None:
    n = _notifications(store, clock, ["nonsense://"])
    nid = await n.notify("t", "b")
    row = await _row(store, nid)
    assert (row["status"], row["attempts"]) == ("pending", 1)
    assert row["last_error"].startswith("apprise does not understand notification URL(s) nonsense://***")
    assert (await logged(n, "notification.*"))[0][1]["error"] == row["last_error"]


async def test_two_processes_delivering_at_once_send_a_notification_exactly_once(
        tmp_path: Path, store: Store, clock: FakeClock, hook: Hook) -> None:
    hook.codes = [500, 500]
    first = _notifications(store, clock, [hook.url])
    ids = [await first.notify("one", "b"), await first.notify("two", "b")]
    other_store = await Store.open(tmp_path / "agent.db")
    try:
        second = _notifications(other_store, clock, [hook.url])
        clock.advance(30)
        attempted = await asyncio.gather(first.deliver_due(), second.deliver_due())
    finally:
        await other_store.close()
    assert sum(attempted) == 2
    assert sorted(p["title"] for _, p in hook.posts[2:]) == ["one", "two"]
    assert [(await _row(store, i))["status"] for i in ids] == ["sent", "sent"]


async def test_a_channel_failure_or_crash_keeps_the_notification_pending(store: Store, clock: FakeClock) -> None:
    outcomes: list[BaseException | None] = [NotifyError("smtp said 451"), RuntimeError("bug"), None]
    sent: list[str] = []

    async def send(title: str, body: str, severity: str) -> None:
        outcome = outcomes.pop(0)
        if outcome:
            raise outcome
        sent.append(title)

    n = _notifications(store, clock, [], send=send)
    nid = await n.notify("t", "b", incident_id=9)
    assert (await _row(store, nid))["last_error"] == "smtp said 451"
    clock.advance(30)
    await n.deliver_due()
    assert (await _row(store, nid))["last_error"] == "the custom channel crashed: RuntimeError: bug"
    clock.advance(60)
    await n.deliver_due()
    assert sent == ["t"] and (await _row(store, nid))["attempts"] == 3
    assert {e.incident_id for e in await n.events.list()} == {9}


async def test_an_unknown_severity_is_refused_before_anything_is_queued(store: Store, clock: FakeClock) -> None:
    n = _notifications(store, clock, [])
    with pytest.raises(ValueError, match="unknown notification severity 'urgent'"):
        await n.notify("t", "b", severity="urgent")
    assert await store.scalar("SELECT COUNT(*) FROM notifications") == 0
