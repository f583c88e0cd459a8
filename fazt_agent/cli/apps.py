"""`fazt-agent deploy` and `fazt-agent apps ...`: releases of the owner's apps (issue 13)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from ..fleet import SERVER_HELP
from ._common import EXIT_PROBLEM, bounded, console, fail, print_json, run, runtime

apps_app = typer.Typer(help="Apps: list, inspect, roll back, delete, env.", no_args_is_help=True)
env_app = typer.Typer(help="An app's environment (fazt.env in its serverless code).", no_args_is_help=True)
apps_app.add_typer(env_app, name="env")
JSON = typer.Option(False, "--json", help="Print JSON.")


def _size(n: int) -> str:
    from ..units import format_size

    return format_size(n)


def deploy(source: Path = typer.Argument(..., help="A directory or a .zip file."),
           name: str = typer.Option(..., "--name", "-n", help="The app's name (becomes NAME.<[apps] domain>)."),
           as_json: bool = JSON,
           server: Optional[str] = typer.Option(None, "--to", "--server", metavar="NAME", help=SERVER_HELP)) -> None:
    """Deploy SOURCE as a new release of APP; an unhealthy release is rolled back by itself."""
    from ..apps import bundle
    from ..apps.deploy import deploy as do_deploy

    async def body() -> dict[str, Any]:
        async with runtime(needs_definitions=None) as rt:
            section = rt.config.file.apps
            bundle.check_name(name)
            try:
                b = bundle.read(source, max_files=section.max_files, max_bytes=section.max_upload)
            except bundle.BundleError as e:
                from ..event_types import AppDeployRefused

                await rt.events.emit("app.deploy_refused", AppDeployRefused(app=name, reason=str(e),
                                                                            source=str(source)), source="apps")
                raise
            return await do_deploy(rt, name, b, str(source.resolve()))

    if server is not None:  # read here, deployed on that agent through its /mcp (fleet/commands.py)
        from ..fleet import commands as remote

        result = remote.deploy(server, name, source)
    else:
        result = run(body)
    if as_json:
        print_json(result)
    elif result["rolled_back"]:
        typer.secho(f"{name}: release {result['release']} failed its health check ({result['problem']}); "
                    f"rolled back to release {result['serving']}", fg="red")
    else:
        note = "" if result["healthy"] else f" (health check failed: {result['problem']}; nothing to roll back to)"
        typer.echo(f"{name}: release {result['release']} live, {result['files']} files, {_size(result['bytes'])} "
                   f"({result['new_blobs']} new) in {result['duration_ms'] / 1000:.2f} s at {result['url']}{note}")
    if not result["healthy"]:
        raise typer.Exit(EXIT_PROBLEM)


@apps_app.command("list")
def apps_list(as_json: bool = JSON,
              server: Optional[str] = typer.Option(None, "--server", metavar="NAME", help=SERVER_HELP)) -> None:
    """The deployed apps and their current releases."""
    from ..apps.deploy import list_apps

    async def body() -> list[dict[str, Any]]:
        async with runtime(needs_definitions=None) as rt:
            return list_apps(rt)

    if server is not None:
        from ..fleet import commands as remote

        rows = remote.apps(server)
    else:
        rows = run(body)
    if as_json:
        print_json(rows)
    elif not rows:
        typer.echo("no apps yet: `fazt-agent deploy DIR --name APP`")
    else:
        from rich.table import Table

        table = Table("app", "release", "files", "size", "deployed", "url", box=None, pad_edge=False)
        for a in rows:
            table.add_row(a["name"], str(a["release"]), str(a["files"]), _size(a["bytes"]),
                          (a["deployed_at"] or "")[:19], a["url"])
        console().print(table)


@apps_app.command("info")
def apps_info(name: str = typer.Argument(..., help="The app."), as_json: bool = JSON) -> None:
    """One app: its current release, domains, settings, env keys (never values)."""
    from ..apps.deploy import info

    async def body() -> dict[str, Any]:
        async with runtime(needs_definitions=None) as rt:
            return info(rt, name)

    a = run(body)
    if as_json:
        print_json(a)
        return
    for key in ("name", "url", "release", "deployed_at", "releases", "domains", "settings", "serverless", "env"):
        typer.echo(f"{key:12} {a[key]}")
    typer.echo(f"{'size':12} {a['files']} files, {_size(a['bytes'])}")


@apps_app.command("releases")
def apps_releases(name: str = typer.Argument(..., help="The app."), as_json: bool = JSON) -> None:
    """The releases kept ([apps] keep_releases), newest first."""
    from ..apps.deploy import releases

    async def body() -> list[dict[str, Any]]:
        async with runtime(needs_definitions=None) as rt:
            return releases(rt, name)

    rows = run(body)
    if as_json:
        print_json(rows)
        return
    for r in rows:
        typer.echo(f"{'*' if r['current'] else ' '} {r['number']:>4}  {r['created_at'][:19]}  {r['status']:8}  "
                   f"{r['files']} files, {_size(r['bytes'])}")


@apps_app.command("logs")
def apps_logs(name: str = typer.Argument(..., help="The app."),
              limit: int = typer.Option(100, "--limit", min=1, max=10000, help="At most this many (newest)."),
              as_json: bool = JSON) -> None:
    """What the app's serverless code logged (console.*, fazt.log.*) and its errors, oldest first."""
    from ..apps.deploy import logs

    async def body() -> list[dict[str, Any]]:
        async with runtime(needs_definitions=None) as rt:
            return logs(rt, name, limit)

    rows = run(body)
    if as_json:
        print_json(rows)
        return
    for r in rows:
        typer.echo(f"{r['ts'][:19]} {r['level']:5} {r['message']}")


