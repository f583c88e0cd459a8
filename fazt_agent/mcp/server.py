"""The MCP server: the `fazt_*` tools (scope-checked and audited), the `fazt://` resources and
the `diagnose`, `weekly_report` and `explain_decision` prompts, for one Runtime."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import types
import typing
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Annotated, Any, AsyncIterator, Awaitable, Callable

import annotated_types

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, INVALID_REQUEST
from pydantic import BaseModel, Field

from .. import __version__
from ..clock import iso
from ..config import Config, redacted
from ..definitions import DefinitionsBroken, broken_summary
from ..units import INT64_MAX, INT64_MIN
from . import apps, control, tools  # noqa: F401  (registers the tools)
from ._registry import _NOTE, TOOLS, Audit, Deps, ToolSpec, guarded
from .events import redact

INSTRUCTIONS = """fazt-agent operates this server by itself: it watches health checks (pulse), opens
incidents, and acts, asks (a halt) or notifies according to the owner's policy and autonomy level.
Start with fazt_system_status. Lists and explanations are read-only. fazt_action_run and
fazt_halt_answer go through the same policy gate as the agent's own decisions: nothing destructive
runs without the owner's approval. Every call is recorded in the audit trail."""

# What a tool does with the definitions (policy, kernel settings): refused while a file is broken,
# since this process would act on part of them, not on the last good set the daemon keeps.
# fazt_halt_answer needs them to approve only: denying runs nothing and always works.
NEEDS_DEFINITIONS = {"fazt_action_plan": "planning an action", "fazt_action_run": "running an action",
                     "fazt_policy_explain": "explaining the policy"}


def build_server(deps: Deps) -> MCPServer[Deps]:
    """An MCPServer whose tools, resources and prompts work on `deps`."""

    @asynccontextmanager
    async def lifespan(_: MCPServer[Deps]) -> AsyncIterator[Deps]:
        yield deps

    instructions = INSTRUCTIONS
    if deps.rt.issues:
        instructions += (f"\n\nWARNING: broken definitions: {broken_summary(deps.rt.issues)}. Until the owner "
                         "fixes them, planning, running and approving actions and explaining the policy are "
                         "refused here; reads and denying a halt work. A running daemon keeps its last good "
                         "definitions.")
    server: MCPServer[Deps] = MCPServer("fazt-agent", title="fazt-agent", version=__version__,
                                       instructions=instructions, lifespan=lifespan, log_level="WARNING",
                                       middleware=[Audit(deps)])
    server.middleware.append(KnownPrompts(server))
    for name, spec in TOOLS.items():
        spec = dataclasses.replace(spec, fn=_needing_definitions(name, spec, deps))
        server.add_tool(int64_inputs(guarded(name, spec)), name=name, title=spec.annotations.title,
                        description=inspect.cleandoc(spec.fn.__doc__ or ""), annotations=spec.annotations,
                        structured_output=True)
    _resources(server, deps)
    apps.register_resources(server, deps)
    _prompts(server, deps)
    return server


def _needing_definitions(name: str, spec: ToolSpec, deps: Deps) -> Any:
    """`spec.fn`, refused with the broken files named when it needs definitions that did not load."""

    @functools.wraps(spec.fn)
    async def call(**kwargs: Any) -> Any:
        what, hint = NEEDS_DEFINITIONS.get(name), None
        if name == "fazt_halt_answer" and kwargs.get("option") == "approve":
            what, hint = f"approving halt {kwargs.get('halt_id')}", "Denying it still works."
        if what is not None and deps.rt.issues:
            _NOTE.get({})["outcome"] = "refused"
            raise ToolError(str(DefinitionsBroken(what, deps.rt.issues, hint)))
        return await spec.fn(**kwargs)

    return call


