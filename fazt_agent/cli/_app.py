"""The typer app: every command in its group, with its help text (built when `fazt_agent.cli.app`
is first used, or by `main()` for what `_fast` does not run)."""

from __future__ import annotations

from pathlib import Path

import typer

from . import apps, certs, core, events, llm, loop, mcp, pulse
from . import servers
from . import version
from ._common import cli_logging, state

# rich_markup_mode=None: help texts are plain text. Rich markup would eat `[http]` as a tag and turn
# `FILE:KEY:` into an emoji (`:key:`), and it labels every flag `<bool>`.
app = typer.Typer(name="fazt-agent", no_args_is_help=True, add_completion=True, rich_markup_mode=None,
                  help="fazt-agent: the autonomous operator of your server.",
                  context_settings={"help_option_names": ["-h", "--help"]})


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"fazt-agent {version()}")
        raise typer.Exit()


@app.callback()
def _global(config: Path = typer.Option(None, "--config", "-c", envvar=None, dir_okay=False, metavar="FILE",
                                        help="config.toml to use (else $FAZT_AGENT_CONFIG, ./config.toml, "
                                             "/etc/fazt-agent/config.toml, embedded defaults)."),
            _version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                          help="Print the version and exit.")) -> None:
    state.config_path = config
    cli_logging()  # `run` and `mcp serve --http` set their own level and format from the config


app.command("init")(core.init)
app.add_typer(core.config_app, name="config")
app.command("run")(core.run_daemon)
app.command("beat")(core.beat)
app.command("status")(core.status)
app.command("systemd-unit")(core.systemd_unit)
app.add_typer(events.app, name="events")
app.add_typer(pulse.app, name="pulse")
app.add_typer(loop.policy_app, name="policy")
app.command("autonomy")(loop.autonomy)
app.command("pause")(loop.pause)
app.command("resume")(loop.resume)
app.add_typer(loop.incidents_app, name="incidents")
app.add_typer(loop.actions_app, name="actions")
app.add_typer(loop.halts_app, name="halts")
app.command("approve")(loop.approve)
app.command("deny")(loop.deny)
app.add_typer(llm.decisions_app, name="decisions")
app.add_typer(mcp.mcp_app, name="mcp")
app.add_typer(mcp.tokens_app, name="tokens")
app.add_typer(certs.certs_app, name="certs")
app.command("deploy")(apps.deploy)
app.add_typer(apps.apps_app, name="apps")
app.add_typer(servers.servers_app, name="servers")
