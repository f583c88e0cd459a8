"""MCP over streamable HTTP at /mcp: the ASGI app, served by `fazt-agent mcp serve --http` (through the
daemon's front door, `web/front.py`) and by the daemon's MCP worker process (`mcp serve --worker`, see
`mcp.worker`).

A request passes, in order: the Host/Origin check against DNS rebinding (421/403), the bearer
token (401), then the SDK's transport with a 1 MiB body limit (413). The SDK (about 30 MB of
memory) is imported, and its session manager started, on the first request to /mcp.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING, Any, Callable

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from ..web._http import MCP_MAX_BODY
from .auth import BearerAuth, TokenStore

if TYPE_CHECKING:
    from ..config import HttpSection
    from ..engine import Engine
    from ..runtime import Runtime

log = logging.getLogger(__name__)
MAX_BODY = MCP_MAX_BODY
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
WILDCARD = ("", "0.0.0.0", "::")
Factory = Callable[[], tuple[ASGIApp, Any]]


def allowed(host: str, port: int, http: HttpSection) -> tuple[list[str], list[str]]:
    """Host and Origin values accepted: the loopback names and the listen address with `port`, plus
    `[http] allowed_hosts` / `allowed_origins` (e.g. the name of a reverse proxy)."""
    names = list(LOOPBACK)
    if host not in WILDCARD and host not in ("::1", *LOOPBACK):
        names.append(f"[{host}]" if ":" in host else host)
    hosts = [f"{name}:{port}" for name in names]
    return hosts + list(http.allowed_hosts), [f"http://{h}" for h in hosts] + list(http.allowed_origins)


class HostCheck:
    """ASGI middleware: the SDK's Host/Origin validation, before anything else sees the request."""

    def __init__(self, app: ASGIApp, settings: Any):
        from mcp.server.transport_security import TransportSecurityMiddleware

        self.app = app
        self.check = TransportSecurityMiddleware(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refused = await self.check.validate_request(Request(scope), is_post=False)
            if refused is not None:
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build(rt: Runtime, engine: Engine, host: str, port: int) -> tuple[ASGIApp, Any]:
    """The /mcp ASGI app and its SDK session manager (start it with `manager.run()`)."""
    from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
    from mcp.server.transport_security import TransportSecuritySettings

    from ._registry import Deps
    from .server import build_server

    hosts, origins = allowed(host, port, rt.config.file.http)
    security = TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts,
                                         allowed_origins=origins)
    server = build_server(Deps(rt, engine, "http"))
    server.streamable_http_app(max_request_body_size=MAX_BODY, transport_security=security, host=host)
    manager = server.session_manager
    tokens = TokenStore(rt.store, rt.events, rt.clock)
    return HostCheck(BearerAuth(StreamableHTTPASGIApp(manager), tokens), security), manager


class McpMount:
    """The /mcp endpoint: builds the app with `factory` on the first request, runs its session
    manager in a task of its own until `aclose()`."""

    def __init__(self, factory: Factory):
        self.factory = factory
        self._app: ASGIApp | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self._app or await self._start()
        await app(scope, receive, send)

    async def _start(self) -> ASGIApp:
        async with self._lock:
            if self._app is None:
                app, manager = self.factory()
                started = asyncio.Event()
                self._task = asyncio.create_task(self._run(manager, started), name="mcp-sessions")
                waiter = asyncio.create_task(started.wait())
                await asyncio.wait([waiter, self._task], return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if self._task.done():
                    self._task.result()  # raises what stopped the session manager
                self._app = app
                log.info("MCP endpoint ready")
            return self._app

    async def _run(self, manager: Any, started: asyncio.Event) -> None:
        async with manager.run():
            started.set()
            await self._stop.wait()

    async def aclose(self, timeout: float = 3.0) -> None:
        """End every MCP session (so open streams close) and stop the session manager."""
        self._stop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout)
            except asyncio.TimeoutError:
                log.warning("the MCP session manager did not stop within %gs", timeout)


async def serve(rt: Runtime, host: str, port: int, *, ready: Callable[[str], None],
                public: tuple[str, int] | None = None) -> None:
    """`mcp serve --http`: /mcp (and /healthz) on host:port until SIGTERM or SIGINT.

    `public` is the address clients use when this is the daemon's worker (`mcp.worker`): Host and
    Origin are checked against it, /mcp is served to the daemon on a unix socket of its own
    (`mcp.bridge`) instead of host:port, and the server also stops when its stdin closes (the daemon
    is gone). `ready` gets the URL actually served (port 0 means any free port), or `unix:PATH`.

    Raises:
        FaztAgentError: the address or the socket cannot be bound.
    """
    from ..engine import Engine

    seen_host, seen_port = public or (host, port)
    mount = McpMount(lambda: build(rt, Engine(rt), seen_host, seen_port))
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    try:
        if public:
            _stop_on_eof(loop, done)
            await _serve_worker(mount, done, ready)
        else:
            await _serve_http(mount, host, port, done, ready)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _serve_http(mount: McpMount, host: str, port: int, done: asyncio.Event,
                      ready: Callable[[str], None]) -> None:
    """`mcp serve --http`: the daemon's front door (`web/front.py`) serves /healthz and plain /mcp
    requests on bare asyncio, and hands anything else to uvicorn (started then), as in the daemon."""
    from ..web.app import create_app
    from ..web.front import Front

    def health() -> tuple[bool, dict[str, Any]]:
        return True, {"mcp": "standalone"}

    front = Front(health, lambda: create_app(health, mcp=mount), lambda: mount)
    await front.start(host, port, "--listen")
    assert front.sock is not None
    port = front.sock.getsockname()[1]
    ready(f"http://{f'[{host}]' if ':' in host else host}:{port}/mcp")
    try:
        await done.wait()
    finally:
        await mount.aclose()
        await front.stop()


async def _serve_worker(mount: McpMount, done: asyncio.Event, ready: Callable[[str], None]) -> None:
    """The daemon's worker: /mcp for the daemon alone on an abstract unix socket, until `done`."""
    from ..errors import FaztAgentError
    from .bridge import Downstream, new_address

    downstream = Downstream(mount, new_address())
    try:
        await downstream.start()
    except OSError as e:
        raise FaztAgentError(f"cannot listen on the unix socket {downstream.address}: {e.strerror or e}") from None
    ready(f"unix:{downstream.address}")
    try:
        await done.wait()
    finally:
        await mount.aclose()
        await downstream.aclose()


def _stop_on_eof(loop: asyncio.AbstractEventLoop, done: asyncio.Event) -> None:
    """Set `done` when stdin reaches its end: the parent closed it, or died."""
    import sys
    import threading

    def watch() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        loop.call_soon_threadsafe(done.set)

    threading.Thread(target=watch, name="stdin-eof", daemon=True).start()
