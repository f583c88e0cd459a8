"""`fazt-agent servers add|list|default|remove|ping`: the agents this laptop reaches
(`~/.fazt/config.json`, see `fleet/config.py`). These commands never read config.toml or a data dir."""

from __future__ import annotations

import os
from typing import Any, Optional

import typer

from ._common import EXIT_USAGE, console, fail, print_json

servers_app = typer.Typer(help="The agents this machine reaches (~/.fazt/config.json): add, list, ping.",
                          no_args_is_help=True)


def _config() -> Any:
    from ..fleet.config import ClientConfig, FleetError

    try:
        return ClientConfig.load()
    except FleetError as e:
        fail(str(e), code=EXIT_USAGE)


def _save(cfg: Any, action: Any) -> None:
    """Apply `action(cfg)` and write the file; a refused change writes nothing."""
    from ..fleet.config import FleetError

    try:
        action(cfg)
        cfg.save()
    except FleetError as e:
        fail(str(e), code=EXIT_USAGE)
    except OSError as e:
        fail(f"cannot write {cfg.path}: {e.strerror or e}")


@servers_app.command("add")
def add(name: str = typer.Argument(..., help="A short name for it, e.g. 'zyt' or 'home'."),
        url: str = typer.Option(..., "--url", help="Its control plane, e.g. https://zyt.app or http://10.0.0.5:7070."),
        token: Optional[str] = typer.Option(None, "--token", help="A token made there: fazt-agent tokens create."),
        token_env: Optional[str] = typer.Option(None, "--token-env", metavar="VAR",
                                                help="Read the token from environment variable VAR (keeps it "
                                                     "out of the shell history).")) -> None:
    """Add (or replace) a server. The first one added becomes the default."""
    if (token is None) == (token_env is None):
        fail("give the token with --token TOKEN or --token-env VAR (one of them)", code=EXIT_USAGE)
    if token_env is not None:
        token = os.environ.get(token_env)
        if not token:
            fail(f"--token-env {token_env}: that environment variable is not set or empty", code=EXIT_USAGE)
    cfg = _config()
    replaced = name in cfg.servers
    _save(cfg, lambda c: c.add(name, url, token or ""))
    mark = " (default)" if cfg.default == name else ""
    typer.echo(f"{'replaced' if replaced else 'added'} server {name!r} → {url}{mark} in {cfg.path}")


@servers_app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Print JSON (never the tokens).")) -> None:
    """The configured servers: name, URL, and which one is the default."""
    cfg = _config()
    rows = [{"name": s.name, "url": s.url, "default": s.name == cfg.default} for s in cfg.servers.values()]
    if as_json:
        print_json(rows)
        return
    if not rows:
        typer.echo("no servers: run `fazt-agent servers add NAME --url URL --token TOKEN`")
        return
    from rich.table import Table

    table = Table("", "name", "url", box=None, pad_edge=False)
    for r in rows:
        table.add_row("*" if r["default"] else "", r["name"], r["url"])
    console().print(table)


@servers_app.command("default")
def default(name: Optional[str] = typer.Argument(None, help="The server to use when none is named.")) -> None:
    """Make NAME the default server; without NAME, print the server used when none is named
    (the only one, else the default)."""
    from ..fleet.config import FleetError

    cfg = _config()
    if name is None:
        try:
            server = cfg.resolve(None)
        except FleetError as e:
            fail(str(e), code=EXIT_USAGE)
        how = "the default" if cfg.default == server.name else "the only server"
        typer.echo(f"{server.name}  {server.url}  ({how})")
        return
    _save(cfg, lambda c: c.set_default(name))
    typer.echo(f"default server: {name!r}")


@servers_app.command("remove")
def remove(name: str = typer.Argument(...)) -> None:
    """Forget a server (its token is removed from this machine; revoke it on the server too)."""
    cfg = _config()
    was_default = cfg.default == name
    _save(cfg, lambda c: c.remove(name))
    note = "; there is no default now (fazt-agent servers default NAME)" if was_default and cfg.servers else ""
    typer.echo(f"removed server {name!r}{note}")


@servers_app.command("ping")
def ping(name: Optional[str] = typer.Argument(None, help="One server; without it, every configured server."),
         timeout: float = typer.Option(5.0, "--timeout", min=0.1, max=120, help="Seconds to wait for each server."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Ask servers (in parallel) whether they answer: version, autonomy, latency. Exit 1 if one does not."""
    from ..fleet.config import ADD_HINT, FleetError
    from ..fleet.ping import ping_all

    cfg = _config()
    try:
        targets = [cfg.get(name)] if name else list(cfg.servers.values())
    except FleetError as e:
        fail(str(e), code=EXIT_USAGE)
    if not targets:
        fail(f"no server configured in {cfg.path}", hint=ADD_HINT, code=EXIT_USAGE)
    pongs = ping_all(targets, timeout)
    if as_json:
        print_json([p.to_json() for p in pongs])
    else:
        for p in pongs:
            if p.ok:
                paused = ", paused" if p.paused else ""
                typer.echo(f"{p.server.name}: ok  fazt-agent {p.version}, autonomy {p.autonomy}{paused}, "
                           f"{_latency(p.latency_ms)}  ({p.server.url})")
            else:
                typer.secho(f"{p.server.name}: error  {p.error}", fg="red")
    if not all(p.ok for p in pongs):
        raise typer.Exit(1)


def _latency(ms: float | None) -> str:
    if ms is None:
        return ""
    return f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms"
