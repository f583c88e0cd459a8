"""The frames `mcp.bridge` passes between the daemon and its MCP worker, and the protocol that
cuts them from the bytes as they arrive (no stream reader, no task per frame).

A frame is one byte of kind, four bytes of length (big-endian) and the payload:

    daemon -> worker   Q  meta length (4 bytes), meta (JSON: method, path, raw path, query, client,
                          server), headers length (4 bytes), headers (names and values joined by NUL),
                          body
    worker -> daemon   S  the status, then the headers' names and values, joined by NUL
                       B  a part of the body (http.response.body, more to come)
                       E  the last part of the body: the response is complete, and the connection
                          takes the next request (the app may still be finishing the last one)

HTTP forbids NUL in header names and values (h11 refuses them on the way in and out), so NUL
separates them without escaping; a block whose NULs do not add up is refused. This module must
not import the `mcp` SDK: the daemon imports it.
"""

from __future__ import annotations

import asyncio
import json
import struct
from itertools import chain
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.types import Scope

HEAD = struct.Struct(">cI")
META = struct.Struct(">I")
REQUEST, START, BODY, END = b"Q", b"S", b"B", b"E"
MAX_FRAME = 8 * 1024 * 1024   # a request is at most 1 MiB + 1 byte of body (`http.MAX_BODY`) and its headers
NUL = b"\0"
CHUNK = 1024 * 1024           # the worker sends a larger part of a body as several frames


class BridgeError(Exception):
    """A frame that breaks the protocol (unknown kind, too long, out of order, unreadable)."""


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return HEAD.pack(kind, len(payload)) + payload


def pairs(block: bytes) -> list[tuple[bytes, bytes]]:
    """Header names and values joined by NUL (`join`), as ASGI pairs."""
    if not block:
        return []
    parts = block.split(NUL)
    if len(parts) % 2:
        raise BridgeError("an odd number of header names and values")
    return list(zip(parts[::2], parts[1::2]))


def join(pairs: Any) -> bytes:
    """ASGI header pairs as one block: names and values joined by NUL. Raises BridgeError when one
    holds a NUL (HTTP forbids it; the block would not read back)."""
    block = NUL.join(chain.from_iterable(pairs))
    if block.count(NUL) != max(2 * len(pairs) - 1, 0):
        raise BridgeError("a header name or value holds a NUL byte")
    return block


class Frames(asyncio.Protocol):
    """What both ends share: frames cut from the bytes as they arrive, and writing that waits
    while the socket's buffer is full."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._partial = bytearray()
        self._need = 0                 # the length of the frame `_partial` starts with, once known
        self._writable: asyncio.Future[None] | None = None   # set while writing is paused
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            if self._partial:
                self._partial += data
                if len(self._partial) < max(self._need, HEAD.size):
                    return
                data = bytes(self._partial)
                self._partial.clear()
            pos, end = 0, len(data)
            while end - pos >= HEAD.size:
                kind, size = HEAD.unpack_from(data, pos)
                if size > MAX_FRAME:
                    raise BridgeError(f"a frame of {size} bytes (at most {MAX_FRAME})")
                stop = pos + HEAD.size + size
                if stop > end:
                    self._need = stop - pos
                    break
                self.frame_received(kind, data[pos + HEAD.size:stop])
                pos = stop
            else:
                self._need = 0
            if pos < end:
                self._partial += data[pos:end]
        except BridgeError as e:
            self.broken(e)

    def frame_received(self, kind: bytes, payload: bytes) -> None:
        raise NotImplementedError

    def broken(self, error: BridgeError) -> None:
        """The other end broke the protocol: drop the connection."""
        assert self.transport is not None
        self.transport.abort()

    def write(self, data: bytes) -> None:
        if not self.closed:
            assert self.transport is not None
            self.transport.write(data)

    async def drain(self) -> None:
        if self._writable is not None and not self.closed:
            await asyncio.shield(self._writable)

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._release()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._release()

    def _release(self) -> None:
        waiter, self._writable = self._writable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def latin(text: str) -> bytes:
    return text.encode("latin-1")


def request_frame(scope: Scope, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """The Q frame of a request: `scope`'s fields, `headers` (passed on in place of the scope's) and
    its whole body. Raises BridgeError for a header with a NUL byte."""
    raw_path = scope.get("raw_path") or scope["path"].encode()
    meta = json.dumps([scope["method"], scope["path"], raw_path.decode("latin-1"),
                       (scope.get("query_string") or b"").decode("latin-1"), scope.get("client"),
                       scope.get("server")]).encode()
    block = join(headers)
    return b"".join((HEAD.pack(REQUEST, 2 * META.size + len(meta) + len(block) + len(body)),
                     META.pack(len(meta)), meta, META.pack(len(block)), block, body))


def read_request(payload: bytes) -> tuple[Scope, bytes]:
    """The ASGI scope and the body of a Q frame. Raises BridgeError when it cannot be read."""
    try:
        (size,) = META.unpack_from(payload)
        method, path, raw_path, query, client, server = json.loads(payload[META.size:META.size + size])
        at = META.size + size
        (length,) = META.unpack_from(payload, at)
        at += META.size
        if at + length > len(payload):
            raise ValueError("the headers run past the frame")
        headers = pairs(payload[at:at + length])
        scope: Scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                        "method": method, "scheme": "http", "path": path, "raw_path": latin(raw_path),
                        "query_string": latin(query), "root_path": "", "headers": headers,
                        "client": tuple(client) if client else None, "server": tuple(server) if server else None}
    except (struct.error, ValueError, TypeError, AttributeError) as e:   # a BridgeError of _pairs goes on as it is
        raise BridgeError(f"an unreadable request ({type(e).__name__}: {e})") from None
    return scope, payload[at + length:]


def read_start(payload: bytes) -> tuple[int, list[tuple[bytes, bytes]]]:
    """The status and headers of an S frame. Raises BridgeError when it cannot be read."""
    status, _, block = payload.partition(NUL)
    if not status.isdigit():
        raise BridgeError(f"an unreadable response start {payload[:40]!r}")
    return int(status), pairs(block)
