"""The control-plane ASGI app (Starlette) and the uvicorn server that runs it (and the apps plane).

The daemon imports this module only when its control plane is asked for more than /healthz
(`front.py` answers that alone until then), so one that is only probed for health holds neither
uvicorn nor starlette, the pages, the MCP bridge or metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import uvicorn

from ..errors import FaztAgentError
from ._http import SERVER, Health, bind, health_response

if TYPE_CHECKING:
    from starlette.routing import BaseRoute
    from starlette.types import ASGIApp, Receive, Scope, Send

class Healthz:
    """GET /healthz as a bare ASGI app: 200 or 503 with `health()`'s details (`_http.health_response`,
    which the front door's bare answer sends too)."""

    def __init__(self, health: Health):
        self.health = health

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        status, body = health_response(self.health)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", str(len(body)).encode("latin-1")),
                                (b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


def create_app(health: Health, *, mcp: ASGIApp | None = None, metrics: ASGIApp | None = None,
               alertmanager: ASGIApp | None = None, pages: Sequence[BaseRoute] = (),
               dashboard: Sequence[BaseRoute] = (), slack: ASGIApp | None = None) -> ASGIApp:
    """`health()` returns (healthy, details); /healthz answers 200 or 503 with the details.
    `mcp`, when given, serves /mcp (streamable HTTP); `metrics`, /metrics (Prometheus);
    `alertmanager`, /webhooks/alertmanager (`web/webhooks.py`); `pages`, the signed links and the
    approvals page (`web/approvals.py`); `dashboard`, `/` and the dashboard's pages
    (`web/dashboard.py`); `slack`, /slack/interactivity (`answer/slack.py`)."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    routes = [Route("/healthz", Healthz(health), methods=["GET"])]
    if mcp is not None:
        routes.append(Route("/mcp", mcp))
    if metrics is not None:
        routes.append(Route("/metrics", metrics))
    if alertmanager is not None:
        routes.append(Route("/webhooks/alertmanager", alertmanager))
    if slack is not None:
        routes.append(Route("/slack/interactivity", slack))
    routes.extend(pages)
    routes.extend(dashboard)
    app = Starlette(routes=routes)
    return app if mcp is None else _mcp_first(mcp, app)


def _mcp_first(mcp: ASGIApp, app: ASGIApp) -> ASGIApp:
    """`app`, with requests for exactly /mcp handed to `mcp` before starlette's middleware and
    router, which add nothing /mcp uses (it takes any method and has no path parameters, and its
    errors are answered by `mcp` itself) but ~20 µs to every MCP call."""

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/mcp":
            await mcp(scope, receive, send)
        else:
            await app(scope, receive, send)

    return serve


class QuietServer(uvicorn.Server):
    """uvicorn without its own signal handlers (the caller owns SIGTERM/SIGINT), ticking once a second."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def main_loop(self) -> None:
        # uvicorn ticks every 0.1 s; once a second is enough here and halves idle CPU
        counter = 0
        while not await self.on_tick(counter) and not self.should_exit:
            counter = (counter + 10) % 864000
            await asyncio.sleep(1.0)


async def start(app: ASGIApp, host: str, port: int, setting: str, *, ssl_context: ssl.SSLContext | None = None,
                what: str = "the control plane") -> tuple[QuietServer, asyncio.Task[None]]:
    """Listen on host:port and serve `app` in a task; returns once it accepts connections. With
    `ssl_context`, over TLS (uvicorn's own ssl settings hold one certificate; the apps plane's
    context chooses one by SNI).

    Raises:
        FaztAgentError: the address cannot be bound (`setting` names where it was configured).
    """
    return await serve(app, bind(host, port, setting), ssl_context=ssl_context, what=what)


async def serve(app: ASGIApp, sock: socket.socket | None, *, ssl_context: ssl.SSLContext | None = None,
                what: str = "the control plane") -> tuple[QuietServer, asyncio.Task[None]]:
    """Serve `app` on the listening socket `sock` (`_http.bind`) with uvicorn in a task; returns once
    it accepts connections. With no socket, uvicorn serves only the connections handed to it
    (`front.py`).

    Raises:
        FaztAgentError: uvicorn failed to start.
    """
    tls: dict[str, Any] = {"ssl_context_factory": lambda _config, _default: ssl_context} if ssl_context else {}
    # ws "none": no route takes a websocket; "auto" would load the websockets library wherever it is
    # installed (only the tests install it: 1.5 MiB and ~8 ms of a start), "none" answers alike everywhere.
    # server: fazt-agent, as the front door's bare /healthz says (front.py)
    server = QuietServer(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", ws="none",
                                        server_header=False, headers=[("server", SERVER.decode())], **tls))
    task = asyncio.create_task(server.serve(sockets=[sock] if sock is not None else []))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if task.done():
        where = "" if sock is None else " on {}:{}".format(*sock.getsockname()[:2])
        raise FaztAgentError(f"{what}{where} failed to start: {task.exception()}")
    return server, task


async def stop(server: uvicorn.Server, task: asyncio.Task[None], timeout: float = 1.5) -> None:
    server.should_exit = True
    try:
        await asyncio.wait_for(task, timeout)
    except (asyncio.TimeoutError, asyncio.CancelledError):
        task.cancel()
