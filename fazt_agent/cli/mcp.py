"""`fazt-agent mcp serve` and `fazt-agent tokens create|list|revoke`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from ._common import EXIT_USAGE, console, fail, load, print_json, run, runtime

mcp_app = typer.Typer(help="The MCP server for Claude Code, Claude Desktop or any MCP client.", no_args_is_help=True)
tokens_app = typer.Typer(help="Bearer tokens for the MCP server over HTTP.", no_args_is_help=True)


@mcp_app.command("serve")
def serve(stdio: bool = typer.Option(False, "--stdio", help="Speak MCP on stdin/stdout (a client's `command`)."),
          http: bool = typer.Option(False, "--http", help="Serve /mcp over streamable HTTP on its own."),
          listen: str = typer.Option("127.0.0.1:7071", "--listen", help="HOST:PORT for --http."),
          worker: Optional[str] = typer.Option(None, "--worker", hidden=True,
                                               help="The daemon's /mcp worker for clients of HOST:PORT."),
          daemon_data_dir: Optional[Path] = typer.Option(None, "--daemon-data-dir", hidden=True,
                                                         help="The data dir of the daemon that starts this worker."),
          fleet: bool = typer.Option(False, "--fleet", help="With --stdio: every server of `fazt-agent servers "
                                                            "list`, each tool with an optional `server` argument.")
          ) -> None:
    """Run the MCP server on the configured data dir, whether or not the daemon runs.

    \b
    Stdio trusts the local user (admin scope).
    HTTP needs a bearer token (`fazt-agent tokens create`);
    the daemon also serves /mcp on its control plane ([http] listen).
    """
    if worker is not None:
        http, listen = True, "127.0.0.1:0"
    if stdio == http:
        fail("choose one transport: --stdio or --http", code=EXIT_USAGE)
    if fleet:  # no config.toml, no data dir: the servers of ~/.fazt/config.json (fleet/server.py)
        if not stdio:
            fail("--fleet works with --stdio (the MCP server a client such as Claude Code starts)", code=EXIT_USAGE)
        from ..fleet.server import build_fleet_server

        run(lambda: build_fleet_server().run_stdio_async())
        return
    config = load()
    if daemon_data_dir is not None and config.data_dir.resolve() != daemon_data_dir.resolve():
        # the config file was edited since the daemon started: never serve another data dir on its /mcp
        message = (f"{config.source}: [agent] data_dir is now {str(config.data_dir)!r} but the daemon runs on "
                   f"{str(daemon_data_dir)!r}; restart the daemon to use the new one")
        print(f"error {message}", flush=True)   # the daemon reads this line (mcp.worker.READY's place)
        fail(message, code=EXIT_USAGE)
    if stdio:
        run(lambda: _stdio(config))
        return
    from pydantic import ValidationError

    from ..config import HttpSection

    try:
        section = HttpSection(listen=listen)
        public = HttpSection(listen=worker) if worker is not None else None
    except ValidationError:
        fail(f"expected HOST:PORT such as 127.0.0.1:7071, got {worker if worker is not None else listen!r}",
             code=EXIT_USAGE)
    from ..mcp.http import serve as serve_http
    from ._common import service_logging

    service_logging(config.file.log.level, config.file.log.format)

    def ready(url: str) -> None:
        if public is None:
            typer.echo(f"MCP server on {url} (Ctrl-C stops it)", err=True)
        else:  # the daemon reads this line (mcp.worker.READY)
            print(f"listening {url.removeprefix('http://').removesuffix('/mcp')}", flush=True)

    async def body() -> None:
        async with runtime(config, needs_definitions=None) as rt:
            await serve_http(rt, section.host, section.port, ready=ready,
                             public=(public.host, public.port) if public is not None else None)

    run(body)


async def _stdio(config: Any) -> None:
    from ..engine import Engine
    from ..mcp._registry import Deps
    from ..mcp.server import build_server

    async with runtime(config, needs_definitions=None) as rt:
        await build_server(Deps(rt, Engine(rt), "stdio")).run_stdio_async()


@tokens_app.command("create")
def tokens_create(name: str = typer.Argument(..., help="Who or what uses it, e.g. 'laptop-claude'."),
                  scope: str = typer.Option(..., "--scope", help="read, operate or admin."),
                  as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Create a token and print it once (only its hash is stored).

    read: status, history, lists, explain; operate: also plan, run actions, answer halts;
    admin: also autonomy, pause and resume.
    """
    from ..mcp.auth import TokenStore

    async def body() -> tuple[Any, str]:
        async with runtime(needs_definitions=None) as rt:
            return await TokenStore(rt.store, rt.events, rt.clock).create(name, scope)

    token, secret = run(body)
    if as_json:
        print_json({**token.to_json(), "token": secret})
        return
    typer.echo(secret)
    typer.echo(f"token {token.name!r} (scope {token.scope}) created; it is shown only this once.\n"
               f"Send it as the header  Authorization: Bearer <token>", err=True)


@tokens_app.command("list")
def tokens_list(all_: bool = typer.Option(False, "--all", help="Include revoked tokens."),
                as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Tokens with their scope and when they were last used (never the tokens themselves)."""
    from ..mcp.auth import TokenStore

    async def body() -> list[Any]:
        async with runtime(needs_definitions=None) as rt:
            return await TokenStore(rt.store, rt.events, rt.clock).list(include_revoked=all_)

    tokens = run(body)
    if as_json:
        print_json([t.to_json() for t in tokens])
        return
    if not tokens:
        typer.echo("no tokens: create one with `fazt-agent tokens create NAME --scope read`")
        return
    from rich.table import Table

    table = Table("name", "scope", "created", "last used", "revoked", box=None, pad_edge=False)
    for t in tokens:
        table.add_row(t.name, t.scope, f"{t.created_at:%Y-%m-%d %H:%M}",
                      f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "never",
                      f"{t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "")
    console().print(table)


@tokens_app.command("revoke")
def tokens_revoke(name: str = typer.Argument(...)) -> None:
    """Revoke a token: every request with it gets 401 from now on."""
    from ..mcp.auth import TokenStore

    async def body() -> Any:
        async with runtime(needs_definitions=None) as rt:
            return await TokenStore(rt.store, rt.events, rt.clock).revoke(name)

    token = run(body)
    typer.echo(f"revoked token {token.name!r} (scope {token.scope})")
