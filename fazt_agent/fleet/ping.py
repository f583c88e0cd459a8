"""`servers ping`: is each server up, which version, at which autonomy, how far away.

One `GET /metrics` with the stored token per server: it answers the three questions in one round
trip and proves the token is accepted (any scope may read it). Servers are asked in parallel
threads (plain urllib: no event loop, no extra import), each with its own timeout, so one dead
server costs its timeout once, not once per server.
"""

from __future__ import annotations

import re
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .config import Server

INFO = re.compile(r'^fazt_agent_info\{version="([^"]*)"\} 1', re.M)
AUTONOMY = re.compile(r'^fazt_agent_autonomy\{level="([^"]*)"\} 1', re.M)
PAUSED = re.compile(r"^fazt_agent_paused (\d)", re.M)


@dataclass(frozen=True)
class Pong:
    server: Server
    ok: bool
    latency_ms: float | None = None
    version: str | None = None
    autonomy: str | None = None
    paused: bool | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.server.name, "url": self.server.url, "ok": self.ok,
                "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 1),
                "version": self.version, "autonomy": self.autonomy, "paused": self.paused, "error": self.error}


def ping(server: Server, timeout: float = 5.0) -> Pong:
    """Ask one server; never raises: every failure is a Pong with a readable `error`."""
    request = urllib.request.Request(f"{server.base}/metrics", headers={
        "Authorization": f"Bearer {server.token}", "User-Agent": "fazt-agent-servers-ping"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (http(s) checked at add)
            body = response.read(4 * 1024 * 1024).decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return Pong(server, False, _ms(t0), error=_http_error(e))
    except urllib.error.URLError as e:
        return Pong(server, False, error=f"unreachable at {server.url}: {_reason(e.reason)}")
    except (TimeoutError, socket.timeout):
        return Pong(server, False, error=f"no answer from {server.url} within {timeout:g} s")
    except (OSError, ValueError) as e:
        return Pong(server, False, error=f"unreachable at {server.url}: {_reason(e)}")
    latency = _ms(t0)
    info = INFO.search(body)
    if info is None:
        return Pong(server, False, latency, error=f"{server.url}/metrics answered, but not as a fazt-agent "
                                                  "(no fazt_agent_info): is the URL the agent's control plane?")
    autonomy, paused = AUTONOMY.search(body), PAUSED.search(body)
    return Pong(server, True, latency, info.group(1), autonomy.group(1) if autonomy else None,
                paused.group(1) == "1" if paused else None)


def ping_all(servers: list[Server], timeout: float = 5.0) -> list[Pong]:
    """Ping every server at once; results in the order given."""
    if not servers:
        return []
    with ThreadPoolExecutor(max_workers=min(32, len(servers))) as pool:
        return list(pool.map(lambda s: ping(s, timeout), servers))


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


def _http_error(e: urllib.error.HTTPError) -> str:
    if e.code == 401:
        return ("refused the token (401: unknown or revoked): create one on that server with `fazt-agent tokens "
                "create NAME --scope read` and store it with `fazt-agent servers add`")
    if e.code == 404:
        return "no /metrics there (404): is the URL the agent's control plane ([http] listen)?"
    return f"answered {e.code} {e.reason}"


def _reason(reason: Any) -> str:
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is the daemon running, with [http] enabled?)"
    if isinstance(reason, socket.gaierror):
        return f"unknown host ({reason.strerror})"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason)
