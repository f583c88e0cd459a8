"""The hop between the daemon's /mcp and its MCP worker: ASGI messages as frames on a unix socket.

The daemon has already parsed the client's HTTP request. Passing it on as HTTP again took a second
HTTP/1.1 client in the daemon (httpcore and h11) and a second HTTP server in the worker (uvicorn and
h11), each parsing and re-serialising every request and every SSE chunk. Here the request is one
frame and each ASGI message of the answer is one frame, read by a protocol of ours on each side
(frames are cut from what arrives, no stream reader, no task per frame): a tool call costs the hop
about 0.1 ms of CPU across both processes, most of it the system calls (see `docs/architecture.md`).

A frame is one byte of kind, four bytes of length (big-endian) and the payload:

    daemon -> worker   Q  meta length (4 bytes), meta (JSON: method, path, raw path, query, client,
                          server), headers length (4 bytes), headers (names and values joined by NUL),
                          body
    worker -> daemon   S  the status, then the headers' names and values, joined by NUL
                       B  a part of the body (http.response.body, more to come)
                       E  the last part of the body: the response is complete, and the connection
                          takes the next request (the app may still be finishing the last one)

HTTP forbids NUL in header names and values (h11 refuses them on the way in and out), so NUL
separates them without escaping; a block whose NULs do not add up is refused. A connection carries
one request at a time (like HTTP/1.1 keep-alive); the daemon keeps up to `MAX_IDLE` idle ones. When
the daemon's client goes away mid-response, the daemon closes the connection and the worker's app
receives `http.disconnect`, as it would from uvicorn. The daemon asks its HTTP server (the front
door, `web/front.py`, or uvicorn) whether the client is still there only once a response has taken
`WATCH_AFTER` (a tool call answers well before: no task per request on the way of every call), so
the worker learns of a client that left at most that late.

The socket is in Linux's abstract namespace (a random name, nothing on disk, gone with its
processes) and the worker answers its parent, the daemon, alone (SO_PEERCRED): other processes of
the machine reach /mcp only through the daemon's port, its Host/Origin and token checks.
This module must not import the `mcp` SDK: the daemon imports it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
from collections import deque
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from .._proc import peer_credentials
from ._frames import (BODY, CHUNK, END, NUL, REQUEST, START, BridgeError, Frames, frame, join, read_request,
                      read_start, request_frame)

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

HIGH_WATER = 2 * CHUNK        # the daemon stops reading a worker connection with this much unsent to its client
MAX_IDLE = 8                  # idle connections the daemon keeps; each open stream holds one more
WATCH_AFTER = 0.5             # a response still running after this long has its client watched (see above)
WATCH_END = 5.0               # how long a finished response waits for its watcher before dropping the connection
HOLD = 0.005                  # the worker writes the frames of a response together, or this long after the first
PREFIX = "fazt-mcp-"          # of the socket's name

__all__ = ["BridgeError", "Downstream", "Upstream", "new_address", "ours", "request_frame"]


def new_address() -> str:
    """A fresh name for a worker's socket in Linux's abstract namespace (`@` stands for the leading
    NUL byte): nothing on disk to create, protect or leave behind when both processes are killed."""
    return f"@{PREFIX}{secrets.token_hex(8)}"


def ours(address: str) -> bool:
    """Whether `address` is one `new_address` makes (the daemon checks what its worker printed)."""
    return re.fullmatch(f"@{PREFIX}[0-9a-f]{{16}}", address) is not None


def _os_address(address: str) -> str:
    return "\0" + address[1:]


def _peer_pid(transport: asyncio.BaseTransport) -> int | None:
    """The process id at the other end of a unix socket connection (SO_PEERCRED)."""
    peer = peer_credentials(transport)
    return peer[0] if peer else None


# -- the daemon's side ----------------------------------------------------------------------

class _Link(Frames):
    """One connection of the daemon to its worker: the frames of the current response, queued
    until `next()` takes them."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: deque[tuple[bytes, bytes]] = deque()
        self.queued = 0                 # bytes of body queued, not yet passed on to the client
        self.error: Exception | None = None
        self.finished = False           # the response is complete: the client leaving now is not a disconnect
        self.gone = False               # the client went away mid-response; the connection was closed for it
        self._arrived: asyncio.Future[None] | None = None

    def frame_received(self, kind: bytes, payload: bytes) -> None:
        self.frames.append((kind, payload))
        self.queued += len(payload)
        if self.queued > HIGH_WATER:   # the client reads slower than the worker writes
            assert self.transport is not None
            self.transport.pause_reading()
        self._wake()

    def broken(self, error: BridgeError) -> None:
        self.error = error
        super().broken(error)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._wake()

    def _wake(self) -> None:
        waiter, self._arrived = self._arrived, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self) -> tuple[bytes, bytes]:
        """The next frame. Raises IncompleteReadError once the connection closed, BridgeError for
        a broken frame."""
        while not self.frames:
            if self.error is not None:
                raise BridgeError(str(self.error))
            if self.closed:
                raise asyncio.IncompleteReadError(b"", None)
            self._arrived = asyncio.get_running_loop().create_future()
            await self._arrived
        kind, payload = self.frames.popleft()
        self.queued -= len(payload)
        if self.queued <= HIGH_WATER // 2 and not self.closed:
            assert self.transport is not None
            self.transport.resume_reading()   # a no-op unless paused
        return kind, payload

    def usable(self) -> bool:
        return self.error is None and not self.closed and self.transport is not None \
            and not self.transport.is_closing() and not self.frames


