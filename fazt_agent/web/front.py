"""The control plane's front door: /healthz on bare asyncio until anything else is asked for.

A daemon that is only probed for health (systemd, a load balancer, the owner's uptime check) needs
none of uvicorn, h11, click or starlette: `Front` listens on the control plane's socket with an
asyncio protocol of its own that answers `GET` and `HEAD /healthz` (HTTP/1.0 and 1.1, no request
body) and nothing else. At the first request it does not answer (any other path or method, a
body, an upgrade, a malformed request: uvicorn judges those), it builds the app of every route
(`build()`, `web/app.py create_app`), starts uvicorn on the same socket, and hands the connection
that asked to one of uvicorn's protocols with the bytes read so far, so that request is answered by
the full control plane as if uvicorn had read it. From then on uvicorn accepts every connection.

/healthz answers alike before and after (tests/test_import_budget.py): the same status, JSON and
header names (`date`, `server`, `content-length`, `content-type`), keep-alive as uvicorn keeps it
(HTTP/1.1 unless the client says `connection: close`; HTTP/1.0 closes). A bare connection is closed
when no complete request head arrives within `HEAD_TIMEOUT` seconds (uvicorn's keep-alive
timeout), so idle sockets cannot pile up.

A front door may be opened before the daemon it serves exists (`_start.py`: the daemon's start from
the validated snapshot): it is then made without `build`, answers /healthz with what it was given,
and a request for anything else waits until the daemon `adopt`s it (its health and its app).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, Callable

from ._http import SERVER, Health, bind, health_response, http_date

log = logging.getLogger(__name__)
HEAD_TIMEOUT = 5.0
MAX_HEAD = 16 * 1024   # a longer head goes to uvicorn, which judges it


class Front:
    """The control plane's listener (see the module's docstring). `build()` returns the ASGI app of
    every route; it is called once, at the first request /healthz's bare answer does not cover."""

    def __init__(self, health: Health, build: Callable[[], Any] | None = None):
        self.health = health
        self.build = build
        self.address: tuple[str, int] | None = None
        self.sock: socket.socket | None = None
        self.server: Any = None          # uvicorn's, once it took over
        self.task: asyncio.Task[None] | None = None
        self._bare: asyncio.AbstractServer | None = None
        self._bare_conns: set[_Bare] = set()
        self._upgrading: asyncio.Task[None] | None = None
        self._adopted: asyncio.Future[None] | None = None   # what a request waits on until `adopt`

    @property
    def upgraded(self) -> bool:
        return self.server is not None

    async def start(self, host: str, port: int, setting: str) -> None:
        """Bind and accept. Raises FaztAgentError when the address cannot be bound."""
        self.sock = bind(host, port, setting)
        self.address = (host, port)
        # the bare server gets a duplicate: closing it later leaves the socket itself listening for uvicorn
        self._bare = await asyncio.get_running_loop().create_server(lambda: _Bare(self), sock=self.sock.dup())

    def adopt(self, health: Health, build: Callable[[], Any]) -> None:
        """From now on answer with `health` and, at the first other request, `build()`'s app (a request
        already waiting for it goes on)."""
        self.health, self.build = health, build
        if self._adopted is not None and not self._adopted.done():
            self._adopted.set_result(None)

    def _handover(self, conn: _Bare) -> None:
        """A request the bare protocol does not answer: start uvicorn (once), then give it `conn`."""
        conn.transport.pause_reading()
        if self._upgrading is None:
            self._upgrading = asyncio.get_running_loop().create_task(self._upgrade(), name="control-plane")
        self._upgrading.add_done_callback(lambda task: self._give(conn, task))

    async def _upgrade(self) -> None:
        assert self.sock is not None and self._bare is not None
        if self.build is None:   # opened before its daemon: wait until the daemon adopts it
            self._adopted = self._adopted or asyncio.get_running_loop().create_future()
            await self._adopted
            assert self.build is not None
        from .app import serve   # uvicorn and starlette: from here on

        app = self.build()
        self._bare.close()   # new connections wait in the backlog for uvicorn
        try:
            self.server, self.task = await serve(app, self.sock)
        except BaseException:   # the bare door again, so /healthz still answers and the next request retries
            self._bare = await asyncio.get_running_loop().create_server(lambda: _Bare(self), sock=self.sock.dup())
            raise

    def _give(self, conn: _Bare, upgrade: asyncio.Task[None]) -> None:
        self._bare_conns.discard(conn)
        conn.cancel_timer()
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
        """Stop accepting, end the bare connections, and stop uvicorn if it took over."""
        if self._bare is not None:
            self._bare.close()
        if self._adopted is not None and not self._adopted.done():
            self._adopted.cancel()   # never adopted (its daemon failed to start): the waiting requests get 503
        if self._upgrading is not None and not self._upgrading.done():
            await asyncio.wait([self._upgrading], timeout=5)   # the requests waiting for it are answered first
        for conn in list(self._bare_conns):
            conn.transport.close()
        if self.server is not None and self.task is not None:
            from .app import stop

            await stop(self.server, self.task)
        if self.sock is not None:
            self.sock.close()


class _Bare(asyncio.Protocol):
    """One connection before uvicorn: answers each /healthz request head, hands the first other one over."""

    def __init__(self, front: Front):
        self.front = front
        self.buffer = bytearray()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.front.upgraded:   # accepted just before the bare server closed
            self.front._handover(self)
            return
        self.front._bare_conns.add(self)
        self._timer = asyncio.get_running_loop().call_later(HEAD_TIMEOUT, transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.front._bare_conns.discard(self)
        self.cancel_timer()

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while not self.transport.is_closing():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    self.front._handover(self)
                return
            request = _healthz_request(bytes(self.buffer[:end]))
            if request is None or self.front.upgraded:
                self.front._handover(self)   # this request and what follows it
                return
            method, close = request
            del self.buffer[:end + 4]
            status, body = health_response(self.front.health)
            reason = b"OK" if status == 200 else b"Service Unavailable"
            self.transport.write(b"HTTP/1.1 %d %s\r\ndate: %s\r\nserver: %s\r\ncontent-length: %d\r\n"
                                 b"content-type: application/json\r\n%s\r\n%s" % (
                                     status, reason, http_date(), SERVER, len(body),
                                     b"connection: close\r\n" if close else b"",
                                     body if method == "GET" else b""))
            if close:
                self.transport.close()
                return
            self.cancel_timer()   # kept alive: the next request head has HEAD_TIMEOUT again
            self._timer = asyncio.get_running_loop().call_later(HEAD_TIMEOUT, self.transport.close)


def _healthz_request(head: bytes) -> tuple[str, bool] | None:
    """("GET" or "HEAD", whether the connection closes after it) when `head` is a plain request for
    /healthz with no body; None for anything else. HTTP/1.0 closes, as uvicorn (h11) does; HTTP/1.1
    stays open unless the client says `connection: close`."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD") or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        return None
    if parts[1].split(b"?", 1)[0] != b"/healthz":
        return None
    close = parts[2] == b"HTTP/1.0"
    host = False
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            return None   # malformed: uvicorn answers 400
        name = name.lower()
        if name in (b"transfer-encoding", b"upgrade", b"expect") or (
                name == b"content-length" and value.strip() != b"0"):
            return None
        if name == b"connection" and b"close" in value.lower():
            close = True
        host = host or name == b"host"
    if not host and parts[2] == b"HTTP/1.1":
        return None   # HTTP/1.1 requires Host: uvicorn (h11) answers 400
    return parts[0].decode("ascii"), close
