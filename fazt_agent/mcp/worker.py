"""The daemon's /mcp: a worker process runs the MCP server; the daemon passes requests through.

The MCP SDK costs about 35 MB of memory, and Python never gives imported modules back. Served
in-process, the first /mcp request would leave the daemon at ~85 MB for good. So the daemon starts
`fazt-agent mcp serve --worker HOST:PORT` (a child on a loopback port of its own) at the first
request, passes every /mcp request and its response stream through unchanged, and stops the child
after `[http] mcp_idle` without requests or open streams. The worker does the Host/Origin checks,
the bearer tokens and the body limit (`mcp.http`) exactly as `mcp serve --http` does; it shares
the data dir, so everything it triggers is claimed exactly once like anything else.

A client whose session ended with the worker gets 404 for it and starts a new session, as the
MCP specification says. The worker exits when the daemon's end of its stdin closes, so it never
outlives the daemon, even one killed with SIGKILL.

This module must not import the `mcp` SDK.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import TYPE_CHECKING

from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from ..errors import FaztAgentError
from .http import MAX_BODY   # the worker enforces it (413); we read at most one byte more

if TYPE_CHECKING:
    import httpcore

    from ..config import Config

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0
STOP_TIMEOUT = 3.0
READY = "listening "   # the worker's first stdout line: "listening 127.0.0.1:PORT"
FAILED = "error "      # ... or why it cannot serve this daemon
# hop-by-hop headers (RFC 9110 7.6.1), and the length, which is set again for the body passed on
_REQUEST_DROP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
                 b"upgrade", b"content-length"}
# in responses also `date` and `server`: the daemon's uvicorn adds its own, so the worker's would come twice
_RESPONSE_DROP = {b"connection", b"keep-alive", b"proxy-connection", b"trailer", b"transfer-encoding", b"upgrade",
                  b"date", b"server"}
# no read timeout: a stream (SSE) may stay quiet for as long as the client keeps it open
TIMEOUTS = {"connect": 10.0, "read": None, "write": 10.0, "pool": 10.0}


def worker_argv(config: Config, public: str) -> list[str]:
    """The command that starts a worker on the same configuration as this process."""
    argv = [sys.executable, "-m", "fazt_agent"]
    if config.source is not None:
        argv += ["--config", str(config.source)]
    return argv + ["mcp", "serve", "--worker", public, "--daemon-data-dir", str(config.data_dir)]


class McpWorker:
    """The /mcp ASGI endpoint of the daemon: starts the worker on demand, forwards to it, and
    stops it after `idle` seconds without traffic (`reap`, called by the daemon's housekeeping;
    0 keeps it running)."""

    def __init__(self, config: Config, public: str, idle: float):
        self.argv = worker_argv(config, public)
        self.idle = idle
        self._proc: asyncio.subprocess.Process | None = None
        self._client: httpcore.AsyncConnectionPool | None = None
        self._base = ""
        self._lock = asyncio.Lock()
        self._active = 0
        self._last = time.monotonic()

    @property
    def pid(self) -> int | None:
        """The running worker's process id, None when there is none."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self._active += 1
        try:
            try:
                client, base = await self._ensure()
            except FaztAgentError as e:
                await JSONResponse({"error": str(e)}, status_code=503)(scope, receive, send)
                return
            await self._forward(client, base, scope, receive, send)
        finally:
            self._active -= 1
            self._last = time.monotonic()

    async def reap(self) -> None:
        """Stop the worker when it has been idle for `idle` seconds; forget one that died."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is not None:
            async with self._lock:
                if self._proc is proc:
                    log.warning("the MCP worker (pid %d) exited with %s; the next /mcp request starts another",
                                proc.pid, proc.returncode)
                    await self._close()
            return
        if self.idle > 0 and self._active == 0 and time.monotonic() - self._last >= self.idle:
            async with self._lock:
                if self._proc is proc and self._active == 0:
                    log.info("stopping the idle MCP worker (pid %d, no requests for %gs)", proc.pid, self.idle)
                    await self._close()

    async def aclose(self) -> None:
        """Stop the worker (its sessions end, so their open streams close)."""
        async with self._lock:
            await self._close()

    async def _ensure(self) -> tuple[httpcore.AsyncConnectionPool, str]:
        async with self._lock:
            if self._proc is not None and self._proc.returncode is not None:
                log.warning("the MCP worker (pid %d) exited with %s; starting another",
                            self._proc.pid, self._proc.returncode)
                await self._close()
            if self._proc is None:
                await self._start()
            assert self._client is not None
            return self._client, self._base

    async def _start(self) -> None:
        import httpcore

        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG_"))}
        t0 = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(*self.argv, stdin=asyncio.subprocess.PIPE,
                                                        stdout=asyncio.subprocess.PIPE, env=env)
        except OSError as e:
            raise FaztAgentError(f"cannot start the MCP worker {self.argv[0]!r}: {e.strerror or e}") from None
        assert proc.stdout is not None
        try:
            line = (await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)).decode(errors="replace")
        except asyncio.TimeoutError:
            line = ""
        if not line.startswith(READY):
            await _end(proc)
            reason = line[len(FAILED):].strip() if line.startswith(FAILED) else \
                f"exit code {proc.returncode}; its log is above"
            raise FaztAgentError(f"the MCP worker did not start ({reason})")
        self._proc = proc
        self._base = f"http://{line[len(READY):].strip()}"
        # httpcore (h11 and anyio, both loaded already) rather than httpx: 0.7 MB instead of 5 MB.
        # No connection limit: each open client stream holds one connection to the worker.
        self._client = httpcore.AsyncConnectionPool(max_connections=None, max_keepalive_connections=8,
                                                    keepalive_expiry=30.0)
        log.info("MCP worker started (pid %d, %s) in %.2fs", proc.pid, self._base, time.monotonic() - t0)

    async def _close(self) -> None:
        proc, client = self._proc, self._client
        self._proc, self._client = None, None
        if client is not None:
            await client.aclose()
        if proc is not None:
            await _end(proc)

    async def _forward(self, client: httpcore.AsyncConnectionPool, base: str, scope: Scope, receive: Receive,
                       send: Send) -> None:
        import httpcore

        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > MAX_BODY or not message.get("more_body"):
                break
        path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string") or b""
        url = base + path.decode("latin-1") + (("?" + query.decode("latin-1")) if query else "")
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _REQUEST_DROP]
        headers.append((b"content-length", str(len(body)).encode()))
        request = httpcore.Request(scope["method"], url, headers=headers, content=bytes(body),
                                   extensions={"timeout": TIMEOUTS})
        try:
            response = await client.handle_async_request(request)
        except _hop_errors() as e:
            log.warning("the MCP worker did not answer: %s", e)
            await JSONResponse({"error": f"the MCP worker did not answer ({type(e).__name__}); try again"},
                               status_code=502)(scope, receive, send)
            return
        try:
            await send({"type": "http.response.start", "status": response.status,
                        "headers": [(k, v) for k, v in response.headers if k.lower() not in _RESPONSE_DROP]})
            # the body is read, so receive() now returns only when the client goes away (an open
            # stream must then be closed upstream) or once the response is complete
            pump = asyncio.create_task(_pump(response, send))
            gone = asyncio.create_task(_disconnected(receive))
            try:
                await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
                if pump.done() and pump.result():
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    # uvicorn answers the pending receive() once the response is complete; no
                    # cancellation on this common path, as that leaves garbage cycles behind
                    await asyncio.wait({gone}, timeout=5)
            finally:
                for task in (pump, gone):
                    if not task.done():
                        task.cancel()
                await asyncio.gather(pump, gone, return_exceptions=True)
        finally:
            await response.aclose()


async def _pump(response: httpcore.Response, send: Send) -> bool:
    """Pass the worker's response body on as it arrives; False when the worker broke it off."""
    try:
        async for chunk in response.aiter_stream():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except _hop_errors() as e:
        log.warning("the MCP worker broke off a response: %s", e)
        return False
    return True


def _hop_errors() -> tuple[type[Exception], ...]:
    """What a failed exchange with the worker raises (httpcore is imported when /mcp is used)."""
    import httpcore

    return (httpcore.NetworkError, httpcore.ProtocolError, httpcore.TimeoutException, httpcore.UnsupportedProtocol)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _end(proc: asyncio.subprocess.Process) -> None:
    """Close the worker's stdin (it exits on that), then SIGTERM, then SIGKILL."""
    if proc.stdin is not None:
        proc.stdin.close()
    if proc.returncode is None:
        try:
            proc.terminate()
        except ProcessLookupError:
            pass
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
        except asyncio.TimeoutError:
            log.warning("the MCP worker (pid %d) did not stop within %gs of SIGTERM; killing it", proc.pid,
                        STOP_TIMEOUT)
            proc.kill()
            await proc.wait()