def int64_inputs(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` with every integer argument that declares no upper bound of its own limited to SQLite's
    range in the input schema (the SDK reads `__signature__`): 2**64 is then refused as invalid
    input, never an OverflowError with a traceback inside the tool."""
    sig = inspect.signature(fn, eval_str=True)
    params = [p.replace(annotation=Annotated[p.annotation, Field(ge=INT64_MIN, le=INT64_MAX)])
              if _unbounded_int(p.annotation) else p for p in sig.parameters.values()]
    fn.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return fn


def _unbounded_int(annotation: Any) -> bool:
    """Whether `annotation` is `int` or `int | None` (either possibly Annotated) with no upper bound."""
    meta: list[Any] = []
    while True:
        if typing.get_origin(annotation) is Annotated:
            annotation, *more = typing.get_args(annotation)
            meta += more
        elif typing.get_origin(annotation) in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = members[0] if len(members) == 1 else None
        else:
            break
    return annotation is int and not any(isinstance(c, (annotated_types.Le, annotated_types.Lt))
                                         for m in meta for c in getattr(m, "metadata", [m]))


class KnownPrompts:
    """Server middleware: `prompts/get` of an unknown prompt or without a required argument is the
    client's mistake, answered with INVALID_PARAMS naming the prompts. The SDK would raise it as an
    internal error and log a traceback, as if the server were broken."""

    def __init__(self, server: MCPServer[Deps]):
        self.server = server

    async def __call__(self, ctx: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        if ctx.method == "prompts/get":
            params = ctx.params or {}
            name, arguments = params.get("name"), params.get("arguments") or {}
            prompts = {p.name: p for p in await self.server.list_prompts()}
            prompt = prompts.get(name) if isinstance(name, str) else None
            if prompt is None:
                raise MCPError(INVALID_PARAMS, f"unknown prompt {name!r} (the prompts: {', '.join(sorted(prompts))})")
            missing = [a.name for a in prompt.arguments or [] if a.required and a.name not in arguments]
            if missing:
                raise MCPError(INVALID_PARAMS, f"prompt {name!r} needs the argument(s): {', '.join(missing)}")
        return await call_next(ctx)


def _json(value: BaseModel | dict[str, Any]) -> str:
    data = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return json.dumps(data, indent=2, default=str)


def _resources(server: MCPServer[Deps], deps: Deps) -> None:
    def resource(uri: str, name: str, description: str) -> Any:
        return server.resource(uri, name=name, description=description, mime_type="application/json")

    @resource("fazt://pulse/status", "pulse-status", "The newest result of every health check and target.")
    async def pulse_status() -> str:
        return _json(await tools.pulse_status(deps))

    @resource("fazt://pulse/history", "pulse-history", "Beats of the last 24 hours with what was not ok.")
    async def pulse_history() -> str:
        return _json(await tools.pulse_history(deps, 24, 2000))

    @resource("fazt://events/recent", "events-recent", "The 100 newest events of the audit trail.")
    async def events_recent() -> str:
        return _json(await tools.events(deps, limit=100))

    @resource("fazt://incidents", "incidents", "Open incidents and the most recently resolved ones.")
    async def incidents() -> str:
        return _json(await tools.incidents(deps, True, 100))

    @resource("fazt://halts/pending", "halts-pending", "Approval requests waiting for the owner.")
    async def halts_pending() -> str:
        return _json(await tools.halts(deps, False, 100))

    @resource("fazt://policies", "policies", "The effective policy: rules, constraints, schedule, defaults.")
    async def policies() -> str:
        if deps.rt.issues:
            raise MCPError(INVALID_REQUEST, str(DefinitionsBroken("the policy in force", deps.rt.issues)))
        p = deps.rt.definitions.policy
        return _json({"version": p.version, "files": list(p.files),
                      "constraints": p.constraints.model_dump(mode="json"),
                      "schedule": p.schedule.model_dump(mode="json"), "defaults": p.defaults.model_dump(mode="json"),
                      "rules": [r.model_dump(mode="json") for r in p.rules]})

    @resource("fazt://config", "config", "The daemon configuration in force, secrets redacted.")
    async def config() -> str:
        return _json(config_view(deps.rt.config))


def config_view(config: Config) -> dict[str, Any]:
    """The configuration with notification URLs and every `${NAME}` secret hidden."""
    data = config.file.model_dump(mode="json")
    data["notify"]["urls"] = [redacted(u) for u in config.file.notify.urls]
    return {"source": str(config.source) if config.source else None, "data_dir": str(config.data_dir),
            "folders": {k: str(v) for k, v in config.folders.items()}, "config": redact(data, config.secrets)}


def _prompts(server: MCPServer[Deps], deps: Deps) -> None:
    @server.prompt("diagnose", title="Diagnose the server",
                   description="Walk through the server's current health, incidents and pending approvals.")
    async def diagnose() -> str:
        status = await tools.system_status(deps)
        open_incidents = await tools.incidents(deps, False, 20)
        return (
            "You are helping the owner of a server run by fazt-agent. Walk through its current health:\n"
            "1. Summarise the overall health and every problem below in plain words.\n"
            "2. For each open incident, say what was decided (`last_verdict`) and why — use "
            "fazt_decisions_list with its incident_id, and fazt_events_list for what followed.\n"
            "3. Look at the trend with fazt_pulse_history; say whether things are getting worse.\n"
            "4. List pending halts (fazt_halts_list) and what approving each would do.\n"
            "5. Recommend next steps; propose actions with fazt_action_plan before running anything.\n\n"
            f"Current status:\n{_json(status)}\n\nOpen incidents:\n{_json(open_incidents)}")

    @server.prompt("weekly_report", title="Weekly report",
                   description="A report of the last 7 days: health, incidents, decisions, actions, approvals.")
    async def weekly_report() -> str:
        since = deps.rt.clock.now() - timedelta(days=7)
        rows = await deps.rt.store.fetchall("SELECT type, COUNT(*) AS n FROM events WHERE ts >= ? GROUP BY type "
                                            "ORDER BY type", (iso(since),))
        counts = {r["type"]: r["n"] for r in rows}
        incidents = await tools.incidents(deps, True, 200)
        status = await tools.system_status(deps)
        return (
            "Write the owner a short weekly report of this server for the last 7 days: overall health, "
            "the incidents (what happened, what the agent did, what it asked), actions that failed or did "
            "not help, approvals still waiting, and anything that needs the owner's attention. Use "
            "fazt_events_list and fazt_decisions_list for details. Be concise and concrete.\n\n"
            f"Event counts by type since {since:%Y-%m-%d %H:%M} UTC:\n{json.dumps(counts, indent=2)}\n\n"
            f"Incidents:\n{_json(incidents)}\n\nCurrent status:\n{_json(status)}")

    @server.prompt("explain_decision", title="Explain a decision",
                   description="Explain why the agent decided what it did, from a decision or event id.")
    async def explain_decision(event_id: str) -> str:
        digits = event_id.strip()
        if not (digits.isascii() and digits.isdigit()):
            raise MCPError(INVALID_PARAMS, f"expected an event id (a number), got {event_id[:80]!r}")
        if len(digits) > 19 or int(digits) > INT64_MAX:   # len first: int() refuses 4300+ digits
            raise MCPError(INVALID_PARAMS, f"there is no event {digits[:30]}{'...' if len(digits) > 30 else ''} "
                                           "(event ids are at most 9,223,372,036,854,775,807)")
        event = await deps.rt.events.get(int(digits))
        if event is None:
            raise MCPError(INVALID_PARAMS, f"there is no event {event_id} (see fazt_decisions_list)")
        related = await deps.rt.events.list(incident_id=event.incident_id, limit=50, newest_first=False) \
            if event.incident_id is not None else []
        return (
            "Explain to the owner, in plain words, why fazt-agent decided what it did: the trigger, the "
            "autonomy level, the policy rule and its verdict, the plan and its risk, and what happened "
            "next. If it did not act, say why not and what the owner could change (policy, autonomy) if "
            "they want a different outcome. Use fazt_policy_explain for the rule.\n\n"
            f"The event:\n{_json(tools.event_out(event))}\n\n"
            + (f"Everything recorded about incident {event.incident_id}:\n"
               f"{_json({'events': [tools.event_out(e).model_dump(mode='json') for e in related]})}"
               if related else "It belongs to no incident."))