@apps_app.command("rollback")
def apps_rollback(name: str = typer.Argument(..., help="The app."),
                  to: int = typer.Option(None, "--to", help="The release number (default: the previous good one)."),
                  as_json: bool = JSON) -> None:
    """Make an earlier release current again (one transaction)."""
    if to is not None:
        bounded(to, "--to")
    from ..apps.deploy import rollback

    async def body() -> dict[str, Any]:
        async with runtime(needs_definitions=None) as rt:
            return await rollback(rt, name, to, "requested on the command line")

    r = run(body)
    if as_json:
        print_json(r)
    else:
        typer.echo(f"{name}: release {r['to_release']} live again (was {r['from_release']})")


@apps_app.command("delete")
def apps_delete(name: str = typer.Argument(..., help="The app."),
                yes: bool = typer.Option(False, "--yes", help="Do not ask."), as_json: bool = JSON) -> None:
    """Delete an app with all its releases (asks first unless --yes)."""
    from ..apps.deploy import delete

    if not yes and not typer.confirm(f"delete app {name!r} and all its releases?", default=False):
        fail("not deleted")

    async def body() -> dict[str, Any]:
        async with runtime(needs_definitions=None) as rt:
            return await delete(rt, name)

    r = run(body)
    if as_json:
        print_json(r)
    else:
        typer.echo(f"{name}: deleted ({r['releases']} releases)")


@env_app.command("set")
def env_set(name: str = typer.Argument(..., help="The app."), key: str = typer.Argument(...),
            value: str = typer.Argument(...), as_json: bool = JSON) -> None:
    """Set KEY=VALUE for APP (the value is never printed nor recorded in events)."""
    from ..apps.deploy import set_env

    _check_key(key)

    async def body() -> bool:
        async with runtime(needs_definitions=None) as rt:
            return await set_env(rt, name, key, value)

    run(body)
    print_json({"app": name, "key": key, "set": True}) if as_json else typer.echo(f"{name}: {key} set")


@env_app.command("unset")
def env_unset(name: str = typer.Argument(..., help="The app."), key: str = typer.Argument(...),
              as_json: bool = JSON) -> None:
    """Remove KEY from APP's environment."""
    from ..apps.deploy import set_env

    async def body() -> bool:
        async with runtime(needs_definitions=None) as rt:
            return await set_env(rt, name, key, None)

    changed = run(body)
    if as_json:
        print_json({"app": name, "key": key, "unset": changed})
    elif not changed:
        fail(f"{name}: {key} was not set")
    else:
        typer.echo(f"{name}: {key} unset")


@env_app.command("list")
def env_list(name: str = typer.Argument(..., help="The app."),
             values: bool = typer.Option(False, "--values", help="Show the values too."), as_json: bool = JSON) -> None:
    """APP's environment keys (values only with --values)."""
    from ..apps.deploy import env

    async def body() -> dict[str, str]:
        async with runtime(needs_definitions=None) as rt:
            return env(rt, name)

    data = run(body)
    shown = data if values else {k: "***" for k in data}
    if as_json:
        print_json(shown)
    else:
        for k, v in shown.items():
            typer.echo(f"{k}={v}")


def _check_key(key: str) -> None:
    import re

    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$", key):
        fail(f"invalid env key {key!r}: use letters, digits and '_', not starting with a digit")
