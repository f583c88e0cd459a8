"""The control-plane ASGI app (Starlette) and the uvicorn server that runs it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from typing import Any, Callable, Iterator, Sequence

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from ..errors import FaztAgentError

Health = Callable[[], tuple[bool, dict[str, Any]]]


def create_app(health: Health, *, mcp: ASGIApp | None = None, metrics: ASGIApp | None = None,
               alertmanager: ASGIApp | None = None, pages: Sequence[BaseRoute] = (),
               dashboard: Sequence[BaseRoute] = (), slack: ASGIApp | None = None) -> Starlette:
    """`health()` returns (healthy, details); /healthz answers 200 or 503 with the details.
    `mcp`, when given, serves /mcp (streamable HTTP); `metrics`, /metrics (Prometheus);
    `alertmanager`, /webhooks/alertmanager (`web/webhooks.py`); `pages`, the signed links and the
    approvals page (`web/approvals.py`); `dashboard`, `/` and the dashboard's pages
    (`web/dashboard.py`); `slack`, /slack/interactivity (`answer/slack.py`)."""

    async def healthz(request: Request) -> JSONResponse:
        ok, details = health()
        return JSONResponse({"status": "ok" if ok else "unhealthy", **details}, status_code=200 if ok else 503)

    routes = [Route("/healthz", healthz, methods=["GET"])]
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
    return Starlette(routes=routes)


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
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and without it
    # a response sent in two writes waits ~40 ms for the client's delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise FaztAgentError(f"cannot listen on {listen} ({setting}): {e.strerror or e}") from None
    sock.set_inheritable(True)
    tls: dict[str, Any] = {"ssl_context_factory": lambda _config, _default: ssl_context} if ssl_context else {}
    server = QuietServer(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", **tls))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if task.done():
        raise FaztAgentError(f"{what} on {listen} failed to start: {task.exception()}")
    return server, task


async def stop(server: uvicorn.Server, task: asyncio.Task[None], timeout: float = 1.5) -> None:
    server.should_exit = True
    try:
        await asyncio.wait_for(task, timeout)
    except (asyncio.TimeoutError, asyncio.CancelledError):
        task.cancel()
