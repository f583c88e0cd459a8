"""The daemon's /mcp: a worker process runs the MCP server; the daemon passes requests through.

The MCP SDK costs about 35 MB of memory, and Python never gives imported modules back. Served
in-process, the first /mcp request would leave the daemon at ~85 MB for good. So the daemon starts
`fazt-agent mcp serve --worker HOST:PORT` (a child serving a unix socket of its own) at the first
request, passes every /mcp request and its response stream through unchanged as ASGI messages
(`mcp.bridge`: no second HTTP client and server on the way), and stops the child after
`[http] mcp_idle` without requests or open streams. The worker does the Host/Origin checks, the
bearer tokens and the body limit (`mcp.http`) exactly as `mcp serve --http` does; it shares the
data dir, so everything it triggers is claimed exactly once like anything else.

A client whose session ended with the worker gets 404 for it and starts a new session, as the
MCP specification says. The worker exits when the daemon's end of its stdin closes, so it never
outlives the daemon, even one killed with SIGKILL.

This module must not import the `mcp` SDK.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from typing import TYPE_CHECKING

from ..errors import FaztAgentError
from ..web._http import MCP_MAX_BODY as MAX_BODY   # the worker enforces it (413); we read at most one byte more
from .bridge import Upstream, ours

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

    from ..config import Config

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0
STOP_TIMEOUT = 3.0
READY = "listening unix:"   # the worker's first stdout line: "listening unix:@fazt-mcp-0123456789abcdef"
FAILED = "error "           # ... or why it cannot serve this daemon
# hop-by-hop headers (RFC 9110 7.6.1), and the length, which is set again for the body passed on
_REQUEST_DROP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
                 b"upgrade", b"content-length"}


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
        self._upstream: Upstream | None = None
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
            upstream, proc = self._upstream, self._proc
            try:
                if upstream is None or proc is None or proc.returncode is not None:   # the lock only to (re)start
                    upstream = await self._ensure()
            except FaztAgentError as e:
                await _error(send, 503, str(e))
                return
            await self._forward(upstream, scope, receive, send)
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

    async def _ensure(self) -> Upstream:
        async with self._lock:
            if self._proc is not None and self._proc.returncode is not None:
                log.warning("the MCP worker (pid %d) exited with %s; starting another",
                            self._proc.pid, self._proc.returncode)
                await self._close()
            if self._proc is None:
                await self._start()
            assert self._upstream is not None
            return self._upstream

    async def _start(self) -> None:
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
        if not (line.startswith(READY) and ours(line[len(READY):].strip())):
            await _end(proc)
            reason = line[len(FAILED):].strip() if line.startswith(FAILED) else \
                f"exit code {proc.returncode}; its log is above"
            raise FaztAgentError(f"the MCP worker did not start ({reason})")
        self._proc = proc
        # no connection limit: each open client stream holds one connection to the worker
        self._upstream = Upstream(line[len(READY):].strip())
        log.info("MCP worker started (pid %d, %s) in %.2fs", proc.pid, self._upstream.address, time.monotonic() - t0)

    async def _close(self) -> None:
        proc, upstream = self._proc, self._upstream
        self._proc, self._upstream = None, None
        if upstream is not None:
            upstream.close()
        if proc is not None:
            await _end(proc)

    async def _forward(self, upstream: Upstream, scope: Scope, receive: Receive, send: Send) -> None:
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > MAX_BODY or not message.get("more_body"):
                break
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _REQUEST_DROP]
        headers.append((b"content-length", b"%d" % len(body)))

        async def refuse(message: str) -> None:
            await _error(send, 502, message)

        await upstream.forward(scope, headers, bytes(body), receive, send, refuse)


async def _error(send: Send, status: int, message: str) -> None:
    """`{"error": message}` with `status`, from the daemon itself (the worker could not answer)."""
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


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
