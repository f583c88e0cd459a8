"""A small HTTP/1.1 client for the `http` check: keep-alive connections pooled per origin and
shared by every check and beat, one TLS context per verify setting, one deadline per request.

Why not httpx (what the check used before): measured on a 2-core machine, 500 requests to a
local server cost httpx 0.28 about 0.5 s of CPU with one shared client (more with a bigger pool:
httpcore looks at every connection on every request) and 10-15 s with a client per request (an
SSL context each, 21-36 ms); 500 http checks with this client cost about 0.06 s, runner included.
A check needs little of HTTP: one request, the status, a few headers and at most the first MiB
of the body.

The protocol is h11's (the sans-IO HTTP/1.1 library under httpcore): it writes the request,
parses the answer, frames its body (Content-Length, chunked, until close; none for HEAD, 1xx,
204, 304) and says whether the connection may be reused (both sides DONE). This module keeps
the sockets (asyncio streams), the pool, the TLS contexts, the limits, the redirects and the
retry of a stale connection.

What it does: `GET`-style requests without a body; gzip/deflate when a server compresses anyway
(it is asked for `identity`); redirects when asked (at most 20, `Authorization` dropped on
another origin); Basic auth from the URL's user info. What it does not: proxies (`HTTP_PROXY` is
ignored: the agent checks its own server), HTTP/2, cookies, HTTP/1.0 keep-alive (h11 closes such
connections). Trusted CAs are the system's (`SSL_CERT_FILE`/`SSL_CERT_DIR` apply).

A body is read only up to a limit; a connection whose response was not read to its end is
closed, never put back. A reused connection that the server closed meanwhile (its keep-alive
timeout) is retried once on a new one, for methods that may be repeated.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import re
import ssl
import time
import zlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit

import h11

HEADER_LIMIT = 64 * 1024        # the status line and headers of one response (h11 checks it per read)
READ_SIZE = 64 * 1024           # bytes asked of the socket at a time
KEEPALIVE = 60.0                # an idle connection is closed after this long
IDLE_PER_ORIGIN = 100
MAX_REDIRECTS = 20
REDIRECTS = (301, 302, 303, 307, 308)
REPEATABLE = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_CLOSE_WAIT = 1.0               # aclose(): how long closing connections may take before they are aborted


class HttpError(Exception):
    """The request failed; the class name says where (it goes into the check's message)."""


class ConnectError(HttpError):
    """No connection: refused, unreachable, unknown name, TLS handshake refused."""


class ReadError(HttpError):
    """The connection broke while sending the request or reading the answer."""


class RemoteProtocolError(HttpError):
    """The server's answer is not HTTP/1.x as it should be, or it closed without one."""


class LocalProtocolError(HttpError):
    """The request cannot be sent as configured (e.g. a header that breaks its framing)."""


class TooManyRedirects(HttpError):
    pass


class InvalidURL(HttpError):
    pass


@dataclass(frozen=True)
class Response:
    status_code: int
    headers: dict[str, str]          # lower-case names; repeated headers joined with ", "
    body: bytes                      # at most the limit asked for, decompressed
    url: str                         # the last one, after redirects

    @property
    def encoding(self) -> str | None:
        for param in self.headers.get("content-type", "").split(";")[1:]:
            key, _, value = param.strip().partition("=")
            if key.lower() == "charset" and value:
                return value.strip('"\' ')
        return None


@dataclass(frozen=True)
class _Url:
    url: str
    tls: bool
    host: str           # for connecting and SNI (no brackets)
    port: int
    authority: str      # the Host header
    target: str         # path and query, quoted
    auth: str | None    # a Basic Authorization header from user info

    @property
    def origin(self) -> tuple[bool, str, int]:
        return self.tls, self.host, self.port


@functools.lru_cache(maxsize=4096)  # a check asks for the same URL every beat
def parse_url(url: str) -> _Url:
    """Raises InvalidURL: not http(s), no host, or a port that is not a number."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidURL(f"expected an http:// or https:// URL with a host, got {url!r}")
    tls = parts.scheme == "https"
    try:
        port = parts.port or (443 if tls else 80)
    except ValueError as e:
        raise InvalidURL(f"bad port in {url!r}: {e}") from None
    host = parts.hostname
    try:
        wire_host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError as e:
        raise InvalidURL(f"bad host name in {url!r}: {e}") from None
    shown = f"[{wire_host}]" if ":" in wire_host else wire_host
    authority = shown if port == (443 if tls else 80) else f"{shown}:{port}"
    target = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    if parts.query:
        target += "?" + quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
    auth = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        auth = "Basic " + base64.b64encode(pair).decode("ascii")
    return _Url(url, tls, wire_host, port, authority, target, auth)


@dataclass(eq=False)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    http: h11.Connection
    idle_since: float = 0.0
    reused: bool = False
    received: int = 0      # bytes of the current answer read from the socket

    def usable(self, now: float) -> bool:
        """Still open, nothing unread (a server that closed it has sent EOF), not idle too long."""
        unread = getattr(self.reader, "_buffer", b"")  # e.g. a "408 Request Timeout" sent before closing
        return (now - self.idle_since < KEEPALIVE and not self.writer.is_closing()
                and not self.reader.at_eof() and not unread and not self.http.trailing_data[0])

    async def next_event(self, deadline: float | None = None) -> Any:
        """h11's next event, reading the socket when it needs more (b"" at EOF: h11 then says
        whether the answer was complete), by `deadline` (loop time) when given.

        Raises:
            h11.RemoteProtocolError: not HTTP/1.x as it should be, or closed in the middle.
            OSError: the connection broke.
            TimeoutError: past the deadline.
        """
        while True:
            event = self.http.next_event()
            if event is not h11.NEED_DATA:
                return event
            if deadline is None:
                data = await self.reader.read(READ_SIZE)
            else:  # a timer only when waiting: a small body usually came with the headers
                async with asyncio.timeout_at(deadline):
                    data = await self.reader.read(READ_SIZE)
            self.received += len(data)
            self.http.receive_data(data)

    def abort(self) -> None:
        self.writer.transport.abort()


@dataclass
class _Head:
    status: int
    headers: dict[str, str]


@dataclass
class _Body:
    data: bytes = b""
    complete: bool = True   # read to its end: the connection may be reused


class HttpPool:
    """Keep-alive connections per origin (scheme, host, port, verify), shared by all checks.

    Every request takes an idle connection of its origin or opens one; there is no limit here:
    the pulse runner bounds how many checks run at once (and per lane, an HTTP check's origin).
    """

    def __init__(self) -> None:
        self._idle: dict[tuple[bool, str, int, bool], list[_Conn]] = {}
        self._ssl: dict[bool, ssl.SSLContext] = {}
        self._busy: set[_Conn] = set()
        self._last_sweep = 0.0
        self.connections_opened = 0
        self.closed = False

    def ssl_context(self, verify: bool) -> ssl.SSLContext:
        """One context per verify setting, made at first use (loading the CAs takes ~20 ms)."""
        context = self._ssl.get(verify)
        if context is None:
            if verify:
                context = ssl.create_default_context()
            else:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            context.set_alpn_protocols(["http/1.1"])
            self._ssl[verify] = context
        return context

    async def request(self, method: str, url: str, headers: dict[str, str] | None = None, *,
                      verify: bool = True, follow_redirects: bool = False, body_limit: int = 0,
                      drain_limit: int = 64 * 1024, on_headers: Any = None) -> Response:
        """Send one request (following redirects when asked) and read its answer.

        `body_limit` bytes of the final body are returned (0: none is kept); a body not kept is
        read only to keep the connection when it is at most `drain_limit` bytes and comes within
        a second, else the connection is closed. `on_headers()` is called when the final
        response's headers have arrived (the check's latency). The caller bounds the time
        (asyncio.timeout).

        Raises:
            HttpError: ConnectError, ReadError, RemoteProtocolError, LocalProtocolError,
                TooManyRedirects, InvalidURL.
        """
        if self.closed:
            raise RuntimeError("the HTTP pool is closed")
        user = {k.lower(): (k, v) for k, v in (headers or {}).items()}
        current = parse_url(url)
        for _ in range(MAX_REDIRECTS + 1):
            conn, head = await self._exchange(method, current, verify, _request(method, current, tuple(user.values())))
            try:
                final = not (follow_redirects and head.status in REDIRECTS and "location" in head.headers)
                if final and on_headers is not None:
                    on_headers()
                keep = body_limit if final else 0
                body = await self._read_body(conn, method, head, keep, keep or drain_limit)
            except BaseException:  # a timeout or cancellation while the body comes: never reuse it
                self._discard(conn)
                raise
            self._release(conn, current, verify, complete=body.complete)
            if final:
                data = _decode(head.headers, body.data, body_limit) if body_limit else b""
                return Response(head.status, head.headers, data, current.url)
            following = parse_url(urljoin(current.url, head.headers["location"]))
            if following.origin != current.origin:
                user.pop("authorization", None)
            if head.status == 303 and method != "HEAD" or head.status in (301, 302) and method == "POST":
                method = "GET"
            current = following
        raise TooManyRedirects(f"more than {MAX_REDIRECTS} redirects, the last to {current.url}")

    async def _exchange(self, method: str, url: _Url, verify: bool, request: h11.Request) -> tuple[_Conn, _Head]:
        """Send the request and read the response head; once more on a new connection when a
        reused one turns out closed before any answer."""
        for attempt in (1, 2):
            conn = await self._connection(url, verify, fresh=attempt == 2 or method not in REPEATABLE)
            self._busy.add(conn)
            try:
                try:
                    data = conn.http.send(request) + conn.http.send(h11.EndOfMessage())
                except h11.LocalProtocolError as e:
                    raise LocalProtocolError(f"cannot send the request: {e}") from None
                conn.received = 0
                conn.writer.write(data)
                return conn, await _read_head(conn)
            except (h11.RemoteProtocolError, ConnectionError) as e:
                self._discard(conn)
                if conn.reused and not conn.received and attempt == 1 and method in REPEATABLE:
                    continue  # the server closed this kept-alive connection meanwhile
                if isinstance(e, h11.RemoteProtocolError):
                    raise RemoteProtocolError(_protocol_message(conn, e, "answer")) from None
                raise ReadError(f"connection lost: {e.strerror or type(e).__name__}") from None
            except OSError as e:
                self._discard(conn)
                raise ReadError(f"connection lost: {e.strerror or e}") from None
            except BaseException:  # LocalProtocolError, a timeout, cancellation
                self._discard(conn)
                raise
        raise AssertionError("unreachable")

    async def _connection(self, url: _Url, verify: bool, *, fresh: bool) -> _Conn:
        key = (*url.origin, verify)
        now = time.monotonic()
        if now - self._last_sweep > 1.0:
            self._sweep(now)
        idle = self._idle.get(key)
        while idle and not fresh:
            conn = idle.pop()
            if conn.usable(now):
                conn.reused = True
                return conn
            conn.abort()
        context = self.ssl_context(verify) if url.tls else None
        try:
            reader, writer = await asyncio.open_connection(
                url.host, url.port, ssl=context, server_hostname=url.host if context else None, limit=READ_SIZE)
        except ssl.SSLCertVerificationError as e:
            raise ConnectError(f"TLS certificate of {url.authority} not trusted: {e.verify_message}") from None
        except ssl.SSLError as e:
            raise ConnectError(f"TLS handshake with {url.authority} failed: {e.reason or e}") from None
        except OSError as e:  # refused, unreachable, name unknown (socket.gaierror)
            raise ConnectError(f"cannot connect to {url.authority}: {e.strerror or e}") from None
        self.connections_opened += 1
        return _Conn(reader, writer, h11.Connection(h11.CLIENT, max_incomplete_event_size=HEADER_LIMIT))

    async def _read_body(self, conn: _Conn, method: str, head: _Head, keep: int, limit: int) -> _Body:
        """Up to `limit` bytes of the body. Kept (`keep` > 0): read as it comes, a broken body is an
        error. Not kept: only a small body that comes within a second is read (to keep the
        connection); anything else closes it, never an error."""
        if keep:
            try:
                return await _read_to(conn, limit)
            except h11.RemoteProtocolError as e:
                raise RemoteProtocolError(_protocol_message(conn, e, "body")) from None
            except OSError as e:
                raise ReadError(f"connection lost: {e.strerror or e}") from None
        if not _worth_draining(method, head, limit):
            return _Body(complete=False)
        try:
            return await _read_to(conn, limit, asyncio.get_running_loop().time() + 1.0)
        except (TimeoutError, h11.RemoteProtocolError, OSError):
            return _Body(complete=False)

    def _release(self, conn: _Conn, url: _Url, verify: bool, *, complete: bool) -> None:
        """Back to the idle connections when h11 says both sides are done (no `Connection: close`,
        not HTTP/1.0, not delimited by the close), else closed."""
        self._busy.discard(conn)
        http = conn.http
        if not complete or self.closed or http.our_state is not h11.DONE or http.their_state is not h11.DONE:
            conn.abort()
            return
        idle = self._idle.setdefault((*url.origin, verify), [])
        if len(idle) >= IDLE_PER_ORIGIN:
            conn.abort()
            return
        http.start_next_cycle()
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def _discard(self, conn: _Conn) -> None:
        self._busy.discard(conn)
        conn.abort()

    def _sweep(self, now: float) -> None:
        """Close idle connections that expired or that their server closed."""
        self._last_sweep = now
        for key, idle in list(self._idle.items()):
            alive = [c for c in idle if c.usable(now)]
            for c in idle:
                if c not in alive:
                    c.abort()
            if alive:
                self._idle[key] = alive
            else:
                del self._idle[key]

    async def aclose(self) -> None:
        """Close every connection (idle ones politely, within a second; busy ones at once)."""
        self.closed = True
        idle = [c for conns in self._idle.values() for c in conns]
        self._idle.clear()
        for conn in list(self._busy):
            conn.abort()
        self._busy.clear()
        for conn in idle:
            conn.writer.close()
        if idle:
            waits = [asyncio.ensure_future(c.writer.wait_closed()) for c in idle]
            _, pending = await asyncio.wait(waits, timeout=_CLOSE_WAIT)
            for task in pending:
                task.cancel()
            for conn in idle:
                if not conn.writer.transport.is_closing() or pending:
                    conn.abort()
            for task in waits:
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved: a reset while closing is not worth a log line


@functools.lru_cache(maxsize=4096)
def _request(method: str, url: _Url, user: tuple[tuple[str, str], ...]) -> h11.Request:
    """The request h11 will write (made once per check: h11 validates every header, ~30 µs).

    Raises LocalProtocolError: a configured header h11 refuses."""
    from .. import __version__

    lines = {"host": ("Host", url.authority), "user-agent": ("User-Agent", f"fazt-agent/{__version__}"),
             "accept": ("Accept", "*/*"), "accept-encoding": ("Accept-Encoding", "identity")}
    if method in ("POST", "PUT", "PATCH"):
        lines["content-length"] = ("Content-Length", "0")
    if url.auth is not None:
        lines["authorization"] = ("Authorization", url.auth)
    lines.update((k.lower(), (k, v)) for k, v in user)
    try:
        return h11.Request(method=method, target=url.target,
                           headers=[(k.encode("latin-1"), v.strip(" \t").encode("latin-1"))  # no edge OWS
                                    for k, v in lines.values()])
    except h11.LocalProtocolError as e:
        raise LocalProtocolError(f"cannot send the request: {e}") from None


async def _read_head(conn: _Conn) -> _Head:
    """The status and headers (1xx interim answers skipped); lower-case names, repeated ones
    joined with ", "."""
    while True:
        event = await conn.next_event()
        if isinstance(event, h11.InformationalResponse) and event.status_code != 101:
            continue
        if not isinstance(event, (h11.Response, h11.InformationalResponse)):
            raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}")
        headers: dict[str, str] = {}
        for name, value in event.headers:
            key, text = name.decode("latin-1"), value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        return _Head(event.status_code, headers)


async def _read_to(conn: _Conn, limit: int, deadline: float | None = None) -> _Body:
    """The body as h11 frames it, at most `limit` bytes (complete=False when cut)."""
    parts: list[bytes] = []
    size = 0
    while True:
        event = await conn.next_event(deadline)
        if type(event) is h11.Data:
            parts.append(event.data)
            size += len(event.data)
            if size > limit:
                return _Body(b"".join(parts)[:limit], complete=False)
        elif type(event) is h11.EndOfMessage:
            return _Body(b"".join(parts))
        else:  # PAUSED after a protocol switch (101), ConnectionClosed
            return _Body(b"".join(parts), complete=False)


def _worth_draining(method: str, head: _Head, limit: int) -> bool:
    """Whether reading an unwanted body may keep the connection: none is coming (HEAD, 204,
    304), a Content-Length within the limit, or chunked (read up to the limit). A body that ends
    with the connection never keeps it, and a long one is not worth the bytes."""
    if method == "HEAD" or head.status in (101, 204, 304):
        return True
    length = head.headers.get("content-length")
    if length is not None:
        return int(length.split(",")[0]) <= limit   # h11 checked it is a number
    return "chunked" in head.headers.get("transfer-encoding", "").lower()


def _protocol_message(conn: _Conn, error: h11.RemoteProtocolError, part: str) -> str:
    """h11's complaint, said as what happened."""
    if error.error_status_hint == 431:
        return f"response headers longer than {HEADER_LIMIT // 1024} KiB"
    if conn.http.trailing_data[1]:  # the server closed the connection
        return ("the server closed the connection without a complete answer" if part == "answer"
                else "the server closed the connection in the middle of the body")
    said = re.sub(r"bytearray\((b'.*?'|b\".*?\")\)", r"\1", str(error))  # h11 shows its buffer so
    return f"not an HTTP/1.x {part}: {said[:160]}"


def _decode(headers: dict[str, str], body: bytes, limit: int) -> bytes:
    """The body without gzip/deflate (at most `limit` bytes), for a server that compressed anyway."""
    encoding = headers.get("content-encoding", "").lower().strip()
    if not body or encoding not in ("gzip", "x-gzip", "deflate"):
        return body
    try:
        wbits = 16 + zlib.MAX_WBITS if "gzip" in encoding else zlib.MAX_WBITS
        try:
            return zlib.decompressobj(wbits).decompress(body, limit)
        except zlib.error:
            if encoding == "deflate":  # raw deflate, as some servers send it
                return zlib.decompressobj(-zlib.MAX_WBITS).decompress(body, limit)
            raise
    except zlib.error:
        return body
