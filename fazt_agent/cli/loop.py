"""Commands of the autonomy loop: policy, autonomy, pause/resume, incidents, actions, halts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from ..fleet import SERVER_HELP
from . import _bodies
from ._bodies import answer, engine, result_word
from ._common import EXIT_PROBLEM, EXIT_USAGE, bounded, console, fail, line, load, print_json, run, runtime, styled

policy_app = typer.Typer(help="Check, explain and simulate the autonomy policy.", no_args_is_help=True)
incidents_app = typer.Typer(help="Problems the agent has seen.", no_args_is_help=True)
actions_app = typer.Typer(help="Kernel actions: list, plan, run (through the policy gate).", no_args_is_help=True)
halts_app = typer.Typer(help="Approval requests waiting for the owner.", no_args_is_help=True)


def _args(pairs: list[str]) -> dict[str, Any]:
    """`--arg K=V` pairs; V is parsed as JSON when it can be (numbers, lists), else a string."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"expected --arg KEY=VALUE, got {pair!r}", code=EXIT_USAGE)
        try:
            out[key] = json.loads(value)
        except ValueError:   # not JSON (or a number of 4300+ digits, which json refuses): a string
            out[key] = value
        except RecursionError:
            fail(f"--arg {key}: the value is nested too deeply", code=EXIT_USAGE)
    return out


# -- policy ---------------------------------------------------------------------------------

@policy_app.command("check")
def policy_check() -> None:
    """Validate the policy files (and the kernel settings they rely on); FILE:KEY errors, exit 2."""
    from ..kernel import ACTIONS
    from ..policy.model import load_policy
    from ..pulse import CHECKS

    config = load()
    policy, issues = load_policy(config.folders["policies"], set(ACTIONS), set(CHECKS))
    if issues:
        for issue in issues:
            typer.secho(str(issue), err=True, fg="red")
        raise typer.Exit(EXIT_USAGE)
    typer.echo(f"policy {policy.version}: ok, {len(policy.rules)} rules in {len(policy.files)} files")


