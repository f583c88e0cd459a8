"""The hop between the daemon's /mcp and its MCP worker: ASGI messages as frames on a unix socket.

The daemon has already parsed the client's HTTP request. Passing it on as HTTP again took a second
HTTP/1.1 client in the daemon (httpcore and h11) and a second HTTP server in the worker (uvicorn and
h11), each parsing and re-serialising every request and every SSE chunk: about 0.65 ms of a 5 ms
tool call went to the hop. Here the request is one frame and each ASGI message of the answer is one
frame, so either side does little more than a write and a read per message (~0.25 ms, most of it
the two processes waking up; see `docs/architecture.md`).

A frame is one byte of kind, four bytes of length (big-endian) and the payload:

    daemon -> worker   Q  meta length (4 bytes), meta (JSON: method, path, query, headers, client, server), body
    worker -> daemon   S  JSON {status, headers}: http.response.start
                       B  a part of the body (http.response.body, more to come)
                       E  the last part of the body (the response is complete)
                       D  the app returned: the connection takes the next request

A connection carries one request at a time (like HTTP/1.1 keep-alive); the daemon keeps up to
`MAX_IDLE` idle ones. When the daemon's client goes away mid-response, the daemon closes the
connection and the worker's app receives `http.disconnect`, as it would from uvicorn.

The socket is in Linux's abstract namespace (a random name, nothing on disk, gone with its
processes) and the worker answers its parent, the daemon, alone (SO_PEERCRED): other processes of
the machine reach /mcp only through the daemon's port, its Host/Origin and token checks.
This module must not import the `mcp` SDK: the daemon imports it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import socket
import struct
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

HEAD = struct.Struct(">cI")
META = struct.Struct(">I")
REQUEST, START, BODY, END, DONE = b"Q", b"S", b"B", b"E", b"D"
MAX_FRAME = 8 * 1024 * 1024   # a request is at most 1 MiB + 1 byte of body (`http.MAX_BODY`) and its headers
CHUNK = 1024 * 1024           # the worker sends a larger part of a body as several frames
MAX_IDLE = 8                  # idle connections the daemon keeps; each open stream holds one more
DONE_TIMEOUT = 5.0            # how long the daemon waits for D after the response before dropping the connection
PREFIX = "fazt-mcp-"          # of the socket's name


class BridgeError(Exception):
    """A frame that breaks the protocol (unknown kind, too long, out of order)."""


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return HEAD.pack(kind, len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """The next frame. Raises IncompleteReadError at the end of the stream, BridgeError for a frame
    longer than MAX_FRAME."""
    kind, size = HEAD.unpack(await reader.readexactly(HEAD.size))
    if size > MAX_FRAME:
        raise BridgeError(f"a frame of {size} bytes (at most {MAX_FRAME})")
    return kind, (await reader.readexactly(size) if size else b"")


def _latin(pairs: Any) -> list[list[str]]:
    return [[k.decode("latin-1"), v.decode("latin-1")] for k, v in pairs]


def _bytes(pairs: Any) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs]


def new_address() -> str:
    """A fresh name for a worker's socket in Linux's abstract namespace (`@` stands for the leading
    NUL byte): nothing on disk to create, protect or leave behind when both processes are killed."""
    return f"@{PREFIX}{secrets.token_hex(8)}"


def ours(address: str) -> bool:
    """Whether `address` is one `new_address` makes (the daemon checks what its worker printed)."""
    return re.fullmatch(f"@{PREFIX}[0-9a-f]{{16}}", address) is not None


def _os_address(address: str) -> str:
    return "\0" + address[1:]


def _peer_pid(writer: asyncio.StreamWriter) -> int | None:
    """The process id at the other end of a unix socket connection (SO_PEERCRED)."""
    sock = writer.get_extra_info("socket")
    try:
        pid, _, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    except (OSError, AttributeError):
        return None
    return int(pid)


# -- the daemon's side ----------------------------------------------------------------------

@dataclass(eq=False)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    finished: bool = False   # the response is complete: the client leaving now is not a disconnect
    gone: bool = False       # the client went away mid-response; the connection was closed for it

    def usable(self) -> bool:
        return not (self.reader.at_eof() or self.writer.is_closing())

    def close(self) -> None:
        self.writer.close()


class Upstream:
    """The daemon's connections to one worker's socket: forwards an ASGI request and passes its
    answer on as it arrives."""

    def __init__(self, address: str):
        self.address = address
        self._idle: list[_Conn] = []
        self._closed = False

    async def forward(self, scope: Scope, body: bytes, receive: Receive, send: Send,
                      refuse: Callable[[str], Awaitable[None]]) -> None:
        """Pass the request (its body already read) to the worker and its answer to `send`; `refuse`
        answers the client when the worker cannot be reached or broke off before answering."""
        meta = json.dumps({"method": scope["method"], "path": scope["path"],
                           "raw_path": (scope.get("raw_path") or scope["path"].encode()).decode("latin-1"),
                           "query": (scope.get("query_string") or b"").decode("latin-1"),
                           "headers": _latin(scope["headers"]), "client": scope.get("client"),
                           "server": scope.get("server")}).encode()
        conn: _Conn | None = None
        try:
            conn = await self._connection()
            conn.writer.write(HEAD.pack(REQUEST, META.size + len(meta) + len(body)) + META.pack(len(meta))
                              + meta + body)
            kind, payload = await read_frame(conn.reader)
            if kind != START:
                raise BridgeError(f"expected the response's start, got {kind!r}")
            start = json.loads(payload)
        except (OSError, asyncio.IncompleteReadError, BridgeError, ValueError) as e:
            if conn is not None:
                conn.close()
            log.warning("the MCP worker did not answer: %s", _why(e))
            await refuse(f"the MCP worker did not answer ({type(e).__name__}); try again")
            return
        except BaseException:   # cancelled: the worker's app learns it from the closed connection
            if conn is not None:
                conn.close()
            raise
        reusable = False
        watcher: asyncio.Future[None] | None = None
        try:
            await send({"type": "http.response.start", "status": start["status"], "headers": _bytes(start["headers"])})
            # receive() returns only when the client goes away (close the hop, so the worker's app
            # learns it) or once the response is complete
            watcher = asyncio.ensure_future(_watch(receive, conn))
            reusable = await self._relay(conn, send)
            if reusable:
                # uvicorn answers the pending receive() once the response is complete; no
                # cancellation on this common path, as that leaves garbage cycles behind
                await asyncio.wait({watcher}, timeout=DONE_TIMEOUT)
                kind, _ = await asyncio.wait_for(read_frame(conn.reader), DONE_TIMEOUT)
                reusable = kind == DONE
        except (OSError, asyncio.IncompleteReadError, BridgeError, asyncio.TimeoutError):
            reusable = False
        finally:
            if watcher is not None:
                if not watcher.done():
                    watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
            if reusable and not self._closed and len(self._idle) < MAX_IDLE and conn.usable():
                self._idle.append(conn)
            else:
                conn.close()

    async def _relay(self, conn: _Conn, send: Send) -> bool:
        """Body frames to `send` until the last; False when the worker or the client broke it off."""
        try:
            while True:
                kind, payload = await read_frame(conn.reader)
                if kind == BODY:
                    await send({"type": "http.response.body", "body": payload, "more_body": True})
                elif kind == END:
                    conn.finished = True
                    await send({"type": "http.response.body", "body": payload, "more_body": False})
                    return True
                else:
                    raise BridgeError(f"expected a part of the body, got {kind!r}")
        except (OSError, asyncio.IncompleteReadError, BridgeError) as e:
            if not conn.gone:
                log.warning("the MCP worker broke off a response: %s", _why(e))
            return False

    async def _connection(self) -> _Conn:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable():
                conn.finished = conn.gone = False
                return conn
            conn.close()
        reader, writer = await asyncio.open_unix_connection(_os_address(self.address))
        return _Conn(reader, writer)

    def close(self) -> None:
        """Close the idle connections; those in use end when the worker stops."""
        self._closed = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()


async def _watch(receive: Receive, conn: _Conn) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    if not conn.finished:
        conn.gone = True
        conn.writer.transport.abort()


def _why(e: BaseException) -> str:
    if isinstance(e, asyncio.IncompleteReadError):
        return "the connection closed"
    return str(e) or type(e).__name__


# -- the worker's side ----------------------------------------------------------------------

@dataclass(eq=False)
class _Exchange:
    """One request on a worker connection, while its app runs."""

    writer: asyncio.StreamWriter
    ended: asyncio.Event = field(default_factory=asyncio.Event)   # the response is complete, or the daemon left
    gone: bool = False
    started: bool = False
    complete: bool = False
    task: asyncio.Task[None] | None = None

    def leave(self) -> None:
        """The daemon closed the connection: the app receives http.disconnect; what it sends is dropped."""
        self.gone = True
        self.ended.set()

    async def write(self, data: bytes) -> None:
        if self.gone:
            return
        try:
            self.writer.write(data)
            await self.writer.drain()
        except ConnectionError:
            self.leave()


class Downstream:
    """The worker's end: serves `app` on a unix socket to the daemon, its parent process, alone."""

    def __init__(self, app: ASGIApp, address: str):
        self.app = app
        self.address = address
        self.daemon = os.getppid()
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen on the socket. Raises OSError when it cannot (the name is taken)."""
        self._server = await asyncio.start_unix_server(self._connection, path=_os_address(self.address))

    async def aclose(self) -> None:
        """Stop listening and close every connection (the daemon's streams end)."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=1.0)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The requests of one connection, one at a time; reading on while the app runs is what
        notices the daemon hanging up (the client went away). An abstract socket has no file
        permissions: a connection from any process but the daemon is closed unanswered."""
        peer = _peer_pid(writer)
        if peer != self.daemon:
            log.warning("refused a connection to the MCP worker from pid %s: only the daemon (pid %d) may connect",
                        peer, self.daemon)
            writer.close()
            return
        self._writers.add(writer)
        exchange: _Exchange | None = None
        try:
            while True:
                try:
                    kind, payload = await read_frame(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if kind != REQUEST or (exchange is not None and exchange.task is not None
                                       and not exchange.task.done()):
                    raise BridgeError(f"a {kind!r} frame while {'busy' if kind == REQUEST else 'idle'}")
                scope, body = _request(payload)
                exchange = _Exchange(writer)
                exchange.task = asyncio.create_task(self._run(exchange, scope, body))
                self._tasks.add(exchange.task)
                exchange.task.add_done_callback(self._tasks.discard)
        except BridgeError as e:
            log.warning("the daemon sent what this worker cannot read (%s); closing its connection", e)
        finally:
            if exchange is not None:
                exchange.leave()
            self._writers.discard(writer)
            writer.close()

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
                await exchange.write(frame(START, json.dumps({"status": message["status"],
                                                              "headers": _latin(message.get("headers", []))}).encode()))
            elif message["type"] == "http.response.body" and exchange.started and not exchange.complete:
                more, chunk = message.get("more_body", False), message.get("body", b"")
                if not more:
                    exchange.complete = True
                    exchange.ended.set()
                while len(chunk) > CHUNK:   # a large body in parts the daemon passes on as they come
                    await exchange.write(frame(BODY, chunk[:CHUNK]))
                    chunk = chunk[CHUNK:]
                await exchange.write(frame(BODY if more else END, chunk))
            else:
                raise RuntimeError(f"unexpected ASGI message {message['type']!r}")

        try:
            await self.app(scope, receive, send)
        except Exception:
            log.exception("the MCP endpoint failed on %s %s", scope["method"], scope["path"])
        if exchange.complete:
            await exchange.write(frame(DONE))
        elif not exchange.started:   # what uvicorn does: 500 (the connection stays usable)
            await exchange.write(frame(START, b'{"status": 500, "headers": [["content-type", "text/plain"]]}')
                                 + frame(END, b"Internal Server Error") + frame(DONE))
        else:                        # broken off mid-response: the daemon sees the connection close
            exchange.leave()
            exchange.writer.transport.abort()


def _request(payload: bytes) -> tuple[Scope, bytes]:
    """The ASGI scope and the body of a Q frame. Raises BridgeError when it cannot be read."""
    try:
        (size,) = META.unpack_from(payload)
        meta = json.loads(payload[META.size:META.size + size])
        client, server = meta.get("client"), meta.get("server")
        scope: Scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                        "method": meta["method"], "scheme": "http", "path": meta["path"],
                        "raw_path": meta["raw_path"].encode("latin-1"), "query_string": meta["query"].encode("latin-1"),
                        "root_path": "", "headers": _bytes(meta["headers"]),
                        "client": tuple(client) if client else None, "server": tuple(server) if server else None}
    except (struct.error, ValueError, KeyError, TypeError, AttributeError) as e:
        raise BridgeError(f"an unreadable request ({type(e).__name__}: {e})") from None
    return scope, payload[META.size + size:]