class Upstream:
    """The daemon's connections to one worker's socket: forwards an ASGI request and passes its
    answer on as it arrives."""

    def __init__(self, address: str):
        self.address = address
        self._idle: list[_Link] = []
        self._closed = False

    async def forward(self, scope: Scope, headers: list[tuple[bytes, bytes]], body: bytes, receive: Receive,
                      send: Send, refuse: Callable[[str], Awaitable[None]]) -> None:
        """Pass the request (its body already read; `headers` in place of the scope's) to the worker
        and its answer to `send`; `refuse` answers the client when the worker cannot be reached or
        broke off before answering."""
        link: _Link | None = None
        try:
            request = request_frame(scope, headers, body)
            link = await self._connection()
            link.write(request)
            kind, payload = await link.next()
            if kind != START:
                raise BridgeError(f"expected the response's start, got {kind!r}")
            status, answer = read_start(payload)
        except (OSError, asyncio.IncompleteReadError, BridgeError) as e:
            if link is not None:
                link.close()
            log.warning("the MCP worker did not answer: %s", _why(e))
            await refuse(f"the MCP worker did not answer ({type(e).__name__}); try again")
            return
        except BaseException:   # cancelled: the worker's app learns it from the closed connection
            if link is not None:
                link.close()
            raise
        reusable = False
        # the whole response here already (a tool call: the worker writes its frames together): no watch
        watch = None if link.frames and link.frames[-1][0] == END else _Watch(receive, link)
        try:
            await send({"type": "http.response.start", "status": status, "headers": answer})
            reusable = await self._relay(link, send)
        finally:
            if watch is not None:
                reusable = await watch.stop(reusable)
            if reusable and not self._closed and len(self._idle) < MAX_IDLE and link.usable():
                self._idle.append(link)
            else:
                link.close()

    async def _relay(self, link: _Link, send: Send) -> bool:
        """Body frames to `send` until the last; False when the worker or the client broke it off."""
        try:
            while True:
                kind, payload = await link.next()
                if kind == BODY and link.frames and link.frames[0][0] == END:   # both here: one message
                    kind, payload = END, payload + (await link.next())[1]
                if kind == BODY:
                    await send({"type": "http.response.body", "body": payload, "more_body": True})
                elif kind == END:
                    link.finished = True
                    await send({"type": "http.response.body", "body": payload, "more_body": False})
                    return True
                else:
                    raise BridgeError(f"expected a part of the body, got {kind!r}")
        except (OSError, asyncio.IncompleteReadError, BridgeError) as e:
            if not link.gone:
                log.warning("the MCP worker broke off a response: %s", _why(e))
            return False

    async def _connection(self) -> _Link:
        while self._idle:
            link = self._idle.pop()
            if link.usable():
                link.finished = link.gone = False
                return link
            link.close()
        loop = asyncio.get_running_loop()
        _, link = await loop.create_unix_connection(_Link, _os_address(self.address))
        return link

    def close(self) -> None:
        """Close the idle connections; those in use end when the worker stops."""
        self._closed = True
        for link in self._idle:
            link.close()
        self._idle.clear()


class _Watch:
    """Whether the client of a response is still there, asked of the HTTP server (`receive()` returns
    http.disconnect when it leaves, or once the response is complete) only when the response
    runs longer than WATCH_AFTER: then a task waits on it, and closes the worker connection if
    the client leaves before the end."""

    def __init__(self, receive: Receive, link: _Link):
        self.receive = receive
        self.link = link
        self.task: asyncio.Task[None] | None = None
        self.timer = asyncio.get_running_loop().call_later(WATCH_AFTER, self._start)

    def _start(self) -> None:
        self.task = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        if not self.link.finished:
            self.link.gone = True
            assert self.link.transport is not None
            self.link.transport.abort()

    async def stop(self, reusable: bool) -> bool:
        """End the watch; returns whether the connection may be reused."""
        self.timer.cancel()
        task = self.task
        if task is None:
            return reusable
        if reusable:
            # the server answers the pending receive() once the response is complete; no cancellation
            # on this path, as that leaves garbage cycles behind
            await asyncio.wait({task}, timeout=WATCH_END)
            reusable = task.done()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return reusable


def _why(e: BaseException) -> str:
    if isinstance(e, asyncio.IncompleteReadError):
        return "the connection closed"
    return str(e) or type(e).__name__


# -- the worker's side ----------------------------------------------------------------------

