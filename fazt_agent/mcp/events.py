"""Audit events of the MCP server: `mcp.call` for every tool call, token creation and revocation."""

from __future__ import annotations

import re
from typing import Any, Iterable, Literal

from ..event_types import EventData, event_type

SECRET_KEY = re.compile(r"pass(word|phrase)?|secret|token|api[_-]?key|authorization|credential|private", re.I)
TOKEN_VALUE = re.compile(r"fzt_[A-Za-z0-9_-]{16,}")


@event_type("mcp.call")
class McpCall(EventData):
    tool: str
    arguments: dict[str, Any]
    token: str                      # the token's name; "stdio" for the local user
    scope: str
    transport: Literal["stdio", "http"]
    outcome: Literal["ok", "error", "refused", "input_required"]
    error: str | None = None
    duration_ms: float


@event_type("token.created")
class TokenCreated(EventData):
    name: str
    scope: str


@event_type("token.revoked")
class TokenRevoked(EventData):
    name: str


def secret_values(value: Any) -> list[str]:
    """The string values held under secret-looking keys (to hide them from error texts too)."""
    if isinstance(value, dict):
        return [v for k, x in value.items() for v in
                ([x] if SECRET_KEY.search(str(k)) and isinstance(x, str) else secret_values(x))]
    if isinstance(value, (list, tuple)):
        return [v for x in value for v in secret_values(x)]
    return []


def redact(value: Any, secrets: Iterable[str] = ()) -> Any:
    """`value` with secret-looking keys, bearer tokens and known secret values replaced by '***'."""
    known = sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True)

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: "***" if SECRET_KEY.search(str(k)) else walk(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [walk(x) for x in v]
        if isinstance(v, str):
            for secret in known:
                v = v.replace(secret, "***")
            return TOKEN_VALUE.sub("***", v)
        return v

    return walk(value)
