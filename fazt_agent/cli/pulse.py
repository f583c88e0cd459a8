"""`fazt-agent pulse ...`: current status, history and metric trends from stored beats."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import typer

from ._common import EXIT_PROBLEM, EXIT_USAGE, bounded, console, fail, line, print_json, run, runtime, styled

app = typer.Typer(help="Health checks: status, history, trends.", no_args_is_help=True)
SPARKS = "▁▂▃▄▅▆▇█"
MAX_HOURS = 10 * 365 * 24.0   # ten years (units.MAX_DURATION); `inf` overflows the date arithmetic


@app.command("status")
def pulse_status(as_json: bool = typer.Option(False, "--json", help="Print JSON."),
                 summary: bool = typer.Option(False, "--summary", help="Add a one-paragraph LLM summary "
                                              "(made once per beat).")) -> None:
    """The newest result of every check and target."""
    from ..decide.ask import LlmUnavailable

    async def body() -> tuple[list[Any], dict[str, Any] | None, str | None]:
        async with runtime(needs_definitions=None) as rt:
            configured = {c.name for c in rt.pulse.checks}
            rows = [(ts, r) for ts, r in await rt.beats.latest() if r.check in configured]
            if not summary or not rows:
                return rows, None, None
            from ..decide.ask import summary as summarise

            try:
                return rows, await summarise(rt), None
            except LlmUnavailable as e:
                return rows, None, str(e)

    rows, text, problem = run(body)
    if problem:
        typer.secho(f"summary unavailable: {problem}", err=True, fg="yellow")
    if as_json:
        data = [{**r.to_json(), "ts": ts.isoformat()} for ts, r in rows]
        print_json({"results": data, "summary": text} if summary else data)
        return
    if not rows:
        typer.echo("no beats stored yet: run `fazt-agent beat` or start the daemon")
        return
    from rich.table import Table

    from ..pulse.base import pending

    table = Table("check", "target", "status", "message", "measured", box=None, pad_edge=False)
    for ts, r in rows:
        table.add_row(r.check, r.target, styled(r.status), r.message, f"{ts:%Y-%m-%d %H:%M:%S}")
    console().print(table)
    waiting = sum(1 for _, r in rows if pending(r))
    if waiting:
        console().print(f"{waiting} pending: a problem seen for fewer beats in a row than its check's `for` "
                        "(\"2 of 3 beats\") opens no incident and sends nothing yet")
    if text:
        console().print(f"\n{text['summary']}")


@app.command("ask")
def ask(question: str = typer.Argument(..., help="A question about the server, e.g. 'why is the disk filling?'"),
        as_json: bool = typer.Option(False, "--json", help="Print JSON (the answer, model and usage).")) -> None:
    """Ask the LLM about the server; it answers from stored beats and events (rate limited)."""
    from ..decide.ask import ask as ask_llm

    async def body() -> dict[str, Any]:
        async with runtime(needs_definitions=None) as rt:
            return await ask_llm(rt, question)

    answer = run(body)  # not configured, too soon, over budget, failed: one line, exit 1
    if as_json:
        print_json(answer)
        return
    console().print(answer["answer"])


@app.command("history")
def history(hours: float = typer.Option(24, "--hours", min=0.01, help="How far back."),
            as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Beats of the last N hours with what was not ok in each."""
    bounded(hours, "--hours", 0.01, MAX_HOURS)

    async def body() -> list[dict[str, Any]]:
        async with runtime(needs_definitions=None) as rt:
            return await rt.beats.history(rt.clock.now() - timedelta(hours=hours))

    beats = run(body)
    if as_json:
        print_json(beats)
        return
    from ..units import format_duration

    out = console()
    for b in beats:
        problems = "; ".join(f"{p['check']}{'[' + p['target'] + ']' if p['target'] else ''}: {p['message']}"
                             for p in b["problems"])
        out.print(line(f"{b['ts'][:19]}  ", styled(b["status"]), f"  {problems}"))
    out.print(f"{len(beats)} beats in the last {format_duration(hours * 3600)}")


def sparkline(values: list[float], width: int = 60) -> str:
    """Unicode block sparkline of `values`, averaged into at most `width` buckets."""
    if not values:
        return ""
    if len(values) > width:
        size = len(values) / width
        values = [sum(chunk) / len(chunk) for i in range(width)
                  if (chunk := values[int(i * size):max(int((i + 1) * size), int(i * size) + 1)])]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(SPARKS[min(len(SPARKS) - 1, int((v - low) / span * len(SPARKS)))] for v in values)


@app.command("trend")
def trend(metric: str = typer.Argument(..., help="CHECK.METRIC or CHECK[TARGET].METRIC, e.g. 'disk[/].used_percent'."),
          hours: float = typer.Option(24, "--hours", min=0.01, help="How far back."),
          as_json: bool = typer.Option(False, "--json", help="Print the series as JSON.")) -> None:
    """A terminal sparkline of one metric over time."""
    bounded(hours, "--hours", 0.01, MAX_HOURS)
    from ..pulse.beats import MetricRef
    from ..units import format_duration, format_metric

    try:
        ref = MetricRef.parse(metric)
    except ValueError as e:
        fail(str(e), code=EXIT_USAGE)

    async def body() -> tuple[str, list[tuple[Any, float]], list[str]]:
        async with runtime(needs_definitions=None) as rt:
            targets = await rt.beats.targets(ref.check)
            target = ref.target
            if target is None:
                if len(targets) != 1:
                    return "", [], targets
                target = targets[0]
            since = rt.clock.now() - timedelta(hours=hours)
            return target, await rt.beats.series(ref.check, target, ref.metric, since), targets

    target, points, targets = run(body)
    if ref.target is None and len(targets) != 1:
        if not targets:
            fail(f"no stored results for check {ref.check!r}", hint="see `fazt-agent pulse status` for check names")
        fail(f"check {ref.check!r} has several targets: {', '.join(targets)}",
             hint=f"name one, e.g. '{ref.check}[{targets[0]}].{ref.metric}'", code=EXIT_USAGE)
    if as_json:
        print_json([{"ts": ts.isoformat(), "value": v} for ts, v in points])
        return
    if not points:
        fail(f"no values of {metric!r} in the last {format_duration(hours * 3600)}", code=EXIT_PROBLEM)
    values = [v for _, v in points]
    out = console()
    label = str(MetricRef(ref.check, target or None, ref.metric))
    out.print(f"{label}  last {format_duration(hours * 3600)}, {len(values)} points")
    out.print(sparkline(values))
    out.print("  ".join(f"{what} {format_metric(ref.metric, v)}"
                        for what, v in (("min", min(values)), ("max", max(values)), ("last", values[-1]))))
