"""The control-plane ASGI app (Starlette)."""

from __future__ import annotations

from typing import Any, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

Health = Callable[[], tuple[bool, dict[str, Any]]]


def create_app(health: Health) -> Starlette:
    """`health()` returns (healthy, details); /healthz answers 200 or 503 with the details."""

    async def healthz(request: Request) -> JSONResponse:
        ok, details = health()
        return JSONResponse({"status": "ok" if ok else "unhealthy", **details}, status_code=200 if ok else 503)

    return Starlette(routes=[Route("/healthz", healthz, methods=["GET"])])
