"""Notifications to the owner, through an outbox in SQLite.

`notify` writes the notification first and then tries to send it, so a failed or interrupted
delivery is never lost: the row stays `pending` and `deliver_due` retries it with exponential
backoff until it is sent or, after `max_attempts`, given up. Each attempt claims its row with a
conditional UPDATE (a lease, with the claiming process as `owner`), so several processes sharing
the database send it only once; a row whose owner died while it was leased is sent again at once
(`resend_abandoned`). Inside a caller's transaction the row commits with it (a halt and the
question to its owner) and the attempt follows the commit.

Channels: the main one is apprise, for the configured URLs, or without URLs the log (this logger,
at the level of the severity: info, warning, error for a failure, critical); it carries every
notification, and a halt's request and reminder with its signed links (`answer/links.py`) when
`[http] public_url` is set. The answer channels (`answer/`: Slack, email) get their own row of
every notification about a halt (`kind`: request, reminder, answered, expired, cancelled), are
retried the same way, and keep what they posted (`ref`) so a later row can update it — the Slack
message loses its buttons once the halt is answered anywhere.
URLs carry secrets (tokens, passwords): they are never logged nor stored; errors name a channel
by `config.redacted(url)`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

from ._faults import crash_point
from .clock import Clock, iso
from .config import redacted
from .errors import FaztAgentError
from .event_types import NotificationFailed, NotificationSent
from .events import EventLog
from .store import Store, owner, stale

if TYPE_CHECKING:
    import sqlite3

    import apprise

    from .halt.store import Halt

log = logging.getLogger(__name__)

# severity -> apprise NotifyType value; `critical` (a check status) is sent as a failure
_NOTIFY_TYPE = {"info": "info", "warning": "warning", "failure": "failure", "critical": "failure"}
SEVERITIES = tuple(_NOTIFY_TYPE)
# severity -> the log level of the log channel: an "action done" notice is no warning
LOG_LEVEL = {"info": logging.INFO, "warning": logging.WARNING, "failure": logging.ERROR, "critical": logging.CRITICAL}
LEASE = timedelta(seconds=120)        # how long a claimed attempt keeps others off the row
SEND_TIMEOUT = 60.0                   # apprise's limit for one attempt; must stay below LEASE

Send = Callable[[str, str, str], Awaitable[None]]
"""A delivery channel: `send(title, body, severity)`, raising NotifyError when it fails."""

MAIN = "main"
HALT_KINDS = ("request", "reminder", "answered", "expired", "cancelled")


@dataclass(frozen=True)
class Outgoing:
    """One notification as an answer channel sends it."""

    id: int
    title: str
    body: str
    severity: str
    kind: str | None                 # one of HALT_KINDS, or None for a plain notice
    halt: Halt | None                # the halt as it is now (answered, who, when: for the update)
    refs: list[str] = field(default_factory=list)   # what this channel posted earlier about the halt


class Channel(Protocol):
    """An answer channel's outgoing side (its incoming side lives in the daemon: `answer/`)."""

    name: str

    async def send(self, note: Outgoing) -> str | None:
        """Deliver `note`; return the channel's id of what it posted (kept as the row's `ref`), if
        any. Raises NotifyError on a failure worth retrying."""
        ...


Decorate = Callable[["Halt", str], Awaitable[str]]
"""`decorate(halt, body)`: the main channel's body of a halt request/reminder (with its signed links)."""


class NotifyError(FaztAgentError):
    """A channel could not deliver a notification (the outbox retries it)."""


def backoff(attempts: int) -> timedelta:
    """The wait after the `attempts`-th failed attempt: 30 s, 1 min, 2 min, ... at most 1 h."""
    return timedelta(seconds=min(30 * 2 ** (attempts - 1), 3600))


