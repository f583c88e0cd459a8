"""What the control plane's front door (`front.py`) and its uvicorn app (`app.py`) share: the socket,
/healthz's answer, the server's name. Imports nothing of either."""

from __future__ import annotations

import json
import socket
import time
from typing import Any, Callable

from ..errors import FaztAgentError

Health = Callable[[], tuple[bool, dict[str, Any]]]
SERVER = b"fazt-agent"
MCP_MAX_BODY = 1024 * 1024   # the largest /mcp request body: the worker answers 413 above it (mcp/http.py)


def health_response(health: Health) -> tuple[int, bytes]:
    """/healthz's status and JSON body: 200 or 503 with `health()`'s details."""
    ok, details = health()
    body = json.dumps({"status": "ok" if ok else "unhealthy", **details}, ensure_ascii=False, allow_nan=False,
                      indent=None, separators=(",", ":")).encode("utf-8")
    return (200 if ok else 503), body


def bind(host: str, port: int, setting: str) -> socket.socket:
    """A listening TCP socket on host:port (TCP_NODELAY-able, SO_REUSEADDR, inheritable).

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
        sock.listen(2048)   # uvicorn's backlog: connections wait here while it takes over
    except OSError as e:
        sock.close()
        raise FaztAgentError(f"cannot listen on {listen} ({setting}): {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


_date: tuple[int, bytes] = (-1, b"")   # the last second formatted, and its date


def http_date() -> bytes:
    """Now as an HTTP date (RFC 9110 IMF-fixdate), without email.utils (it imports the email package);
    formatted once a second (uvicorn does the same), not once a response."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        t = time.gmtime(now)
        _date = (now, (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
                       f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT").encode("ascii"))
    return _date[1]
