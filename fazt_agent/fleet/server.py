"""`fazt-agent mcp serve --stdio --fleet`: one MCP server for every agent in ~/.fazt/config.json.

It offers every agent tool (`mcp/_registry.TOOLS`, with the same input and output schemas) plus an
optional `server` argument, and `fazt_servers_list`. Each call is routed to that server's `/mcp`
with its stored token (omitted: the smart default of `ClientConfig.resolve`), so the agent itself
checks the token's scope, records the `mcp.call`, and answers. An approval the agent asks for
(elicitation) is passed through to this server's own client and its answer sent back; a client
that cannot be asked leaves the halt pending, as with the agent directly. An unreachable server,
a refused token, or the agent's own refusal is a tool error naming the server.

The config is read at each call, so `fazt-agent servers add` takes effect without a restart.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import typing
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ElicitRequestFormParams, ElicitResult, ToolAnnotations
from pydantic import BaseModel, Field

from .. import __version__
from ..mcp import apps, control, tools  # noqa: F401  (registers the tools)
from ..mcp._registry import TOOLS, ToolSpec
from ..mcp.server import int64_inputs
from .config import ClientConfig, FleetError, Server
from .remote import RemoteError, describe, session, tool_text

INSTRUCTIONS = """This MCP server reaches several fazt-agent servers (the owner's fleet). Every tool takes
an optional `server` (a name from fazt_servers_list; omitted: the default server). Start with
fazt_servers_list, then fazt_system_status per server. Each server's agent applies its own policy,
token scope and audit trail; nothing destructive runs without the owner's approval."""

ServerArg = Annotated[str | None, Field(description="which server (a name from fazt_servers_list); "
                                                    "omitted: the default server")]


def build_fleet_server() -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("fazt-agent-fleet", title="fazt-agent fleet", version=__version__,
                                       instructions=INSTRUCTIONS, log_level="WARNING")
    for name, spec in TOOLS.items():
        server.add_tool(int64_inputs(routed(name, spec)), name=name, title=spec.annotations.title,
                        description=inspect.cleandoc(spec.fn.__doc__ or "") + "\n\n(Fleet: on the server named "
                        "by `server`, else the default server.)", annotations=spec.annotations,
                        structured_output=True)
    server.add_tool(fazt_servers_list, name="fazt_servers_list", title="Servers of the fleet",
                    annotations=ToolAnnotations(title="Servers of the fleet", read_only_hint=True,
                                                idempotent_hint=True, open_world_hint=False),
                    structured_output=True)
    return server


class ServerOut(BaseModel):
    name: str
    url: str
    default: bool


class ServersList(BaseModel):
    servers: list[ServerOut]
    default: str | None = Field(description="the server a call without `server` goes to (None: name one)")
    config: str


async def fazt_servers_list() -> ServersList:
    """The servers this fleet reaches (~/.fazt/config.json on this machine): name, URL, which one is
    the default. Pass a name as `server` to any other tool."""
    cfg = _config()
    try:
        default: str | None = cfg.resolve(None).name
    except FleetError:
        default = None
    return ServersList(servers=[ServerOut(name=s.name, url=s.url, default=s.name == default)
                                for s in cfg.servers.values()], default=default, config=str(cfg.path))


def _config() -> ClientConfig:
    try:
        return ClientConfig.load()
    except FleetError as e:
        raise ToolError(str(e)) from None


def routed(name: str, spec: ToolSpec) -> Any:
    """A function with `spec.fn`'s parameters plus `server`, which calls `name` on that server."""
    sig = inspect.signature(spec.fn, eval_str=True)
    hints = typing.get_type_hints(spec.fn, include_extras=True)
    returns = hints.get("return", Any)
    params = [p for p in sig.parameters.values() if p.annotation is not Context]

    async def call(ctx: Context, server: str | None = None, **kwargs: Any) -> Any:
        target = _resolve(server)
        from pydantic_core import to_jsonable_python

        arguments = {k: to_jsonable_python(v) for k, v in kwargs.items() if v is not None or k in _explicit(ctx)}
        data = await _call(target, name, arguments, ctx)
        return _as(returns, data)

    call = functools.wraps(spec.fn)(call)
    ctx_param = inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context)
    server_param = inspect.Parameter("server", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ServerArg)
    kw = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params]
    call.__signature__ = sig.replace(parameters=[*kw, server_param, ctx_param],  # type: ignore[attr-defined]
                                     return_annotation=returns)
    call.__annotations__ = {**{p.name: p.annotation for p in kw}, "server": ServerArg, "ctx": Context,
                            "return": returns}
    del call.__wrapped__   # the SDK must read our signature, not the agent tool's
    return call


