"""`fazt-agent events ...`: list, tail, verify, export the audit trail."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import timedelta
from typing import Any

import typer

from ._common import EXIT_PROBLEM, EXIT_USAGE, console, fail, print_json, run, runtime

app = typer.Typer(help="Read and verify the event log (the audit trail).", no_args_is_help=True)


def _since(text: str | None) -> Any:
    if text is None:
        return None
    from ..units import parse_duration

    try:
        return timedelta(seconds=parse_duration(text))
    except ValueError as e:
        fail(str(e), hint="use a duration such as 30m, 6h or 7d", code=EXIT_USAGE)


def _line(e: Any) -> str:
    data = json.dumps(e.data, separators=(",", ":"), default=str)
    if len(data) > 160:
        data = data[:157] + "..."
    incident = f" incident={e.incident_id}" if e.incident_id is not None else ""
    return f"{e.id:>6} {e.ts:%Y-%m-%d %H:%M:%S} {e.type:24} {e.source:8}{incident} {data}"


@app.command("list")
def list_events(type_glob: str = typer.Option(None, "--type", help="Only types matching this glob, e.g. 'pulse.*'."),
                since: str = typer.Option(None, "--since", help="Only events newer than this, e.g. 1h or 7d."),
                limit: int = typer.Option(50, "--limit", min=1, help="At most this many (newest)."),
                as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List events, newest last."""
    age = _since(since)

    async def body() -> list[Any]:
        async with runtime(needs_definitions=None) as rt:
            return await rt.events.list(type_glob=type_glob, since=(rt.clock.now() - age) if age else None,
                                        limit=limit)

    events = list(reversed(run(body)))
    if as_json:
        print_json([e.to_json() for e in events])
        return
    for e in events:
        typer.echo(_line(e))


@app.command("tail")
def tail(type_glob: str = typer.Option(None, "--type", help="Only types matching this glob."),
         lines: int = typer.Option(10, "-n", "--lines", min=0, help="Start with the last N events."),
         poll: float = typer.Option(0.5, "--poll", min=0.05, help="Seconds between looks for new events."),
         as_json: bool = typer.Option(False, "--json", help="One JSON object per line.")) -> None:
    """Print new events as they are written (Ctrl-C to stop)."""

    def show(e: Any) -> None:
        sys.stdout.write((json.dumps(e.to_json(), default=str) if as_json else _line(e)) + "\n")
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
    age = _since(since)

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
