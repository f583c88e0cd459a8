"""`--server NAME` on the CLI: what a command reads or does, fetched from that agent's `/mcp`.

Each function returns what the local command's own query returns (the same dict, `Incident`,
`Event`, halts with the fields the renderer reads), so the command prints through the code it
prints with locally: the same output. Errors exit as the local ones do (`fail`), with the
server's own text (a scope refusal names the scope needed).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable, TypeVar

from ..clock import parse_iso

T = TypeVar("T")
MAX_LIMIT = 500   # the agents' MCP tools list at most this many items


def _fetch(name: str, work: Callable[[Any], Awaitable[T]]) -> T:
    """Resolve NAME in ~/.fazt/config.json and run `work(server)`; errors exit like local ones."""
    from ..cli._common import EXIT_USAGE, fail
    from .config import ClientConfig, FleetError
    from .remote import RemoteError

    try:
        server = ClientConfig.load().resolve(name)
    except FleetError as e:
        fail(str(e), code=EXIT_USAGE)
    try:
        return asyncio.run(work(server))  # type: ignore[arg-type]
    except RemoteError as e:
        fail(str(e))


def _limit(limit: int) -> int:
    if limit > MAX_LIMIT:
        from ..cli._common import EXIT_USAGE, fail

        fail(f"--limit {limit}: at most {MAX_LIMIT} with --server (the agent's MCP tools list at most that many)",
             code=EXIT_USAGE)
    return limit


def status(name: str) -> dict[str, Any]:
    from .remote import call

    data = _fetch(name, lambda s: call(s, "fazt_system_status"))
    for extra in ("pending_halts", "open_incidents"):   # MCP's additions to the local status
        data.pop(extra, None)
    for problem in data.get("problems", []):
        if problem.get("measured_at") is None:
            problem.pop("measured_at", None)
    return data


def event(data: dict[str, Any]) -> Any:
    """An `Event` whose JSON leaves out the hash, which the agents' MCP tools do not show."""
    from ..events import Event

    class RemoteEvent(Event):
        def to_json(self) -> dict[str, Any]:
            out = super().to_json()
            out.pop("hash", None)
            return out

    return RemoteEvent(data["id"], parse_iso(data["ts"]), data["type"], data["source"], data.get("incident_id"),
                       data.get("data") or {}, "")


def events(name: str, type_glob: str | None, since: timedelta | None, limit: int) -> list[Any]:
    """Newest first, as `EventLog.list` returns them."""
    from .remote import call

    args: dict[str, Any] = {"limit": _limit(limit)}
    if type_glob:
        args["type"] = type_glob
    if since is not None:
        args["since_hours"] = since.total_seconds() / 3600
    data = _fetch(name, lambda s: call(s, "fazt_events_list", args))
    return [event(e) for e in data["events"]]


def incident(data: dict[str, Any]) -> Any:
    from ..incidents import Incident

    def ts(value: str | None) -> datetime | None:
        return parse_iso(value) if value else None

    return Incident(data["id"], data["check"], data["target"], data["kind"], data["status"], data["severity"],
                    data["peak_severity"], data["message"], data.get("metrics") or {}, data.get("details") or {},
                    parse_iso(data["opened_at"]), parse_iso(data["updated_at"]), ts(data.get("resolved_at")),
                    data["beats"], last_verdict=data.get("last_verdict"), flapping_since=ts(data.get("flapping_since")))


def incidents(name: str, all_: bool, limit: int) -> list[Any]:
    from .remote import call

    data = _fetch(name, lambda s: call(s, "fazt_incidents_list", {"include_resolved": all_, "limit": _limit(limit)}))
    return [incident(i) for i in data["incidents"]]


def incident_with_events(name: str, incident_id: int) -> tuple[Any, list[Any]]:
    """The incident (among the newest 500) and its events, oldest first."""
    from .remote import session, tool_result

    async def work(server: Any) -> tuple[Any, list[Any]]:
        async with session(server) as client:
            found = await tool_result(server, client, "fazt_incidents_list", {"include_resolved": True,
                                                                              "limit": MAX_LIMIT})
            match = next((i for i in found["incidents"] if i["id"] == incident_id), None)
            if match is None:
                return None, []
            listed = await tool_result(server, client, "fazt_events_list", {"incident_id": incident_id, "limit": 200})
        return incident(match), [event(e) for e in reversed(listed["events"])]

    return _fetch(name, work)


@dataclass(frozen=True)
class RemotePlan:
    summary: str
    steps: list[str]


