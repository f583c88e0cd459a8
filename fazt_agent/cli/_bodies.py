"""The bodies of the most frequent commands: run, status, events list, halts list, approve, deny.

They import neither typer nor rich, so `_fast` can run them before typer is imported; the typer
commands (core, events, loop) call the same functions, so both ways print and exit alike.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, AsyncIterator

from ._common import (EXIT_PROBLEM, EXIT_USAGE, bounded, cli_logging, console, echo, fail, line, load, print_json,
                      run, runtime, state, styled)

# -- run ---------------------------------------------------------------------------------------


def run_daemon(log_format: str | None = None, log_level: str | None = None) -> None:
    """Run the daemon in the foreground (what the systemd unit starts)."""
    from .. import _start
    from ..errors import FaztAgentError
    from ._common import service_logging

    try:
        observed, known = _start.observe(state.config_path)   # /healthz before validating, when known good
    except FaztAgentError as e:   # another daemon holds the data dir
        fail(str(e))

    def ready(config: Any) -> None:
        service_logging(log_level or config.file.log.level, log_format or config.file.log.format)

    raise SystemExit(run(lambda: _start.serve(observed, known, load, ready)))


# -- status ------------------------------------------------------------------------------------


def status(as_json: bool = False, server: str | None = None) -> None:
    """Summarise health, the last beat, autonomy (and where it comes from), a pause and whether the daemon runs."""
    from ..status import gather_status

    async def body() -> dict[str, Any]:
        async with runtime(needs_definitions=None) as rt:
            return await gather_status(rt)

    if server is not None:  # that agent's, through its /mcp (fleet/commands.py)
        from ..fleet import commands as remote

        data = remote.status(server)
    else:
        data = run(body)
    print_status(data, as_json)


def print_status(data: dict[str, Any], as_json: bool) -> None:
    """The summary as `status` prints it (the light read path, `_light`, prints with this too)."""
    if as_json:
        print_json(data)
        return
    out = console()
    daemon = f"running (pid {data['daemon']['pid']})" if data["daemon"]["running"] else "not running"
    out.print(line("health     ", styled(data["health"])))
    if data["paused"]:
        since = " ".join(filter(None, (data["paused_by"] and f"by {data['paused_by']}",
                                       data["paused_at"] and f"at {data['paused_at']}")))
        out.print(line(("paused     ", "bold yellow"), f"PAUSED{' ' + since if since else ''}: observing and "
                       "recording only, no action, halt or notification (fazt-agent resume)"))
    out.print(f"daemon     {daemon}")
    out.print(f"autonomy   {data['autonomy_detail']['summary']}")
    last = data["last_beat"]
    out.print(f"last beat  {last['ts'] + ' (' + last['status'] + ')' if last else 'none yet'}")
    llm = data["llm"]
    out.print(f"llm        {llm['note']}")
    if llm["configured"]:
        spent, budget = llm["spent"], llm["budget"]
        usd = (f"${spent['usd_per_day']:.4f}/${budget['usd_per_day']:g}" if llm["price_known"]
               else f"no USD limit (no price known for {llm['model']})")
        out.print(f"           {spent['calls_per_hour']}/{budget['calls_per_hour']} calls this hour, "
                  f"{spent['tokens_per_day']}/{budget['tokens_per_day']} tokens and {usd} in 24 h")
    out.print(f"checks     {data['checks']} configured, {len(data['problems'])} not ok")
    for p in data["problems"]:
        target = f" {p['target']}" if p["target"] else ""
        out.print(line("  ", styled(p["status"]), f" {p['check']}{target}: {p['message']}"))
    for note in data["notes"]:
        out.print(f"note: {note}")


# -- events list -------------------------------------------------------------------------------


def since_delta(text: str | None) -> timedelta | None:
    """`--since 7d` as a timedelta (None without it); a bad duration exits 2."""
    if text is None:
        return None
    from ..units import parse_duration

    try:
        return timedelta(seconds=parse_duration(text))
    except ValueError as e:
        fail(str(e), hint="use a duration such as 30m, 6h or 7d", code=EXIT_USAGE)


def event_line(e: Any) -> str:
    """One event on one line: id, time, type, source, incident and its data (cut at 160 characters)."""
    data = json.dumps(e.data, separators=(",", ":"), default=str)
    if len(data) > 160:
        data = data[:157] + "..."
    incident = f" incident={e.incident_id}" if e.incident_id is not None else ""
    return f"{e.id:>6} {e.ts:%Y-%m-%d %H:%M:%S} {e.type:24} {e.source:8}{incident} {data}"


def events_list(type_glob: str | None = None, since: str | None = None, limit: int = 50,
                as_json: bool = False, server: str | None = None) -> None:
    """List events, newest last."""
    bounded(limit, "--limit")
    age = since_delta(since)
    if server is not None:
        from ..fleet import commands as remote

        # as locally, without the hash in --json (an agent's MCP tools leave it out)
        print_events(list(reversed(remote.events(server, type_glob, age, limit))), as_json)
        return

    async def body() -> list[Any]:
        async with runtime(needs_definitions=None) as rt:
            since = rt.clock.now() - age if age is not None else None   # `--since 0s`: from now on
            return await rt.events.list(type_glob=type_glob, since=since, limit=limit)

    print_events(list(reversed(run(body))), as_json)


def print_events(events: list[Any], as_json: bool) -> None:
    """Events, oldest first, as `events list` prints them (the light read path's too)."""
    if as_json:
        print_json([e.to_json() for e in events])
        return
    for e in events:
        echo(event_line(e))


# -- halts -------------------------------------------------------------------------------------


@asynccontextmanager
async def engine(needs_definitions: str | None, hint: str | None = None) -> AsyncIterator[Any]:
    """An Engine on an open Runtime; see `runtime` for `needs_definitions`."""
    from ..engine import Engine

    async with runtime(needs_definitions=needs_definitions, hint=hint) as rt:
        yield Engine(rt)


@asynccontextmanager
async def executor(needs_definitions: str | None, hint: str | None = None) -> AsyncIterator[Any]:
    """An Executor on an open Runtime, for what needs no planner (halts, answers): `Engine` builds one
    the same way and adds the decisions, whose modules these commands need not import."""
    from ..executor import Executor

    async with runtime(needs_definitions=needs_definitions, hint=hint) as rt:
        yield Executor(rt)


def halts_list(all_: bool = False, as_json: bool = False, server: str | None = None) -> None:
    """Pending approval requests (or all with --all)."""

    async def body() -> list[Any]:
        async with executor(needs_definitions=None) as e:
            await e.sweep_halts()
            return await e.halts.list(status=None if all_ else "pending")

    if server is not None:
        from ..fleet import commands as remote

        halts = remote.halts(server, all_)
    else:
        halts = run(body)
    print_halts(halts, all_, as_json)


def print_halts(halts: list[Any], all_: bool, as_json: bool) -> None:
    """Halts, newest first, as `halts list` prints them (the light read path's too)."""
    if as_json:
        print_json([h.to_json() for h in halts])
        return
    if not halts:
        echo("no pending halts" if not all_ else "no halts")
        return
    for h in halts:
        answer = f" → {h.answer} by {h.answered_by}" if h.answer else ""
        echo(f"{h.id:>5} {h.status:9} {h.plan.summary} (expires {h.expires_at:%Y-%m-%d %H:%M}){answer}")


RESULT_WORD = {"succeeded": "done", "ineffective": "nothing done", "failed": "FAILED"}


def result_word(outcome: dict[str, Any] | None) -> str:
    """How an action's result reads: "done" only when it changed something."""
    state = (outcome or {}).get("state") or ("succeeded" if (outcome or {}).get("ok") else "failed")
    return RESULT_WORD.get(state, state)


def answer(halt_id: int, option: str, note: str | None, as_json: bool, server: str | None = None) -> None:
    """Answer a halt with `option`; exit 1 when the plan ran and failed. The running daemon answers
    when there is one that read the files as they are now (`answer/local.py`); else this process."""
    bounded(halt_id, "halt id")
    if server is None:
        forwarded = _through_daemon(halt_id, option, note)
        if forwarded is not None:
            if not forwarded.get("ok"):
                fail(str(forwarded.get("error") or "the daemon refused the answer"))
            print_answer(halt_id, option, forwarded["result"], as_json)
            return
    cli_logging()   # answered here: this process logs (the fast path leaves it to this point; again is harmless)
    from ..halt.store import HaltError

    # approving runs the plan under the policy and kernel settings: not with part of them; any
    # other answer (deny) runs nothing and must always work
    acts = f"approving halt {halt_id}" if option == "approve" else None

    async def body() -> dict[str, Any]:
        async with executor(acts, hint=f"to refuse the plan instead: fazt-agent deny {halt_id}") as e:
            await e.sweep_halts()
            return await e.answer(halt_id, option, by="cli", note=note)

    try:
        if server is not None:  # answered on that agent (`fazt_halt_answer`, the token's scope applies)
            from ..fleet import commands as remote

            result = remote.answer(server, halt_id, option, note)
        else:
            result = run(body)
    except HaltError as e:  # raised inside run() only if not a FaztAgentError subclass
        fail(str(e))
    print_answer(halt_id, option, result, as_json)


def _through_daemon(halt_id: int, option: str, note: str | None) -> dict[str, Any] | None:
    """The running daemon's reply to the answer (`answer/local.py`), or None: this process answers."""
    from .. import _faults, _snapshot
    from ..answer.local import DaemonGone, forward

    if _faults.armed():
        return None   # a crash test kills this command at a fault point of the answer: it must answer here
    observed = _snapshot.observe(state.config_path)
    if observed is None:
        return None   # the light reader cannot tell what the files are: the validated path decides
    try:
        return forward(observed.data_dir, observed.stamp, halt_id, option, note)
    except DaemonGone as e:
        fail(f"the daemon stopped before it answered halt {halt_id} ({e})",
             hint="`fazt-agent halts list --all` shows whether the answer was recorded")


def print_answer(halt_id: int, option: str, result: dict[str, Any], as_json: bool) -> None:
    """What `approve`/`deny` print, and exit 1 when the plan ran and failed."""
    if as_json:
        print_json(result)
    elif result.get("replanned"):
        echo(f"halt {halt_id}: {option}; the plan changed ({result['message']}), "
             f"so I ask again: halt {result['new_halt_id']}")
    elif result.get("executed"):
        echo(f"halt {halt_id}: {option}; {result_word(result)}: {result['message']}")
    else:
        echo(f"halt {halt_id}: {option}" + (f"; {result['message']}" if result.get("message") else ""))
    if result.get("executed") and not result.get("ok"):
        raise SystemExit(EXIT_PROBLEM)


def approve(halt_id: int, note: str | None = None, as_json: bool = False, server: str | None = None) -> None:
    """Approve a halt: its plan is re-checked and run."""
    answer(halt_id, "approve", note, as_json, server)


def deny(halt_id: int, note: str | None = None, as_json: bool = False, server: str | None = None) -> None:
    """Deny a halt: nothing runs."""
    answer(halt_id, "deny", note, as_json, server)
