"""Calling one agent's tools over its `/mcp` (streamable HTTP) with the stored token.

Used by `--server NAME` on the CLI and by the fleet MCP server. The MCP SDK is imported here,
inside the functions, so a command without `--server` never loads it. Every failure becomes a
`RemoteError` naming the server: unreachable, a refused token, or the tool's own error text (a
scope refusal reads exactly as the agent wrote it, "... needs the 'operate' scope ...").
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable

from ..errors import FaztAgentError
from .config import Server

TIMEOUT = 30.0       # connect/write/pool; a tool's reply may take longer (an approved plan runs)
READ_TIMEOUT = 300.0


class RemoteError(FaztAgentError):
    """A call to another agent failed; the message names the server."""


@asynccontextmanager
async def session(server: Server, *, elicitation: Callable[..., Awaitable[Any]] | None = None) -> AsyncIterator[Any]:
    """An initialized MCP client session with `server`'s /mcp.

    Raises:
        RemoteError: the server cannot be reached or refuses the token.
    """
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    url = f"{server.base}/mcp"
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {server.token}"},
                              timeout=httpx2.Timeout(TIMEOUT, read=READ_TIMEOUT))
    kwargs: dict[str, Any] = {"elicitation_callback": elicitation} if elicitation is not None else {}
    try:
        async with http:
            async with Client(streamable_http_client(url, http_client=http), **kwargs) as client:
                yield client
    except BaseException as e:  # the SDK wraps transport errors (and ours) in exception groups
        inner = innermost(e)
        if isinstance(inner, RemoteError):
            raise inner from None
        import asyncio

        if isinstance(inner, (KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError)):
            raise
        raise RemoteError(describe(server, inner)) from None


def innermost(e: BaseException) -> BaseException:
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return e


def describe(server: Server, e: BaseException) -> str:
    """Why `server` could not be used, in one line (the innermost cause of an exception group)."""
    e = innermost(e)
    text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    status = getattr(getattr(e, "response", None), "status_code", None)
    if status == 401:
        return (f"server {server.name!r} ({server.url}) refused the token (401: unknown or revoked); store a "
                f"new one with `fazt-agent servers add {server.name} --url {server.url} --token-env VAR`")
    if status is not None:
        return f"server {server.name!r} ({server.url}) answered {status} on /mcp"
    lowered = text.lower()
    if "connect" in lowered or "refused" in lowered or isinstance(e, ConnectionError):
        return f"server {server.name!r} is unreachable at {server.url}: {text}"
    if "timeout" in lowered or isinstance(e, TimeoutError):
        return f"server {server.name!r} ({server.url}) did not answer in time: {text}"
    return f"server {server.name!r} ({server.url}): {text}"


def tool_text(result: Any) -> str:
    """A tool result's text; an error without the SDK's "Error executing tool NAME: " in front, so it
    reads as the agent's own message does locally."""
    text = "\n".join(getattr(c, "text", "") for c in result.content if getattr(c, "text", None)).strip()
    if result.is_error and text.startswith("Error executing tool "):
        text = text.partition(": ")[2] or text
    return text


async def call(server: Server, tool: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    """One tool call in a session of its own; the structured result.

    Raises:
        RemoteError: unreachable, refused, or the tool reported an error (its text as it is).
    """
    async with session(server) as client:
        return await tool_result(server, client, tool, arguments or {})


async def tool_result(server: Server, client: Any, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """One call in an open session; the structured result, or RemoteError with the tool's text."""
    result = await client.call_tool(tool, arguments)
    if result.is_error:
        raise RemoteError(tool_text(result) or f"{tool} failed on server {server.name!r}")
    return dict(result.structured_content or {})
