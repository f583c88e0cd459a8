"""`fazt-agent certs ...`: certificate inventory and renewal (issue: certificates)."""

from __future__ import annotations

from typing import Any

import typer

from ._common import EXIT_PROBLEM, console, print_json, run, runtime, styled
from .loop import report_decision

certs_app = typer.Typer(help="TLS certificates: inventory, expiry, renewal.", no_args_is_help=True)
KINDS = ("cert_file", "tls")


@certs_app.command("list")
def certs_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The latest result of every cert_file and tls check; exit 1 when one is not ok."""

    async def body() -> list[Any]:
        async with runtime(needs_definitions=None) as rt:
            watched = {c.name for c in rt.pulse.checks if c.kind in KINDS}
            return [(ts, r) for ts, r in await rt.beats.latest() if r.check in watched and r.kind in KINDS]

    rows = run(body)
    if as_json:
        print_json([{**r.to_json(), "ts": ts.isoformat()} for ts, r in rows])
    elif not rows:
        typer.echo("no certificate results yet: add a cert_file or tls check and run `fazt-agent beat`")
    else:
        from rich.table import Table

        table = Table("check", "target", "status", "days left", "expires", "renews", "message", box=None,
                      pad_edge=False)
        for _, r in rows:
            days = r.metrics.get("days_left")
            table.add_row(r.check, r.target, styled(r.status), "" if days is None else f"{days:.1f}",
                          str(r.details.get("not_after", ""))[:10], r.details.get("certificate", ""), r.message)
        console().print(table)
    if any(r.status != "ok" for _, r in rows):
        raise typer.Exit(EXIT_PROBLEM)


@certs_app.command("renew")
def certs_renew(name: str = typer.Argument(..., help="A [[certificates]] name from kernel/*.toml."),
                as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Propose ssl.renew NAME through the policy gate: it runs, asks for approval, or is refused."""
    from ..decide.rules import Proposal
    from .loop import engine

    async def body() -> Any:
        async with engine("renewing a certificate") as e:
            return await e.gate(Proposal("ssl.renew", {"name": name}, None, "manual", "requested on the command line"),
                                incident=None, trigger="manual", requested_by="cli")

    report_decision(run(body), as_json)
