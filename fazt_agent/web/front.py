"""The control plane's front door: /healthz and /mcp on bare asyncio, everything else handed to uvicorn.

A daemon that is only probed for health (systemd, a load balancer, the owner's uptime check) needs
none of uvicorn, h11, click or starlette: `Front` listens on the control plane's socket with an
asyncio protocol of its own that answers `GET` and `HEAD /healthz` (HTTP/1.0 and 1.1, no request
body). A connection whose request it does not serve (any other path or method, a body it does not
take, an upgrade, a malformed request: uvicorn judges those) is handed, with the bytes read so far,
to one of uvicorn's protocols, so that request is answered by the full control plane as if uvicorn
had read it. At the first such request it builds the app of every route (`build()`, `web/app.py
create_app`) and starts uvicorn without a socket of its own: the front door keeps accepting every
connection, so /healthz stays bare however the control plane was used.

/mcp, once the daemon gave its endpoint (`adopt(..., mcp=)`, the MCP worker's bridge), is served
here too: a plain request for exactly /mcp (`POST`, `GET` or `DELETE`, HTTP/1.1 or 1.0, a
`content-length` body of at most `MAX_BODY`, no `transfer-encoding`, `expect` or `upgrade`) is
passed to the endpoint as ASGI (`_Exchange`), its answer written back with a `content-length` when
the whole body is known at its first part, chunked otherwise (an SSE stream), close-delimited for
HTTP/1.0. The endpoint is what uvicorn would call for the same request; this spares the daemon
uvicorn's h11 parser and serialiser (0.6-0.9 ms of CPU a tool call, `bench/mcp_latency.py`), and a
daemon used through MCP alone never loads uvicorn or starlette. Anything else for /mcp goes to
uvicorn, which calls the same endpoint.

/healthz answers alike before and after (tests/test_import_budget.py): the same status, JSON and
header names (`date`, `server`, `content-length`, `content-type`), keep-alive as uvicorn keeps it
(HTTP/1.1 unless the client says `connection: close`; HTTP/1.0 closes). A bare connection is closed
when no complete request (head and body) arrives within `HEAD_TIMEOUT` seconds of the last bytes
(uvicorn's keep-alive timeout), so idle sockets cannot pile up.

A front door may be opened before the daemon it serves exists (`_start.py`: the daemon's start from
the validated snapshot): it is then made without `build`, answers /healthz with what it was given,
and a request for anything else waits until the daemon `adopt`s it (its health and its app).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, Callable

from ._http import MCP_MAX_BODY as MAX_BODY, SERVER, Health, bind, health_response, http_date

log = logging.getLogger(__name__)
HEAD_TIMEOUT = 5.0
MAX_HEAD = 16 * 1024   # a longer head goes to uvicorn, which judges it
# MAX_BODY: a longer /mcp body goes to uvicorn (the MCP worker answers it 413)
STOP_TIMEOUT = 2.0     # how long `stop` lets a /mcp request in progress finish
MCP_METHODS = (b"POST", b"GET", b"DELETE")
# what may make up a token (a method, a header's name: RFC 9110 5.6.2), a header's value (no NUL, CR,
# LF or other controls) and a request target (origin-form, printable ASCII): `bytes.translate`
# deleting them leaves nothing (no regex to compile when the daemon starts)
_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_VCHAR = bytes([9, *range(0x20, 0x7f), *range(0x80, 0x100)])
_PCHAR = bytes(range(0x21, 0x7f))


def _token(value: bytes) -> bool:
    return bool(value) and not value.translate(None, _TCHAR)


class Front:
    """The control plane's listener (see the module's docstring). `build()` returns the ASGI app of
    every route; it is called once, at the first request the bare protocol does not serve. `mcp()`
    returns the /mcp endpoint; it is called at the first /mcp request served here."""

    def __init__(self, health: Health, build: Callable[[], Any] | None = None,
                 mcp: Callable[[], Any] | None = None):
        self.health = health
        self.build = build
        self.mcp = mcp
        self.address: tuple[str, int] | None = None
        self.sock: socket.socket | None = None
        self.server: Any = None          # uvicorn's, once started
        self.task: asyncio.Task[None] | None = None
        self._bare: asyncio.AbstractServer | None = None
        self._bare_conns: set[_Bare] = set()
        self._upgrading: asyncio.Task[None] | None = None
        self._adopted: asyncio.Future[None] | None = None   # what a request waits on until `adopt`
        self._mcp_app: Any = None
        self._stopping = False

    @property
    def upgraded(self) -> bool:
        return self.server is not None

    async def start(self, host: str, port: int, setting: str) -> None:
        """Bind and accept. Raises FaztAgentError when the address cannot be bound."""
        self.sock = bind(host, port, setting)
        self.address = (host, port)
        self._bare = await asyncio.get_running_loop().create_server(lambda: _Bare(self), sock=self.sock)

    def adopt(self, health: Health, build: Callable[[], Any], mcp: Callable[[], Any] | None = None) -> None:
        """From now on answer with `health`, /mcp with `mcp()`'s endpoint and, at the first other
        request, `build()`'s app (a request already waiting for it goes on)."""
        self.health, self.build, self.mcp = health, build, mcp
        if self._adopted is not None and not self._adopted.done():
            self._adopted.set_result(None)

    def mcp_app(self) -> Any:
        """The /mcp endpoint, made at its first request."""
        if self._mcp_app is None:
            assert self.mcp is not None
            self._mcp_app = self.mcp()
        return self._mcp_app

    def _handover(self, conn: _Bare) -> None:
        """A request the bare protocol does not serve: start uvicorn (once), then give it `conn`."""
        self._bare_conns.discard(conn)
        conn.cancel_timer()
        conn.transport.pause_reading()
        if self._upgrading is None:
            self._upgrading = asyncio.get_running_loop().create_task(self._upgrade(), name="control-plane")
        self._upgrading.add_done_callback(lambda task: self._give(conn, task))

    async def _upgrade(self) -> None:
        if self.build is None:   # opened before its daemon: wait until the daemon adopts it
            self._adopted = self._adopted or asyncio.get_running_loop().create_future()
            await self._adopted
            assert self.build is not None
        from .app import serve   # uvicorn and starlette: from here on

        app = self.build()
        self.server, self.task = await serve(app, None)   # no socket: the front door hands it connections

    def _give(self, conn: _Bare, upgrade: asyncio.Task[None]) -> None:
        if conn.transport.is_closing():
            return
        if upgrade.cancelled() or upgrade.exception() is not None or self.server is None:
            if self._upgrading is upgrade:   # the next request tries again
                self._upgrading = None
                if not upgrade.cancelled():
                    log.error("the control plane failed to start: %s", upgrade.exception(),
                              exc_info=upgrade.exception())
            conn.transport.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            conn.transport.close()
            return
        config = self.server.config
        protocol = config.http_protocol_class(config=config, server_state=self.server.server_state,
                                              app_state=self.server.lifespan.state)
        conn.transport.set_protocol(protocol)
        protocol.connection_made(conn.transport)
        conn.transport.resume_reading()   # first: uvicorn's flow control may pause it again for what follows
        if conn.buffer:
            protocol.data_received(bytes(conn.buffer))

    async def stop(self) -> None:
        """Stop accepting, let the /mcp requests in progress finish (`STOP_TIMEOUT`), end the bare
        connections, and stop uvicorn if it was started."""
        self._stopping = True
        if self._bare is not None:
            self._bare.close()
        if self._adopted is not None and not self._adopted.done():
            self._adopted.cancel()   # never adopted (its daemon failed to start): the waiting requests get 503
        if self._upgrading is not None and not self._upgrading.done():
            await asyncio.wait([self._upgrading], timeout=5)   # the requests waiting for it are answered first
        running = [conn.exchange.task for conn in self._bare_conns if conn.exchange is not None]
        if running:
            await asyncio.wait(running, timeout=STOP_TIMEOUT)
        for conn in list(self._bare_conns):
            conn.transport.close()
        if self.server is not None and self.task is not None:
            from .app import stop

            await stop(self.server, self.task)
        if self.sock is not None:
            self.sock.close()