class _Exchange:
    """One request on a worker connection, while its app runs. The frames of its response are
    held and written together at its end, or HOLD after the first of them: a tool call's start,
    body and end reach the daemon in one write (one wake-up of the daemon and of its client
    instead of three), and an event of a stream that goes on waits at most HOLD."""

    __slots__ = ("conn", "ended", "gone", "started", "complete", "held", "timer")

    def __init__(self, conn: _Served):
        self.conn = conn
        self.ended = asyncio.Event()   # the response is complete, or the daemon left
        self.gone = False
        self.started = False
        self.complete = False
        self.held: list[bytes] = []
        self.timer: asyncio.TimerHandle | None = None

    def leave(self) -> None:
        """The daemon closed the connection: the app receives http.disconnect; what it sends is dropped."""
        self.gone = True
        self.ended.set()
        self.held.clear()
        if self.timer is not None:
            self.timer.cancel()

    async def write(self, data: bytes, *, hold: bool = False) -> None:
        """Write `data` after what is held; with `hold`, hold it too (see the class)."""
        if self.gone:
            return
        self.held.append(data)
        if not hold or len(data) > CHUNK:
            self.flush()
        elif self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(HOLD, self.flush)
        await self.conn.drain()   # while the daemon does not read, the app waits here

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.held and not self.gone:
            self.conn.write(b"".join(self.held))
        self.held.clear()


class _Served(Frames):
    """One connection from the daemon to the worker: each Q frame starts the app on a request.
    A request is taken once the one before has its response complete (the app may still be
    finishing it); one while a response is still going is a broken protocol."""

    def __init__(self, downstream: Downstream):
        super().__init__()
        self.downstream = downstream
        self.exchange: _Exchange | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """An abstract socket has no file permissions: a connection from any process but the
        daemon is closed unanswered."""
        super().connection_made(transport)
        peer = _peer_pid(transport)
        if peer != self.downstream.daemon:
            log.warning("refused a connection to the MCP worker from pid %s: only the daemon (pid %d) may connect",
                        peer, self.downstream.daemon)
            self.closed = True
            transport.close()
            return
        self.downstream.served.add(self)

    def data_received(self, data: bytes) -> None:
        if not self.closed:
            super().data_received(data)

    def frame_received(self, kind: bytes, payload: bytes) -> None:
        busy = self.exchange is not None and not self.exchange.complete and not self.exchange.gone
        if kind != REQUEST or busy:
            raise BridgeError(f"a {kind!r} frame while {'busy' if busy else 'idle'}")
        scope, body = read_request(payload)
        self.exchange = _Exchange(self)
        self.downstream.run(self.exchange, scope, body)

    def broken(self, error: BridgeError) -> None:
        log.warning("the daemon sent what this worker cannot read (%s); closing its connection", error)
        self.closed = True
        if self.exchange is not None:
            self.exchange.leave()
        assert self.transport is not None
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.exchange is not None:
            self.exchange.leave()
        self.downstream.served.discard(self)


class Downstream:
    """The worker's end: serves `app` on a unix socket to the daemon, its parent process, alone."""

    def __init__(self, app: ASGIApp, address: str):
        self.app = app
        self.address = address
        self.daemon = os.getppid()
        self.served: set[_Served] = set()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen on the socket. Raises OSError when it cannot (the name is taken)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _Served(self), _os_address(self.address))

    async def aclose(self) -> None:
        """Stop listening and close every connection (the daemon's streams end)."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.served):
            conn.close()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=1.0)

    def run(self, exchange: _Exchange, scope: Scope, body: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self._run(exchange, scope, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, exchange: _Exchange, scope: Scope, body: bytes | None) -> None:
        """The app on one request, as uvicorn would run it: the body at the first receive(), then
        http.disconnect once the response is complete or the daemon hung up; a 500 for an error
        before the response started, a broken-off connection after."""

        async def receive() -> dict[str, Any]:
            nonlocal body
            if body is not None:
                message = {"type": "http.request", "body": body, "more_body": False}
                body = None
                return message
            await exchange.ended.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and not exchange.started:
                exchange.started = True
                head = b"%d" % message["status"] + NUL + join(message.get("headers", []))
                await exchange.write(frame(START, head), hold=True)
            elif message["type"] == "http.response.body" and exchange.started and not exchange.complete:
                more, chunk = message.get("more_body", False), message.get("body", b"")
                if not more:
                    exchange.complete = True
                    exchange.ended.set()
                while len(chunk) > CHUNK:   # a large body in parts the daemon passes on as they come
                    await exchange.write(frame(BODY, chunk[:CHUNK]))
                    chunk = chunk[CHUNK:]
                await exchange.write(frame(BODY if more else END, chunk), hold=more)
            else:
                raise RuntimeError(f"unexpected ASGI message {message['type']!r}")

        try:
            await self.app(scope, receive, send)
        except Exception:
            log.exception("the MCP endpoint failed on %s %s", scope["method"], scope["path"])
        if exchange.complete:
            return
        if not exchange.started:   # what uvicorn does: 500 (the connection stays usable)
            exchange.complete = True
            exchange.ended.set()
            await exchange.write(frame(START, b"500\0content-type\0text/plain") + frame(END, b"Internal Server Error"))
        else:                      # broken off mid-response: the daemon sees the connection close
            exchange.flush()
            exchange.leave()
            assert exchange.conn.transport is not None
            exchange.conn.transport.abort()