def _explicit(ctx: Context) -> set[str]:
    """The argument names the client sent (so an explicit null is passed on, a default is not)."""
    try:
        return set((ctx.request_context.request.params.arguments or {}).keys())  # type: ignore[union-attr]
    except AttributeError:
        return set()


def _resolve(name: str | None) -> Server:
    try:
        return _config().resolve(name)
    except FleetError as e:
        raise ToolError(str(e)) from None


class Connection:
    """One open session with one server, kept for the read-only tools (a session's handshake costs
    more than most calls). A task of its own enters and leaves it (anyio wants both in one task)
    and runs the calls queued to it, one at a time."""

    def __init__(self, server: Server):
        self.server = server
        self.queue: asyncio.Queue[tuple[str, dict[str, Any], asyncio.Future[Any]] | None] = asyncio.Queue()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.task = asyncio.create_task(self._run(), name=f"fleet:{server.name}")

    async def call(self, name: str, arguments: dict[str, Any]) -> Any:
        await self.ready   # RemoteError when the session could not open
        if self.closed:
            raise RemoteError(f"the session with server {self.server.name!r} closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self.queue.put((name, arguments, future))
        return await future

    async def _run(self) -> None:
        error: RemoteError | None = None
        try:
            async with session(self.server) as client:
                self.ready.set_result(None)
                while (item := await self.queue.get()) is not None:
                    name, arguments, future = item
                    try:
                        result = await client.call_tool(name, arguments)
                    except Exception as e:  # the session broke: this call and the queued ones fail
                        error = RemoteError(describe(self.server, e))
                        future.set_exception(error)
                        break
                    if not future.done():
                        future.set_result(result)
        except RemoteError as e:
            error = e
        except Exception as e:
            error = RemoteError(describe(self.server, e))
        finally:
            self.closed = True
            error = error or RemoteError(f"the session with server {self.server.name!r} closed")
            if not self.ready.done():
                self.ready.set_exception(error)
            while not self.queue.empty():
                item = self.queue.get_nowait()
                if item is not None and not item[2].done():
                    item[2].set_exception(error)


_connections: dict[tuple[str, str, str], Connection] = {}


async def _pooled(target: Server, name: str, arguments: dict[str, Any]) -> Any:
    """A read-only call on the kept session of `target` (opened on first use, reopened once if it broke)."""
    key = (target.name, target.url, target.token)
    for attempt in (1, 2):
        conn = _connections.get(key)
        if conn is None or conn.closed:
            conn = _connections[key] = Connection(target)
        try:
            return await conn.call(name, arguments)
        except RemoteError:
            _connections.pop(key, None)
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


async def _call(target: Server, name: str, arguments: dict[str, Any], ctx: Context) -> dict[str, Any]:
    spec = TOOLS.get(name)
    try:
        if spec is not None and spec.annotations.read_only_hint:
            result = await _pooled(target, name, arguments)
        else:  # may ask the owner (elicitation) or run long: a session of its own, with the question passed on
            forward = _forwarder(ctx) if _can_elicit(ctx) else None
            async with session(target, elicitation=forward) as client:
                result = await client.call_tool(name, arguments)
    except RemoteError as e:
        raise ToolError(str(e)) from None
    if result.is_error:
        raise ToolError(f"server {target.name!r}: {tool_text(result) or name + ' failed'}")
    return dict(result.structured_content or {})


def _can_elicit(ctx: Context) -> bool:
    """Whether this server's client can be asked now (declared form elicitation, and the session
    may send a request mid-call)."""
    caps = ctx.client_capabilities
    el = caps.elicitation if caps is not None else None
    if el is None or (el.form is None and el.url is not None):
        return False
    return bool(getattr(ctx.session, "can_send_request", False))


def _forwarder(ctx: Context) -> Any:
    """The upstream client's elicitation callback: ask this server's client the same question."""

    async def forward(context: Any, params: Any) -> ElicitResult:
        if not isinstance(params, ElicitRequestFormParams):
            return ElicitResult(action="decline")
        return await ctx.session.elicit_form(params.message, params.requested_schema,
                                             related_request_id=ctx.request_id)

    return forward


def _as(returns: Any, data: dict[str, Any]) -> Any:
    """The agent's structured result as the tool's declared return type (same output schema)."""
    candidates = typing.get_args(returns) if typing.get_origin(returns) in (typing.Union, __import__("types").UnionType) \
        else (returns,)
    for t in candidates:
        if isinstance(t, type) and issubclass(t, BaseModel) and t.__name__ != "InputRequiredResult":
            return t.model_validate(data)
    return data
