"""`fazt-agent events ...`: list, tail, verify, export the audit trail."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, Optional

import typer

from ..fleet import SERVER_HELP
from . import _bodies
from ._bodies import event_line, since_delta
from ._common import EXIT_PROBLEM, bounded, console, print_json, run, runtime

app = typer.Typer(help="Read and verify the event log (the audit trail).", no_args_is_help=True)
MAX_POLL = 3600.0


@app.command("list")
def list_events(type_glob: str = typer.Option(None, "--type", help="Only types matching this glob, e.g. 'pulse.*'."),
                since: str = typer.Option(None, "--since", help="Only events newer than this, e.g. 1h or 7d."),
                limit: int = typer.Option(50, "--limit", min=1, help="At most this many (newest)."),
                as_json: bool = typer.Option(False, "--json", help="Print JSON."),
                server: Optional[str] = typer.Option(None, "--server", metavar="NAME", help=SERVER_HELP)) -> None:
    """List events, newest last."""
    _bodies.events_list(type_glob, since, limit, as_json, server)


@app.command("tail")
def tail(type_glob: str = typer.Option(None, "--type", help="Only types matching this glob."),
         lines: int = typer.Option(10, "-n", "--lines", min=0, help="Start with the last N events."),
         poll: float = typer.Option(0.5, "--poll", min=0.05, help="Seconds between looks for new events."),
         as_json: bool = typer.Option(False, "--json", help="One JSON object per line.")) -> None:
    """Print new events as they are written (Ctrl-C to stop)."""
    bounded(lines, "--lines", 0)
    bounded(poll, "--poll", 0.05, MAX_POLL)   # `inf` would wait forever

    def show(e: Any) -> None:
        sys.stdout.write((json.dumps(e.to_json(), default=str) if as_json else event_line(e)) + "\n")
        sys.stdout.flush()

    async def body() -> None:
        async with runtime(needs_definitions=None) as rt:
            for e in reversed(await rt.events.list(type_glob=type_glob, limit=lines) if lines else []):
                show(e)
            last = await rt.events.last_id()
            while True:
                for e in await rt.events.list(type_glob=type_glob, after_id=last, limit=500, newest_first=False):
                    show(e)
                    last = e.id
                await asyncio.sleep(poll)

    try:
        run(body)
    except KeyboardInterrupt:
        pass


@app.command("verify")
def verify() -> None:
    """Check the hash chain; exit 1 naming the first row that was altered or removed."""

    async def body() -> Any:
        async with runtime(needs_definitions=None) as rt:
            return await rt.events.verify()

    result = run(body)
    if result.ok:
        typer.echo(f"ok: {result.checked} events, chain intact")
        return
    typer.secho(f"TAMPERED: event {result.bad_id}: {result.reason} ({result.checked} events verified before it)",
                fg="red", err=True)
    raise typer.Exit(EXIT_PROBLEM)


@app.command("export")
def export(type_glob: str = typer.Option(None, "--type", help="Only types matching this glob."),
           since: str = typer.Option(None, "--since", help="Only events newer than this, e.g. 7d.")) -> None:
    """Write events as JSON lines (oldest first) to stdout."""
    age = since_delta(since)

    async def body() -> None:
        async with runtime(needs_definitions=None) as rt:
            last = 0
            cutoff = (rt.clock.now() - age) if age else None
            while True:
                batch = await rt.events.list(type_glob=type_glob, since=cutoff, after_id=last,
                                             limit=5000, newest_first=False)
                if not batch:
                    return
                sys.stdout.write("".join(json.dumps(e.to_json(), default=str) + "\n" for e in batch))
                last = batch[-1].id

    run(body)


__all__ = ["app", "console", "print_json"]
