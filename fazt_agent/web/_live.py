"""The dashboard's live updates: server-sent events fed from the event log.

Each open stream reads the events after the last one it sent and turns them into messages (the
dashboard's `messages`). It is woken as soon as an event commits in this process (one subscriber
on the event log while any stream is open, none otherwise) and looks every POLL seconds anyway,
for the events other processes write (the CLI, the MCP worker). A comment every KEEPALIVE seconds
keeps proxies from closing a quiet stream and lets the server notice a client that is gone; the
session is read again every RECHECK seconds, so a revoked token ends its streams. `close()` ends
them all (the daemon is stopping: the server would wait for them).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator, Awaitable, Callable

from ..events import Event, EventLog

POLL = 1.0
KEEPALIVE = 15.0
RECHECK = 30.0
BATCH = 500
MAX_STREAMS = 20      # each holds a connection and a task; more are refused


def sse(kind: str, data: Any, event_id: int) -> str:
    """One server-sent event; `event_id` is what a reconnecting browser sends back (Last-Event-ID)."""
    return f"event: {kind}\nid: {event_id}\ndata: {json.dumps(data, default=str, separators=(',', ':'))}\n\n"


class Live:
    """The open streams of one dashboard."""

    def __init__(self, events: EventLog):
        self.events = events
        self.streams = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._unsubscribe: Callable[[], None] | None = None

    @property
    def full(self) -> bool:
        return self.streams >= MAX_STREAMS

    def close(self) -> None:
        self._closing = True
        self._wake.set()

    async def stream(self, last: int, messages: Callable[[list[Event]], Awaitable[str]],
                     allowed: Callable[[], Awaitable[bool]]) -> AsyncIterator[str]:
        """The messages of the events after `last`, as they come, while `allowed()` holds."""
        self.streams += 1
        if self._unsubscribe is None:
            self._unsubscribe = self.events.subscribe(self._on_event)
        try:
            yield f"retry: 3000\n: following events after {last}\n\n"
            quiet_since = checked = time.monotonic()
            while not self._closing:
                wake = self._wake
                events = await self.events.list(after_id=last, limit=BATCH, newest_first=False)
                if events:
                    out, last = await messages(events), events[-1].id
                    if out:
                        yield out
                        quiet_since = time.monotonic()
                now = time.monotonic()
                if now - quiet_since >= KEEPALIVE:
                    yield ": keepalive\n\n"
                    quiet_since = now
                if now - checked >= RECHECK:
                    checked = now
                    if not await allowed():
                        yield "event: ended\ndata: {}\n\n"
                        return
                if len(events) < BATCH:
                    try:
                        await asyncio.wait_for(wake.wait(), POLL)
                    except asyncio.TimeoutError:
                        pass
        finally:
            self.streams -= 1
            if self.streams == 0 and self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None

    def _on_event(self, event: Event) -> None:
        """The event log's subscriber: wake the streams (they read the events themselves)."""
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()
