"""The tool registry: `@tool(...)` records each tool's scope and honest annotations; `guarded()`
puts the caller's scope check in front of it; `Audit` records every call as an `mcp.call` event."""

from __future__ import annotations

import functools
import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Literal, cast

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp_types import ToolAnnotations

from ..errors import FaztAgentError
from .auth import ScopeName, covers
from .events import McpCall, redact, secret_values

if TYPE_CHECKING:
    from ..engine import Engine
    from ..runtime import Runtime

log = logging.getLogger(__name__)
Transport = Literal["stdio", "http"]


@dataclass
class Deps:
    """What the tools work on; the server's lifespan context."""

    rt: Runtime
    engine: Engine
    transport: Transport


@dataclass(frozen=True)
class Caller:
    name: str           # the token's name, or "stdio"
    scope: ScopeName

    @property
    def by(self) -> str:
        """How the caller appears in halts and events: `mcp:NAME`."""
        return f"mcp:{self.name}"


@dataclass(frozen=True)
class ToolSpec:
    fn: Callable[..., Awaitable[Any]]
    scope: ScopeName
    annotations: ToolAnnotations


TOOLS: dict[str, ToolSpec] = {}
_NOTE: ContextVar[dict[str, str]] = ContextVar("fazt_mcp_call_note")  # set by Audit for each call


def tool(name: str, *, scope: ScopeName, title: str, read_only: bool, destructive: bool = False,
         idempotent: bool = True, open_world: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register an async tool function (its docstring is the description the model reads)."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in TOOLS:
            raise RuntimeError(f"MCP tool {name!r} registered twice")
        TOOLS[name] = ToolSpec(fn, scope, ToolAnnotations(
            title=title, read_only_hint=read_only, destructive_hint=destructive, idempotent_hint=idempotent,
            open_world_hint=open_world))
        return fn

    return register


def deps_of(ctx: Context) -> Deps:
    return cast(Deps, ctx.request_context.lifespan_context)


def caller(deps: Deps) -> Caller:
    """Who is calling: the local user on stdio, else the bearer token that the HTTP middleware checked.

    Raises:
        ToolError: an HTTP call without a verified token (the middleware should have refused it).
    """
    if deps.transport == "stdio":
        return Caller("stdio", "admin")
    token = get_access_token()
    if token is None or not token.scopes:
        raise ToolError("not authenticated: send Authorization: Bearer TOKEN")
    return Caller(token.client_id, token.scopes[0])  # type: ignore[arg-type]


def guarded(name: str, spec: ToolSpec) -> Callable[..., Awaitable[Any]]:
    """`spec.fn` behind the scope check; our own errors become tool errors the model can read."""

    @functools.wraps(spec.fn)
    async def call(**kwargs: Any) -> Any:
        who = caller(deps_of(kwargs["ctx"]))
        if not covers(who.scope, spec.scope):
            _NOTE.get({})["outcome"] = "refused"
            raise ToolError(f"{name} needs the '{spec.scope}' scope; the token {who.name!r} has "
                            f"'{who.scope}' (create one with: fazt-agent tokens create NAME --scope {spec.scope})")
        try:
            return await spec.fn(**kwargs)
        except FaztAgentError as e:  # our errors say what was wrong and how to fix it
            raise ToolError(str(e)) from None
        except (ToolError, MCPError):
            raise
        except Exception as e:  # a bug or a damaged database: an error result and its mcp.call event, one log line
            log.error("MCP tool %s failed: %s: %s", name, type(e).__name__, e)
            raise ToolError(f"{name} failed: {type(e).__name__}: {e}") from None

    return call


class Audit:
    """Server middleware: one `mcp.call` event for every `tools/call`, whatever its end — refused
    by scope, arguments rejected by the input schema, an unknown tool, an error, or success."""

    def __init__(self, deps: Deps):
        self.deps = deps

    async def __call__(self, ctx: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        if ctx.method != "tools/call" or ctx.request_id is None:
            return await call_next(ctx)
        params = dict(ctx.params or {})
        who = caller(self.deps)
        note: dict[str, str] = {}
        reset = _NOTE.set(note)
        started = time.perf_counter()
        error: str | None = None
        try:
            result = await call_next(ctx)
            if isinstance(result, dict) and result.get("isError"):
                error = " ".join(c.get("text", "") for c in result.get("content", []) if isinstance(c, dict))
                note.setdefault("outcome", "error")
            elif isinstance(result, dict) and result.get("resultType") == "input_required":
                note["outcome"] = "input_required"
            return result
        except BaseException as e:
            error = str(e) or type(e).__name__
            note["outcome"] = "error"
            raise
        finally:
            _NOTE.reset(reset)
            await self._record(str(params.get("name", "")), params.get("arguments") or {}, who,
                               note.get("outcome", "ok"), error, time.perf_counter() - started)

    async def _record(self, tool: str, arguments: Any, who: Caller, outcome: str, error: str | None,
                      seconds: float) -> None:
        secrets = [*self.deps.rt.config.secrets, *secret_values(arguments)]
        await self.deps.rt.events.emit("mcp.call", McpCall(
            tool=tool, arguments=redact(arguments if isinstance(arguments, dict) else {"": arguments}, secrets),
            token=who.name, scope=who.scope, transport=self.deps.transport, outcome=outcome,  # type: ignore[arg-type]
            error=redact(error, secrets)[:2000] if error else None, duration_ms=round(seconds * 1000, 3)),
            source="mcp")
