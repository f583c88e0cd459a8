"""Top-level commands: init, config check, run, beat, status, systemd-unit."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from ..fleet import SERVER_HELP
from . import _bodies
from ._common import (EXIT_PROBLEM, EXIT_USAGE, console, fail, line, load, print_json, report_config_error, run,
                      runtime, styled)

config_app = typer.Typer(help="Validate the configuration.", no_args_is_help=True)


def init(directory: Path = typer.Argument(..., help="The ops folder to create (your git repo of definitions)."),
         force: bool = typer.Option(False, "--force", help="Overwrite an existing config.toml.")) -> None:
    """Scaffold an ops folder: config.toml, policies/ prompts/ pulse/ kernel/ and a .gitignore."""
    from ..scaffold import scaffold

    try:
        written = scaffold(directory, force=force)
    except FileExistsError as e:
        fail(str(e), hint="pass --force to overwrite it", code=EXIT_USAGE)
    for path in written:
        typer.echo(f"created {path}")
    typer.echo(f"\nnext: fazt-agent config check --config {directory / 'config.toml'}\n"
               f"      fazt-agent run --config {directory / 'config.toml'}")


@config_app.command("check")
def config_check() -> None:
    """Validate config.toml and every definition file; errors print as FILE:KEY: message."""
    from ..config import notify_url_issues
    from ..definitions import load_definitions
    from ..errors import ConfigError
    from ..runtime import autonomy_state, stored_override

    config = load()
    issues = notify_url_issues(config)   # loads apprise: here, never in the idle daemon
    try:
        defs = load_definitions(config)
    except ConfigError as e:
        issues += e.issues
    if issues:
        for issue in issues:
            typer.secho(str(issue), err=True, fg="red")
        raise typer.Exit(EXIT_USAGE)
    source = config.source or "embedded defaults"
    typer.echo(f"config {source}: ok")
    for name, folder in config.folders.items():
        note = " (shipped defaults)" if name in config.shipped else ""
        typer.echo(f"  {name + '/':10} {folder}{note}")
    checks, files = len(defs.checks), len(defs.files)
    typer.echo(f"  {checks} check{'' if checks == 1 else 's'} in {files} pulse file{'' if files == 1 else 's'}")
    typer.echo(f"  autonomy: {autonomy_state(config, stored_override(config.db_path)).summary}")
    for warning in config.warnings:
        typer.secho(f"warning: {warning}", err=True, fg="yellow")


def run_daemon(log_format: str = typer.Option(None, "--log-format", help="text or json (overrides [log] format)."),
               log_level: str = typer.Option(None, "--log-level", help="debug, info, warning or error.")) -> None:
    """Run the daemon in the foreground (what the systemd unit starts)."""
    _bodies.run_daemon(log_format, log_level)


def beat(as_json: bool = typer.Option(False, "--json", help="Print the beat as JSON.")) -> None:
    """Run one turn of the loop now: every check, then incidents and decisions (as the daemon
    would), print the results; exit 1 when something is not ok."""

    async def body() -> Any:
        from ..engine import Engine

        async with runtime(needs_definitions="a beat") as rt:
            engine = Engine(rt)
            result = await rt.pulse.beat(everything=True)
            await engine.on_beat(result)
            await engine.sweep()
            return result

    result = run(body)
    if as_json:
        print_json(result.to_json())
    else:
        from rich.table import Table

        table = Table("check", "target", "status", "message", box=None, pad_edge=False)
        for r in result.results:
            table.add_row(r.check, r.target, styled(r.status), r.message)
        out = console()
        out.print(table)
        out.print(line(f"beat {result.id}: ", styled(result.status), f" in {result.duration_ms:.0f} ms"))
    raise typer.Exit(0 if result.status == "ok" else EXIT_PROBLEM)


def status(as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
           server: Optional[str] = typer.Option(None, "--server", metavar="NAME", help=SERVER_HELP)) -> None:
    """Summarise health, the last beat, autonomy (and where it comes from), a pause and whether the daemon runs."""
    _bodies.status(as_json, server)


def systemd_unit(user: str = typer.Option("root", "--user", help="The user the service runs as."),
                 config_path: Path = typer.Option(None, "--unit-config", help="The config path written into ExecStart "
                                                  "(default: the config in use, else /etc/fazt-agent/config.toml)."),
                 ) -> None:
    """Print a hardened systemd unit for the daemon (Type=notify, watchdog, sandboxing); its writable
    paths are derived from the definitions (cleanup roots, certificate folders)."""
    from ..definitions import load_definitions
    from ..errors import ConfigError
    from ..systemd import render_unit

    config = load()
    try:
        definitions = load_definitions(config)   # the paths actions write to are derived from them
    except ConfigError as e:
        report_config_error(e)
    typer.echo(render_unit(config, definitions, user=user, config_path=config_path), nl=False)