class Notifications:
    """The notification outbox and its delivery (satisfies `kernel.base.Notifier`)."""

    def __init__(self, store: Store, events: EventLog, clock: Clock, urls: list[str], *,
                 send: Send | None = None, max_attempts: int = 12, channels: list[Channel] | None = None,
                 decorate: Decorate | None = None):
        self.store = store
        self.events = events
        self.clock = clock
        self.urls = [u for u in urls if u]
        self.max_attempts = max_attempts
        self.channel = "custom" if send else "apprise" if self.urls else "log"
        self._send = send or (self._send_apprise if self.urls else self._send_log)
        self._apprise: apprise.Apprise | None = None
        self._invalid: list[str] = []           # redacted URLs apprise refused
        self._build_lock = asyncio.Lock()
        self.me = owner()
        self.channels = {c.name: c for c in channels or []}
        self.decorate = decorate

    async def notify(self, title: str, body: str, *, severity: str = "info",
                     halt_id: int | None = None, incident_id: int | None = None,
                     kind: str | None = None, main: bool = True) -> int | None:
        """Queue a notification and try to send it now — inside a caller's transaction, once that
        commits; returns the id of its main row (None for a notice only the answer channels get:
        `main=False`, or a withdrawn halt).

        A delivery failure does not raise: the notification stays pending and is retried.

        Raises:
            ValueError: `severity` is not one of SEVERITIES (a programming error).
        """
        if severity not in SEVERITIES:
            raise ValueError(f"unknown notification severity {severity!r}; use one of {SEVERITIES}")
        now = self.clock.now()
        lease = iso(now + LEASE)          # inserted already claimed by this attempt
        if kind is not None and kind not in HALT_KINDS:
            raise ValueError(f"unknown notification kind {kind!r}; use one of {HALT_KINDS}")
        # a withdrawn halt needs no notice of its own on the main channel (a new request or the
        # incident's "resolved" follows); the answer channels update what they posted
        names = [MAIN] if main and kind != "cancelled" else []
        names += list(self.channels) if halt_id is not None and kind is not None else []
        if not names:
            return None
        rows = [(title, body, severity, halt_id, incident_id, iso(now), lease, self.me, name, kind) for name in names]

        def insert(conn: sqlite3.Connection) -> list[int]:
            ids = []
            for row in rows:
                rowid = conn.execute(
                    "INSERT INTO notifications(title, body, severity, halt_id, incident_id, status, attempts,"
                    " created_at, next_attempt_at, owner, channel, kind) VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?,"
                    " ?, ?, ?)", row).lastrowid
                assert rowid is not None
                ids.append(rowid)
            return ids

        ids = await self.store.write(insert)   # its own transaction, or a savepoint of the caller's
        for notification_id in ids:   # inside a caller's transaction: once it commits; else now
            await self.store.after_commit(lambda n=notification_id: self._attempt(n))
        return ids[0]

    async def deliver_due(self, now: datetime | None = None) -> int:
        """Retry every pending notification that is due at `now`; returns how many were attempted."""
        due = await self.store.fetchall(
            "SELECT id, next_attempt_at FROM notifications WHERE status = 'pending' AND next_attempt_at <= ?"
            " ORDER BY next_attempt_at, id", (iso(now or self.clock.now()),))
        attempted = 0
        for row in due:
            if await self._claim(row["id"], row["next_attempt_at"]):
                await self._attempt(row["id"])
                attempted += 1
        return attempted

    async def resend_abandoned(self, now: datetime | None = None) -> list[int]:
        """Send now the pending notifications whose attempt a process that is gone had taken (it was
        killed between writing and sending, or mid-send); returns their ids. A row waiting out its
        backoff after a failed attempt has no owner: it keeps its time."""
        at = now or self.clock.now()
        rows = await self.store.fetchall(
            "SELECT id, next_attempt_at, owner FROM notifications WHERE status = 'pending' AND next_attempt_at > ?"
            " AND owner IS NOT NULL ORDER BY id", (iso(at),))
        sent = []
        for row in rows:
            if stale(row["owner"], None, at) and await self._claim(row["id"], row["next_attempt_at"]):
                await self._attempt(row["id"])
                sent.append(row["id"])
        return sent

    async def pending(self) -> list[dict[str, Any]]:
        """The notifications still waiting to be sent, oldest first."""
        rows = await self.store.fetchall(
            "SELECT id, title, body, severity, halt_id, incident_id, attempts, last_error, created_at,"
            " next_attempt_at FROM notifications WHERE status = 'pending' ORDER BY id")
        return [dict(r) for r in rows]

    async def _claim(self, notification_id: int, seen_next_attempt_at: str) -> bool:
        """Take the row for one attempt; False when another process took it first."""
        changed = await self.store.execute(
            "UPDATE notifications SET next_attempt_at = ?, owner = ? WHERE id = ? AND status = 'pending'"
            " AND next_attempt_at = ?", (iso(self.clock.now() + LEASE), self.me, notification_id, seen_next_attempt_at))
        return changed == 1

    async def _attempt(self, notification_id: int) -> None:
        """Send a claimed notification once and record the outcome (row and event)."""
        row = await self.store.fetchone("SELECT * FROM notifications WHERE id = ?", (notification_id,))
        assert row is not None
        attempt = row["attempts"] + 1
        name = row["channel"]
        channel_name = self.channel if name == MAIN else name
        ref = None
        try:
            if name == MAIN:
                body = row["body"]
                if self.decorate is not None and row["halt_id"] is not None and row["kind"] in ("request", "reminder"):
                    halt = await self._halt(row["halt_id"])
                    body = await self.decorate(halt, body) if halt is not None else body
                await self._send(row["title"], body, row["severity"])
            else:
                channel = self.channels.get(name)
                if channel is None:
                    raise NotifyError(f"the {name} channel is not configured in this process")
                ref = await channel.send(await self._outgoing(row))
        except NotifyError as e:
            error = str(e)
        except Exception as e:  # a channel's bug must not lose the notification nor crash the caller
            log.exception("notification channel %s crashed", channel_name)
            error = f"the {channel_name} channel crashed: {type(e).__name__}: {e}"
        else:
            crash_point("notification.sent")
            now = iso(self.clock.now())
            async with self.store.transaction():   # the row and its event together
                await self.store.execute(
                    "UPDATE notifications SET status = 'sent', sent_at = ?, attempts = ?, next_attempt_at = ?,"
                    " ref = ? WHERE id = ?", (now, attempt, now, ref, notification_id))
                await self.events.emit("notification.sent", NotificationSent(
                    notification_id=notification_id, channel=channel_name, title=row["title"], attempts=attempt,
                    halt_id=row["halt_id"]), source="notify", incident_id=row["incident_id"])
            return
        error = self._scrub(error)
        now_dt = self.clock.now()
        gave_up = attempt >= self.max_attempts
        next_at = now_dt if gave_up else now_dt + backoff(attempt)
        log.warning("notification #%d not sent (attempt %d, %s): %s", notification_id, attempt,
                    "giving up" if gave_up else f"next at {iso(next_at)}", error)
        async with self.store.transaction():
            await self.store.execute(
                "UPDATE notifications SET status = ?, attempts = ?, last_error = ?, next_attempt_at = ?,"
                " owner = NULL WHERE id = ?",
                ("gave_up" if gave_up else "pending", attempt, error, iso(next_at), notification_id))
            await self.events.emit("notification.failed", NotificationFailed(
                notification_id=notification_id, attempt=attempt, error=error,
                next_attempt_at=None if gave_up else iso(next_at), gave_up=gave_up),
                source="notify", incident_id=row["incident_id"])

    async def _halt(self, halt_id: int) -> Halt | None:
        from .halt.store import halt_from_row

        row = await self.store.fetchone("SELECT * FROM halts WHERE id = ?", (halt_id,))
        return halt_from_row(row) if row else None

    async def _outgoing(self, row: Any) -> Outgoing:
        """A row as its answer channel sends it: with the halt as it is now, and the refs of what the
        channel posted about it before."""
        halt = await self._halt(row["halt_id"]) if row["halt_id"] is not None else None
        refs = [r["ref"] for r in await self.store.fetchall(
            "SELECT ref FROM notifications WHERE halt_id = ? AND channel = ? AND ref IS NOT NULL AND id < ?"
            " ORDER BY id", (row["halt_id"], row["channel"], row["id"]))] if halt is not None else []
        return Outgoing(row["id"], row["title"], row["body"], row["severity"], row["kind"], halt, refs)

    def _scrub(self, text: str) -> str:
        for url in self.urls:
            text = text.replace(url, redacted(url))
        return text

    async def _send_log(self, title: str, body: str, severity: str) -> None:
        log.log(LOG_LEVEL[severity], "notification (%s): %s\n%s", severity, title, body)

    async def _send_apprise(self, title: str, body: str, severity: str) -> None:
        async with self._build_lock:
            if self._apprise is None:
                self._apprise = await asyncio.to_thread(self._build_apprise)
        await asyncio.to_thread(self._notify_apprise, self._apprise, title, body, severity)

    def _build_apprise(self) -> apprise.Apprise:
        import apprise  # heavy: loads every plugin, so only when the first notification goes out

        client = apprise.Apprise()
        ident = threading.get_ident()
        apprise_log = logging.getLogger("apprise")

        def hush(record: logging.LogRecord) -> bool:  # apprise's lines while adding show the URLs in clear
            return record.thread != ident

        apprise_log.addFilter(hush)
        try:
            for url in self.urls:
                if not client.add(url):
                    self._invalid.append(redacted(url))
        finally:
            apprise_log.removeFilter(hush)
        if self._invalid:
            log.warning("apprise refused notification URL(s) %s; check them against "
                        "https://github.com/caronc/apprise/wiki", ", ".join(self._invalid))
        return client

    def _notify_apprise(self, client: apprise.Apprise, title: str, body: str, severity: str) -> None:
        """Blocking: send through apprise (in a worker thread).

        Raises:
            NotifyError: no URL is usable, or apprise reported a failure (with its messages).
        """
        invalid = (f"apprise does not understand notification URL(s) {', '.join(self._invalid)}; "
                   "fix notify.urls (see https://github.com/caronc/apprise/wiki)") if self._invalid else ""
        if len(client) == 0:
            raise NotifyError(invalid)
        # The result carries the log lines of this call only (unlike a handler on the shared
        # "apprise" logger, which would also catch a concurrent send's lines).
        result = client.notify(body=body, title=title, notify_type=_NOTIFY_TYPE[severity], timeout=SEND_TIMEOUT)
        if not result:
            messages = list(dict.fromkeys(e.message for e in result.logs()))
            reasons = "; ".join(messages) or f"apprise reported {result.status.name}"
            raise NotifyError("; ".join(filter(None, (reasons, invalid))))