class _Head:
    """A request's head, as `_parse` read it."""

    __slots__ = ("method", "path", "query", "version", "headers", "close", "length", "plain")

    def __init__(self, method: bytes, path: bytes, query: bytes, version: bytes, headers: list[tuple[bytes, bytes]],
                 close: bool, length: int, plain: bool):
        self.method, self.path, self.query = method, path, query
        self.version = version      # b"1.1" or b"1.0"
        self.headers = headers      # names lowercased, values without surrounding whitespace
        self.close = close          # the connection ends after this request
        self.length = length        # of the body
        self.plain = plain          # no transfer-encoding, expect or upgrade


def _parse(head: bytes) -> _Head | None:
    """A request head (without its blank line) read strictly, or None when anything in it is not
    plainly valid: uvicorn then judges it (answers 400, or takes what the bare protocol does not)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _token(parts[0]) or parts[1][:1] != b"/" or parts[1].translate(None, _PCHAR) or \
            parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        return None
    path, _, query = parts[1].partition(b"?")
    version = parts[2][5:]
    close, host, plain, length = version == b"1.0", False, True, None
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _token(name):
            return None   # malformed, or an obsolete folded line: uvicorn answers 400
        value = value.strip(b" \t")
        if value.translate(None, _VCHAR):
            return None
        name = name.lower()
        if name == b"content-length":
            if length is not None or not value.isdigit() or len(value) > 18:
                return None
            length = int(value)
        elif name in (b"transfer-encoding", b"upgrade", b"expect"):
            plain = False
        elif name == b"connection" and b"close" in value.lower():
            close = True
        elif name == b"host":
            if host:
                return None
            host = True
        headers.append((name, value))
    if not host and version == b"1.1":
        return None   # HTTP/1.1 requires Host: uvicorn (h11) answers 400
    return _Head(parts[0], path, query, version, headers, close, length or 0, plain)


class _Bare(asyncio.Protocol):
    """One connection of the front door: answers /healthz, serves /mcp, hands the first other request over."""

    def __init__(self, front: Front):
        self.front = front
        self.buffer = bytearray()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.exchange: _Exchange | None = None
        self.lost = False
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._drained: asyncio.Future[None] | None = None   # set while the transport's buffer is full

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.front._bare_conns.add(self)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.front._bare_conns.discard(self)
        self.cancel_timer()
        self.resume_writing()
        if self.exchange is not None:
            self.exchange.wake()

    def pause_writing(self) -> None:
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    async def drain(self) -> None:
        if self._drained is not None:
            await self._drained

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        """Close the connection HEAD_TIMEOUT from now unless a request comes (one timer a connection:
        bytes arriving and requests answered move its deadline, the timer checks it when it fires,
        and a /mcp request in progress puts it off)."""
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + HEAD_TIMEOUT
        if self._timer is None:
            self._timer = loop.call_at(self._deadline, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        loop = asyncio.get_running_loop()
        if self.exchange is not None:   # a stream may run for long: its end arms the deadline again
            self._deadline = loop.time() + HEAD_TIMEOUT
        elif loop.time() >= self._deadline:
            self.transport.close()
            return
        self._timer = loop.call_at(self._deadline, self._expire)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.exchange is not None:   # a /mcp request in progress: what follows waits for its end
            if len(self.buffer) > MAX_HEAD + MAX_BODY:
                self.transport.pause_reading()
            return
        self._arm()   # HEAD_TIMEOUT again from these bytes
        self._serve()

    def _serve(self) -> None:
        """Answer the complete requests in the buffer, up to the first /mcp one or one to hand over."""
        while not self.transport.is_closing():
            if self.front._stopping:   # nothing new once the door is closing
                self.transport.close()
                return
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    self.front._handover(self)
                return
            head = _parse(bytes(self.buffer[:end]))
            if head is None:
                self.front._handover(self)   # this request and what follows it
                return
            if head.path == b"/healthz" and head.method in (b"GET", b"HEAD") and head.plain and head.length == 0:
                del self.buffer[:end + 4]
                self._healthz(head)
                continue
            if head.path == b"/mcp" and head.method in MCP_METHODS and head.plain and head.length <= MAX_BODY \
                    and self.front.mcp is not None:
                if len(self.buffer) < end + 4 + head.length:
                    return   # the body is still arriving
                body = bytes(self.buffer[end + 4:end + 4 + head.length])
                del self.buffer[:end + 4 + head.length]
                self.exchange = _Exchange(self, head, body)
                return
            self.front._handover(self)
            return

    def _healthz(self, head: _Head) -> None:
        status, body = health_response(self.front.health)
        reason = b"OK" if status == 200 else b"Service Unavailable"
        self.transport.write(b"HTTP/1.1 %d %s\r\ndate: %s\r\nserver: %s\r\ncontent-length: %d\r\n"
                             b"content-type: application/json\r\n%s\r\n%s" % (
                                 status, reason, http_date(), SERVER, len(body),
                                 b"connection: close\r\n" if head.close else b"",
                                 body if head.method == b"GET" else b""))
        if head.close:
            self.transport.close()

    def finished(self, keep_alive: bool) -> None:
        """The /mcp request in progress is answered: read the next one, or close."""
        self.exchange = None
        if self.lost:
            return
        if not keep_alive or self.front._stopping:
            self.transport.close()
            return
        self.transport.resume_reading()
        self._arm()
        self._serve()


class _Exchange:
    """One /mcp request on a bare connection, passed to the endpoint as uvicorn would pass it: the
    whole body at the first `receive()`, then `http.disconnect` once the client has gone or the
    response is complete; `send()` writes the response as it comes."""

    def __init__(self, conn: _Bare, head: _Head, body: bytes):
        transport = conn.transport
        self.conn, self.head, self.body = conn, head, body
        self.close = head.close
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.started = False     # http.response.start received
        self.written = False     # the response's head is on the wire
        self.chunked = False
        self.complete = False
        self._read = False
        self._over = asyncio.Event()   # the client has gone, or the response is complete
        self.scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
                      "http_version": head.version.decode(), "server": _address(transport.get_extra_info("sockname")),
                      "client": _address(transport.get_extra_info("peername")), "scheme": "http",
                      "method": head.method.decode(), "root_path": "", "path": head.path.decode("latin-1"),
                      "raw_path": head.path, "query_string": head.query, "headers": head.headers}
        self.task = asyncio.get_running_loop().create_task(self._run(), name="mcp-request")

    def wake(self) -> None:
        self._over.set()

    async def receive(self) -> dict[str, Any]:
        if not self._read:
            self._read = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self._over.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("the response has already started")
            self.started, self.status = True, int(message["status"])
            self.headers = list(message.get("headers", []))
            return
        if kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        if not self.started or self.complete:
            raise RuntimeError("http.response.body outside a response")
        body, more = bytes(message.get("body", b"")), bool(message.get("more_body", False))
        if self.conn.lost:
            self.complete = self.complete or not more
            return
        out = b"" if self.written else self._head(body, more)
        self.written = True
        if self.chunked:
            out += (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + (b"" if more else b"0\r\n\r\n")
        else:
            out += body
        if out:
            self.conn.transport.write(out)
        if not more:
            self.complete = True
            self.wake()
        else:
            await self.conn.drain()

    def _head(self, body: bytes, more: bool) -> bytes:
        lines = [b"HTTP/1.1 %d %s" % (self.status, _reason(self.status)), b"date: " + http_date(),
                 b"server: " + SERVER]
        length = False
        for name, value in self.headers:
            name = name.lower()
            if name in (b"date", b"server", b"transfer-encoding"):
                continue
            if name == b"connection":
                self.close = self.close or b"close" in value.lower()
                continue
            length = length or name == b"content-length"
            lines.append(name + b": " + value)
        if not length and self.status >= 200 and self.status not in (204, 304):
            if not more:
                lines.append(b"content-length: %d" % len(body))
            elif self.head.version == b"1.1":
                self.chunked = True
                lines.append(b"transfer-encoding: chunked")
            else:
                self.close = True   # HTTP/1.0: the body ends with the connection
        if self.close:
            lines.append(b"connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n"

    async def _run(self) -> None:
        try:
            await self.conn.front.mcp_app()(self.scope, self.receive, self.send)
        except Exception:
            log.exception("the /mcp request failed")
        finally:
            if not self.complete and not self.conn.lost:
                if not self.written:   # nothing sent yet: say so
                    self.conn.transport.write(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n"
                                              b"connection: close\r\n\r\n")
                self.close = True
            self.complete = True
            self.wake()
            self.conn.finished(not self.close)


_REASONS: dict[int, bytes] = {}


def _reason(status: int) -> bytes:
    """The status's reason phrase (empty for one HTTP does not name, as the grammar allows)."""
    reason = _REASONS.get(status)
    if reason is None:
        from http import HTTPStatus   # here: the idle daemon's door answers /healthz alone, with its own two

        try:
            reason = HTTPStatus(status).phrase.encode("ascii")
        except ValueError:
            reason = b""
        _REASONS[status] = reason
    return reason


def _address(value: Any) -> list[Any] | None:
    return [value[0], value[1]] if isinstance(value, tuple) and len(value) >= 2 else None