@dataclass(frozen=True)
class RemoteHalt:
    """A halt as an agent's MCP tools show it: the fields `halts list` prints, and its JSON."""

    raw: dict[str, Any]

    def __getattr__(self, key: str) -> Any:
        if key == "raw":
            raise AttributeError(key)
        if key == "plan":
            return RemotePlan(self.raw["plan"]["summary"], list(self.raw["plan"].get("steps") or []))
        if key in ("created_at", "expires_at"):
            return parse_iso(self.raw[key])
        try:
            return self.raw[key]
        except KeyError:
            raise AttributeError(key) from None

    def to_json(self) -> dict[str, Any]:
        return dict(self.raw)


def halts(name: str, all_: bool, limit: int = 100) -> list[RemoteHalt]:
    from .remote import call

    data = _fetch(name, lambda s: call(s, "fazt_halts_list", {"include_closed": all_, "limit": _limit(limit)}))
    return [RemoteHalt(h) for h in data["halts"]]


def halt(name: str, halt_id: int) -> RemoteHalt | None:
    return next((h for h in halts(name, True, MAX_LIMIT) if h.id == halt_id), None)


def answer(name: str, halt_id: int, option: str, note: str | None) -> dict[str, Any]:
    """`fazt_halt_answer` on that agent: the same result keys as `Executor.answer`."""
    from .remote import call

    args: dict[str, Any] = {"halt_id": halt_id, "option": option}
    if note is not None:
        args["note"] = note
    return _fetch(name, lambda s: call(s, "fazt_halt_answer", args))


def decisions(name: str, limit: int, planner: str | None) -> list[Any]:
    """`decision.made` and `decision.rejected`, newest first (what the agent's MCP tool lists)."""
    from .remote import call

    data = _fetch(name, lambda s: call(s, "fazt_decisions_list", {"limit": _limit(limit)}))
    found = [event(e) for e in data["events"]]
    if planner:
        found = [e for e in found if e.data.get("planner") == planner]
    return found


def show_halt(name: str, halt_id: int, as_json: bool) -> None:
    """`halts show ID --server NAME`: the halt as that agent's MCP tools show it (title, plan, options).

    The agent's stored message body is not part of its MCP halt, so the text is built from the plan."""
    from ..cli._common import fail, print_json

    found = halt(name, halt_id)
    if found is None:
        fail(f"no halt {halt_id} on server {name!r}", hint=f"see `fazt-agent halts list --all --server {name}`")
    if as_json:
        print_json(found.to_json())
        return
    raw = found.raw
    lines = [f"halt {raw['id']} ({raw['status']}{', ' + str(raw['answer']) if raw.get('answer') else ''})",
             raw["title"], "", raw["plan"]["summary"]]
    lines += [f"  {i}. {step}" for i, step in enumerate(raw["plan"].get("steps") or [], 1)]
    lines += ["", f"options: {', '.join(raw['options'])} (default {raw['default_option']}, expires "
                  f"{raw['expires_at']})", f"answer: fazt-agent approve {raw['id']} --server {name}  |  "
                                           f"fazt-agent deny {raw['id']} --server {name}"]
    print("\n".join(lines))


def apps(name: str) -> list[dict[str, Any]]:
    """`apps list --server NAME`: the rows `list_apps` returns on that agent (`fazt_apps_list`)."""
    from .remote import call

    return list(_fetch(name, lambda s: call(s, "fazt_apps_list"))["apps"])


def deploy(name: str, app: str, source: Any) -> dict[str, Any]:
    """`deploy SOURCE --name APP --to NAME`: SOURCE read here with the local deploy's checks, sent to
    that agent's `fazt_deploy`; the same result keys as the local deploy.

    The laptop has no `[apps]` of its own, so the default limits apply here and the agent applies
    its own again. `fazt_deploy` takes `{path: text}`, so a file that is not UTF-8 text (an image, a
    font) is refused here, naming it, before anything is sent: deploy such an app on the server.
    """
    from ..apps import bundle
    from ..cli._common import fail
    from ..config import AppsSection
    from .remote import call

    limits = AppsSection()
    try:
        bundle.check_name(app)
        b = bundle.read(source, max_files=limits.max_files, max_bytes=limits.max_upload)
    except bundle.BundleError as e:
        fail(str(e))
    import base64

    files: dict[str, str] = {}
    binary: dict[str, str] = {}
    for path, content in sorted(b.files.items()):
        try:
            files[path] = content.decode("utf-8")
        except UnicodeDecodeError:
            binary[path] = base64.b64encode(content).decode("ascii")
    arguments: dict[str, Any] = {"app_name": app, "files": files}
    if binary:
        arguments["binary_files"] = binary
    return _fetch(name, lambda s: call(s, "fazt_deploy", arguments))
