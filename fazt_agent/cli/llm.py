"""`fazt-agent decisions ...`: the decisions the agent made (rules or LLM), read back from events."""

from __future__ import annotations

import json
from typing import Any, Optional

import typer

from ..fleet import SERVER_HELP
from ._common import EXIT_USAGE, bounded, console, fail, print_json, run, runtime

decisions_app = typer.Typer(help="Decisions the agent made (rules or LLM), with their reasons.", no_args_is_help=True)
TYPES = ("decision.made", "decision.rejected", "decision.failed", "llm.fallback", "llm.budget_exhausted",
         "llm.discarded")


def _tokens(usage: dict[str, Any]) -> str:
    if not usage:
        return ""
    return (f"{usage.get('input_tokens', 0)}+{usage.get('cache_read_tokens', 0)}c/"
            f"{usage.get('output_tokens', 0)}")


def _what(d: dict[str, Any]) -> str:
    return d.get("verdict") or d.get("kind") or d.get("limit") or ("rejected" if "planner" in d else "")


@decisions_app.command("list")
def decisions_list(limit: int = typer.Option(20, "--limit", min=1, help="How many, newest first."),
                   planner: Optional[str] = typer.Option(None, "--planner", help="Only 'llm' or 'rules'."),
                   as_json: bool = typer.Option(False, "--json", help="Print JSON."),
                   server: Optional[str] = typer.Option(None, "--server", metavar="NAME", help=SERVER_HELP)) -> None:
    """Decisions, rejected proposals and LLM fallbacks, newest first."""
    bounded(limit, "--limit")
    if planner not in (None, "llm", "rules"):
        fail(f"unknown planner {planner!r} (accepted: llm, rules)", code=EXIT_USAGE)

    async def body() -> list[Any]:
        async with runtime(needs_definitions=None) as rt:
            rows = await rt.store.fetchall(
                f"SELECT id FROM events WHERE type IN ({','.join('?' * len(TYPES))}) "
                + ("AND (json_extract(data, '$.planner') = ? OR (? = 'llm' AND type GLOB 'llm.*')) "
                   if planner else "") + "ORDER BY id DESC LIMIT ?",
                (*TYPES, *((planner, planner) if planner else ()), limit))
            return [await rt.events.get(r["id"]) for r in rows]

    if server is not None:  # decision.made and decision.rejected, from that agent's /mcp
        from ..fleet import commands as remote

        events = remote.decisions(server, limit, planner)
    else:
        events = run(body)
    if as_json:
        print_json([e.to_json() for e in events])
        return
    if not events:
        typer.echo(f"no decisions by the {planner} planner" if planner else "no decisions yet")
        return
    from rich.table import Table

    table = Table("id", "time", "type", "incident", "planner", "verdict", "action", "tokens", "cost $", "reason",
                  box=None, pad_edge=False)
    for e in events:
        d, usage = e.data, e.data.get("usage") or {}
        table.add_row(str(e.id), f"{e.ts:%Y-%m-%d %H:%M:%S}", e.type, str(e.incident_id or ""),
                      d.get("planner", "llm" if e.type.startswith("llm.") else ""), _what(d), d.get("action") or "",
                      _tokens(usage), f"{usage['cost_usd']:.4f}" if "cost_usd" in usage else "",
                      (d.get("rationale") if e.type == "decision.made" and d.get("planner") == "llm" else None)
                      or d.get("reason", ""))
    console().print(table)
    typer.echo("tokens: input+cached/output")


@decisions_app.command("show")
def decisions_show(event_id: int = typer.Argument(..., help="The event id from `decisions list`."),
                   as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """One decision: verdict, reason, plan, and for the LLM the model, tokens, cost and tool calls."""
    bounded(event_id, "event id")

    async def body() -> Any:
        async with runtime(needs_definitions=None) as rt:
            return await rt.events.get(event_id)

    e = run(body)
    if e is None or e.type not in TYPES:
        fail(f"no decision with event id {event_id}", hint="see `fazt-agent decisions list`")
    if as_json:
        print_json(e.to_json())
        return
    d, out = e.data, console()
    out.print(f"{e.type} {e.id} at {e.ts:%Y-%m-%d %H:%M:%S} UTC"
              + (f", incident {e.incident_id}" if e.incident_id else ""))
    for key in ("planner", "trigger", "autonomy", "verdict", "kind", "limit", "rule", "action", "reason",
                "rationale", "policy_version", "model"):
        if d.get(key) not in (None, ""):
            out.print(f"  {key:15} {d[key]}")
    if d.get("args"):
        out.print(f"  {'args':15} {json.dumps(d['args'])}")
    if d.get("plan"):
        out.print(f"  {'plan':15} {d['plan']['summary']} (risk {d['plan']['risk']})")
    usage = d.get("usage") or {}
    if usage:
        out.print(f"  {'tokens':15} input {usage.get('input_tokens', 0)}, "
                  f"cache read {usage.get('cache_read_tokens', 0)}, cache write {usage.get('cache_write_tokens', 0)}, "
                  f"output {usage.get('output_tokens', 0)}")
        out.print(f"  {'calls':15} {usage.get('calls', 0)} in {usage.get('latency_ms', 0):.0f} ms, "
                  f"about ${usage.get('cost_usd', 0):.4f}")
        for call in usage.get("tool_calls", []):
            result = f" -> {'ok' if call.get('ok') else 'refused'}, {call['result_chars']} chars" \
                if "result_chars" in call else ""
            args = json.dumps(call["input"])[:200]
            what = call["name"] if call["kind"] == call["name"] else f"{call['kind']} {call['name']}"
            out.print(f"    step {call['step']}: {what} {args}{result}")