@policy_app.command("explain")
def policy_explain(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """What each rule does at each autonomy level, for safe, destructive and costly plans."""
    from ..policy.explain import explain

    async def body() -> list[dict[str, Any]]:
        async with runtime(needs_definitions="explaining the policy") as rt:
            return explain(rt.definitions.policy)

    rows = run(body)
    if as_json:
        print_json(rows)
        return
    out = console()
    for row in rows:
        out.print(line((row["rule"], "bold"), f": {row['description']}"))
        out.print(f"  when   {row['match']}")
        out.print(f"  action {row['action']} {json.dumps(row['args'])}")
        for level in ("low", "medium", "high"):
            cells = ", ".join(f"{risk} plan → {verdict}" for risk, verdict in row["levels"][level].items())
            out.print(f"  {level:6} {cells}")
        out.print(f"  limits {row['limits']}")
    out.print("anything no rule matches → notify")


@policy_app.command("simulate")
def policy_simulate(incident_file: Path = typer.Option(..., "--incident", exists=True, dir_okay=False,
                                                       help="A JSON incident: check, kind, target, severity, message, metrics, details."),
                    autonomy: Optional[str] = typer.Option(None, "--autonomy", help="low, medium or high (default: the current level)."),
                    as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show the plan and verdict for an incident, changing nothing."""
    from ..policy.explain import incident_from_json

    if autonomy is not None and autonomy not in ("low", "medium", "high"):
        fail(f"unknown autonomy level {autonomy!r} (accepted: low, medium, high)", code=EXIT_USAGE)
    try:
        incident = incident_from_json(json.loads(incident_file.read_text()))
    except (ValueError, TypeError) as e:
        fail(f"{incident_file}: {e}", code=EXIT_USAGE)

    async def body() -> dict[str, Any]:
        from ..decide.rules import rules_planner

        async with engine("simulating the policy") as e:
            level = autonomy or await e.rt.autonomy()
            proposal = rules_planner(e.policy, incident)
            result: dict[str, Any] = {"autonomy": level, "rule": proposal.rule.name if proposal.rule else None,
                                      "action": proposal.action, "args": proposal.args}
            if proposal.action is None:
                return {**result, "verdict": "notify", "reason": proposal.reason, "plan": None}
            ev = await e.evaluate(proposal, incident, level)   # its check/target's history: cooldown, window
            if ev.rejected or ev.failed:
                return {**result, "verdict": "notify", "reason": ev.rejected or ev.failed, "plan": None}
            return {**result, "verdict": ev.judgement.verdict, "reason": ev.judgement.reason,
                    "plan": ev.plan.to_json()}

    result = run(body)
    if as_json:
        print_json(result)
        return
    out = console()
    out.print(f"rule     {result['rule'] or '(none)'}")
    out.print(f"action   {result['action'] or '(notify only)'} {json.dumps(result['args']) if result['args'] else ''}")
    if result["plan"]:
        out.print(f"plan     {result['plan']['summary']} (risk {result['plan']['risk']})")
    out.print(line("verdict  ", (result["verdict"], "bold"), f" at {result['autonomy']} autonomy: {result['reason']}"))


# -- autonomy, pause, resume ------------------------------------------------------------------

def autonomy(level: Optional[str] = typer.Argument(None, help="low, medium or high; omit to show the current level.")) -> None:
    """Show or set the autonomy level (persisted and recorded as an event)."""
    if level is not None and level not in ("low", "medium", "high"):
        fail(f"unknown autonomy level {level!r} (accepted: low, medium, high)", code=EXIT_USAGE)

    async def body() -> tuple[str, str | None, Any]:
        async with engine(needs_definitions=None) as e:
            old = None if level is None else await e.set_autonomy(level, by="cli")
            state = await e.rt.autonomy_state()
            return state.level, old, state

    current, old, state = run(body)
    if old is None:
        typer.echo(current)
        if state.source == "override":   # stdout stays the bare level, for scripts
            typer.echo(f"autonomy {state.summary}", err=True)
    elif old == current:
        typer.echo(f"autonomy is already {state.summary}")
    else:
        typer.echo(f"autonomy: {old} → {state.summary}")


def pause() -> None:
    """Observe and record only: no actions, approvals or notifications until `resume`."""

    async def body() -> bool:
        async with engine(needs_definitions=None) as e:
            return await e.set_paused(True, by="cli")

    typer.echo("paused: observing and recording only" if run(body) else "already paused")


def resume() -> None:
    """End a pause: incidents decided while paused get a fresh decision on the next beat."""

    async def body() -> bool:
        async with engine(needs_definitions=None) as e:
            return await e.set_paused(False, by="cli")

    typer.echo("resumed" if run(body) else "not paused")


# -- incidents ------------------------------------------------------------------------------

@incidents_app.command("list")
def incidents_list(all_: bool = typer.Option(False, "--all", help="Include resolved incidents."),
                   limit: int = typer.Option(50, "--limit", min=1),
                   as_json: bool = typer.Option(False, "--json", help="Print JSON."),
                   server: Optional[str] = typer.Option(None, "--server", metavar="NAME", help=SERVER_HELP)) -> None:
    """Open incidents (or all with --all), newest first."""
    bounded(limit, "--limit")

    async def body() -> list[Any]:
        async with engine(needs_definitions=None) as e:
            return await e.incidents.list(status=None if all_ else "open", limit=limit)

    if server is not None:
        from ..fleet import commands as remote

        items = remote.incidents(server, all_, limit)
    else:
        items = run(body)
    if as_json:
        print_json([i.to_json() for i in items])
        return
    if not items:
        typer.echo("no open incidents" if not all_ else "no incidents")
        return
    from rich.table import Table

    table = Table("id", "status", "severity", "check", "target", "since", "verdict", "message", box=None, pad_edge=False)
    for i in items:
        table.add_row(str(i.id), i.status + (", flapping" if i.flapping_since else ""), styled(i.severity), i.check,
                      i.target, f"{i.opened_at:%Y-%m-%d %H:%M}", i.last_verdict or "", i.message)
    console().print(table)


@incidents_app.command("show")
def incidents_show(incident_id: int = typer.Argument(...),
                   as_json: bool = typer.Option(False, "--json", help="Print JSON."),
                   server: Optional[str] = typer.Option(None, "--server", metavar="NAME", help=SERVER_HELP)) -> None:
    """One incident with its events (decisions, actions, halts)."""
    bounded(incident_id, "incident id")

    async def body() -> tuple[Any, list[Any]]:
        async with engine(needs_definitions=None) as e:
            incident = await e.incidents.get(incident_id)
            events = await e.rt.events.list(incident_id=incident_id, limit=200, newest_first=False)
            return incident, events

    if server is not None:
        from ..fleet import commands as remote

        incident, events = remote.incident_with_events(server, incident_id)
    else:
        incident, events = run(body)
    if incident is None:
        fail(f"no incident {incident_id}", hint="see `fazt-agent incidents list --all`")
    if as_json:
        print_json({**incident.to_json(), "events": [e.to_json() for e in events]})
        return
    out = console()
    flapping = f", flapping since {incident.flapping_since:%Y-%m-%d %H:%M:%S}" if incident.flapping_since else ""
    out.print(line(f"incident {incident.id}: ", styled(incident.severity),
                   f" {incident.check} {incident.target} ({incident.status}{flapping})"))
    out.print(f"  {incident.message}")
    out.print(f"  opened {incident.opened_at:%Y-%m-%d %H:%M:%S}, {incident.beats} beats, peak {incident.peak_severity}")
    for e in events:
        detail = e.data.get("reason") or e.data.get("summary") or e.data.get("message") or ""
        verdict = f" {e.data['verdict']}" if "verdict" in e.data else ""
        out.print(f"  {e.ts:%H:%M:%S} {e.type}{verdict}: {detail}")


# -- actions --------------------------------------------------------------------------------

@actions_app.command("list")
def actions_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The actions the agent knows, with their argument schemas."""
    from ..kernel import ACTIONS

    rows = [{"name": name, "description": cls.description, "timeout_s": cls.timeout,
             "args": cls.Args.model_json_schema()} for name, cls in sorted(ACTIONS.items())]
    if as_json:
        print_json(rows)
        return
    for row in rows:
        props = row["args"].get("properties", {})
        typer.echo(f"{row['name']:16} {row['description']}")
        typer.echo(f"{'':16} args: {', '.join(props) or '(none)'}")


@actions_app.command("plan")
def actions_plan(name: str = typer.Argument(..., help="An action from `actions list`."),
                 arg: list[str] = typer.Option([], "--arg", metavar="KEY=VALUE",
                                               help="An argument of the action (repeat it for each)."),
                 as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Plan an action and show the plan and the verdict it would get; changes nothing."""
    from ..decide.rules import Proposal

    args = _args(arg)

    async def body() -> Any:
        async with engine("planning an action") as e:
            return await e.evaluate(Proposal(name, args, None, "manual"), None, await e.rt.autonomy())

    ev = run(body)
    if ev.rejected or ev.failed:
        fail(ev.rejected or ev.failed)
    if as_json:
        print_json({"plan": ev.plan.to_json(), "verdict": ev.judgement.verdict, "reason": ev.judgement.reason})
        return
    out = console()
    out.print(f"plan: {ev.plan.summary} (risk {ev.plan.risk}, {'reversible' if ev.plan.reversible else 'not reversible'})")
    for step in ev.plan.steps[:50]:
        out.print(f"  - {step}")
    if len(ev.plan.steps) > 50:
        out.print(f"  ... and {len(ev.plan.steps) - 50} more")
    out.print(line("verdict: ", (ev.judgement.verdict, "bold"), f" ({ev.judgement.reason})"))


@actions_app.command("run")
def actions_run(name: str = typer.Argument(..., help="An action from `actions list`."),
                arg: list[str] = typer.Option([], "--arg", metavar="KEY=VALUE",
                                              help="An argument of the action (repeat it for each)."),
                as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Propose an action through the policy gate: it runs, opens a halt, or is refused."""
    from ..decide.rules import Proposal

    args = _args(arg)

    async def body() -> Any:
        async with engine("running an action") as e:
            return await e.gate(Proposal(name, args, None, "manual", "requested on the command line"),
                                incident=None, trigger="manual", requested_by="cli")

    report_decision(run(body), as_json)


def report_decision(d: Any, as_json: bool) -> None:
    """Print what the gate decided about a manual proposal; exit 1 unless it ran (and changed
    something) or asks."""
    ok = d.verdict == "act" and bool(d.outcome and d.outcome["ok"])
    if as_json:
        print_json(d.to_json())
    elif d.verdict == "act":
        typer.echo(f"{result_word(d.outcome)}: {d.plan['summary']}: {d.outcome['message'] if d.outcome else ''}")
    elif d.verdict == "ask":
        typer.echo(f"the policy asks for approval ({d.reason}): halt {d.halt_id}\n"
                   f"approve with: fazt-agent approve {d.halt_id}")
    else:
        typer.echo(f"not run: {d.verdict}: {d.reason}")
    raise typer.Exit(0 if ok or d.verdict == "ask" else EXIT_PROBLEM)


# -- halts ----------------------------------------------------------------------------------

@halts_app.command("list")
def halts_list(all_: bool = typer.Option(False, "--all", help="Include answered and expired halts."),
               as_json: bool = typer.Option(False, "--json", help="Print JSON."),
               server: Optional[str] = typer.Option(None, "--server", metavar="NAME", help=SERVER_HELP)) -> None:
    """Pending approval requests (or all with --all)."""
    _bodies.halts_list(all_, as_json, server)


@halts_app.command("show")
def halts_show(halt_id: int = typer.Argument(...), as_json: bool = typer.Option(False, "--json", help="Print JSON."),
               server: Optional[str] = typer.Option(None, "--server", metavar="NAME", help=SERVER_HELP)) -> None:
    """One halt: the problem, the exact plan, the options and how to answer."""
    bounded(halt_id, "halt id")
    if server is not None:
        from ..fleet import commands as remote

        remote.show_halt(server, halt_id, as_json)
        return

    async def body() -> Any:
        async with engine(needs_definitions=None) as e:
            await e.executor.sweep_halts()
            halt = await e.executor.halts.get(halt_id)
            return halt, signed_links(e.rt.config, halt) if halt is not None else None

    halt, links = run(body)
    if halt is None:
        fail(f"no halt {halt_id}", hint="see `fazt-agent halts list --all`")
    if as_json:
        print_json(halt.to_json() if links is None else {**halt.to_json(), "links": links})
        return
    from ..messages import all_steps

    # the stored body lists the first steps and points here for the rest: show them all, once
    typer.echo(f"halt {halt.id} ({halt.status}{', ' + str(halt.answer) if halt.answer else ''})\n{halt.title}\n\n"
               f"{all_steps(halt)}")
    if links:
        typer.echo("\nAnswer from anywhere (each link shows the plan and asks you to confirm):\n"
                   + "\n".join(f"  {option}: {url}" for option, url in links.items()))


def signed_links(config: Any, halt: Any) -> dict[str, str] | None:
    """A halt's signed links, one per option, as its notification carries them (`[http] public_url`);
    none once it is closed. None without a public URL."""
    http = config.file.http
    if not http.public_url:
        return None
    if halt.status != "pending":
        return {}
    from ..answer.links import Signer

    return Signer.for_data_dir(config.data_dir).links(halt, http.public_url, lifetime=http.link_expiry)


@halts_app.command("answer")
def halts_answer(halt_id: int = typer.Argument(...), option: str = typer.Argument(..., help="One of the halt's options."),
                 note: Optional[str] = typer.Option(None, "--note", help="Why (kept in the audit trail)."),
                 as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Answer a halt with one of its options (exactly once)."""
    answer(halt_id, option, note, as_json)


def approve(halt_id: int = typer.Argument(..., help="The halt's id (see `halts list`)."),
            note: Optional[str] = typer.Option(None, "--note", help="Why (kept in the audit trail)."),
            as_json: bool = typer.Option(False, "--json", help="Print JSON."),
            server: Optional[str] = typer.Option(None, "--server", metavar="NAME", help=SERVER_HELP)) -> None:
    """Approve a halt: its plan is re-checked and run."""
    _bodies.approve(halt_id, note, as_json, server)


def deny(halt_id: int = typer.Argument(..., help="The halt's id (see `halts list`)."),
         note: Optional[str] = typer.Option(None, "--note", help="Why (kept in the audit trail)."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON."),
         server: Optional[str] = typer.Option(None, "--server", metavar="NAME", help=SERVER_HELP)) -> None:
    """Deny a halt: nothing runs."""
    _bodies.deny(halt_id, note, as_json, server)
