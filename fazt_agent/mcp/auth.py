"""Bearer tokens for MCP over HTTP: created once, stored hashed, scoped, revocable; and the ASGI
middleware that answers 401 to a request without a valid one.

Scopes are ordered: `read` (status, history, lists, explain) < `operate` (plan, run, answer
halts) < `admin` (autonomy, pause, resume). Stdio trusts the local user: it is `admin`, named
"stdio". A token is `fzt_` + 43 URL-safe characters; only its SHA-256 is stored.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from ..clock import Clock, iso, parse_iso
from ..errors import FaztAgentError
from ..events import EventLog
from ..store import Store
from .events import TokenCreated, TokenRevoked

ScopeName = Literal["read", "operate", "admin"]
SCOPES: tuple[ScopeName, ...] = ("read", "operate", "admin")
PREFIX = "fzt_"
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
TOUCH_EVERY = timedelta(seconds=60)   # last_used_at is written at most once a minute per token
_ACTIVE = "SELECT * FROM tokens WHERE hash = ? AND revoked_at IS NULL"


class TokenError(FaztAgentError):
    """A token cannot be created or revoked as asked; the message says why."""


def covers(granted: str, needed: str) -> bool:
    """Whether a token of scope `granted` may do what needs scope `needed`."""
    return SCOPES.index(granted) >= SCOPES.index(needed)  # type: ignore[arg-type]


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Token:
    id: int
    name: str
    scope: ScopeName
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        def ts(v: datetime | None) -> str | None:
            return iso(v) if v else None

        return {"id": self.id, "name": self.name, "scope": self.scope, "created_at": iso(self.created_at),
                "last_used_at": ts(self.last_used_at), "revoked_at": ts(self.revoked_at)}


class TokenStore:
    """The `tokens` table: create, list, revoke, verify."""

    def __init__(self, store: Store, events: EventLog, clock: Clock):
        self.store = store
        self.events = events
        self.clock = clock

    async def create(self, name: str, scope: str) -> tuple[Token, str]:
        """A new token; returns it and its secret, which is shown once and never stored.

        Raises:
            TokenError: a bad name or scope, or an active token of that name exists.
        """
        if not NAME.match(name) or name == "stdio":
            raise TokenError(f"bad token name {name!r}: use lowercase letters, digits, '.', '_' and '-' "
                             "(at most 64, starting with a letter or digit; 'stdio' is reserved)")
        if scope not in SCOPES:
            raise TokenError(f"unknown scope {scope!r} (accepted: {', '.join(SCOPES)})")
        secret = PREFIX + secrets.token_urlsafe(32)
        try:
            await self.store.execute("INSERT INTO tokens(name, scope, hash, created_at) VALUES (?, ?, ?, ?)",
                                     (name, scope, digest(secret), iso(self.clock.now())))
        except sqlite3.IntegrityError:
            raise TokenError(f"a token named {name!r} already exists; revoke it first "
                             f"(fazt-agent tokens revoke {name}) or choose another name") from None
        await self.events.emit("token.created", TokenCreated(name=name, scope=scope), source="mcp")
        token = await self._one("SELECT * FROM tokens WHERE name = ? AND revoked_at IS NULL", (name,))
        assert token is not None
        return token, secret

    async def list(self, *, include_revoked: bool = False) -> list[Token]:
        where = "" if include_revoked else "WHERE revoked_at IS NULL"
        rows = await self.store.fetchall(f"SELECT * FROM tokens {where} ORDER BY name, id")
        return [_from_row(r) for r in rows]

    async def revoke(self, name: str) -> Token:
        """Revoke the active token `name`; requests with it get 401 from now on.

        Raises:
            TokenError: there is no active token of that name.
        """
        token = await self._one("SELECT * FROM tokens WHERE name = ? AND revoked_at IS NULL", (name,))
        changed = token is not None and await self.store.execute(
            "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (iso(self.clock.now()), token.id))
        if not changed:
            raise TokenError(f"there is no active token named {name!r} (see `fazt-agent tokens list`)")
        await self.events.emit("token.revoked", TokenRevoked(name=name), source="mcp")
        assert token is not None
        return token

    async def verify(self, secret: str) -> Token | None:
        """The active token whose secret this is, or None; notes when it was last used.

        Every request reads the token's row, so a revocation (by the CLI, another process) holds
        from the next request on: nothing is cached. The read is `Store.peek` (one indexed lookup
        on this thread, ~10 µs), not a round trip to SQLite's thread on the path of every request.
        """
        if not secret.startswith(PREFIX):
            return None
        rows = await self.store.peek(_ACTIVE, (digest(secret),))
        token = _from_row(rows[0]) if rows else None
        now = self.clock.now()
        if token is not None and (token.last_used_at is None or now - token.last_used_at >= TOUCH_EVERY):
            await self.store.execute("UPDATE tokens SET last_used_at = ? WHERE id = ?", (iso(now), token.id))
        return token

    async def _one(self, sql: str, params: tuple[Any, ...]) -> Token | None:
        row = await self.store.fetchone(sql, params)
        return _from_row(row) if row else None


def _from_row(r: Any) -> Token:
    def ts(v: str | None) -> datetime | None:
        return parse_iso(v) if v else None

    return Token(r["id"], r["name"], r["scope"], parse_iso(r["created_at"]), ts(r["last_used_at"]),
                 ts(r["revoked_at"]))


class BearerAuth:
    """ASGI middleware: `Authorization: Bearer fzt_...` of an active token, or 401.

    The caller becomes the MCP SDK's authenticated user (token name as client id, scope as its
    only scope), so a session stays bound to the token that opened it and tools read the caller
    with `get_access_token()`.
    """

    def __init__(self, app: ASGIApp, tokens: TokenStore):
        from mcp.server.auth.middleware.auth_context import auth_context_var
        from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
        from mcp.server.auth.provider import AccessToken

        self.app = app
        self.tokens = tokens
        self._var = auth_context_var
        self._user = lambda t: AuthenticatedUser(AccessToken(token=f"fazt-token:{t.id}", client_id=t.name,
                                                             scopes=[t.scope], subject=str(t.id)))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = await bearer(scope, self.tokens)
        if token is None:
            await unauthorized(send, given="authorization" in Headers(scope=scope))
            return
        user = self._user(token)
        reset = self._var.set(user)
        try:
            await self.app({**scope, "user": user}, receive, send)
        finally:
            self._var.reset(reset)


async def bearer(scope: Scope, tokens: TokenStore) -> Token | None:
    """The active token of a request's `Authorization: Bearer fzt_...` header, or None."""
    kind, _, secret = Headers(scope=scope).get("authorization", "").partition(" ")
    return await tokens.verify(secret.strip()) if kind.lower() == "bearer" and secret else None


async def unauthorized(send: Send, *, given: bool) -> None:
    """401 with a Bearer challenge (RFC 6750) and a JSON body that says what to send."""
    if given:
        challenge = 'Bearer realm="fazt-agent", error="invalid_token", error_description="unknown or revoked token"'
        body = b'{"error":"invalid_token","error_description":"unknown or revoked token"}'
    else:
        challenge = 'Bearer realm="fazt-agent"'
        body = (b'{"error":"unauthorized","error_description":"send Authorization: Bearer TOKEN '
                b'(create one with: fazt-agent tokens create NAME --scope read)"}')
    await send({"type": "http.response.start", "status": 401,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"www-authenticate", challenge.encode())]})
    await send({"type": "http.response.body", "body": body})
