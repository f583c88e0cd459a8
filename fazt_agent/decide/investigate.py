"""Read-only investigation tools the LLM may call before it proposes anything.

Each tool is registered with `@investigation(name)`: an argument model (the tool's input
schema, unknown keys refused) and a function returning text. Nothing here changes the server.
Files are read only below the policy's cleanup roots (resolved with realpath, opened component
by component without following a symlink), and every output is bounded and fenced as data.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import os
import stat
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Literal

import psutil
from pydantic import BaseModel, ConfigDict, Field

from ..clock import iso
from ..errors import ActionError, FaztAgentError
from ..kernel.base import ActionContext, Constraints
from ..kernel.cleanup import _Scan, _walk, allowed_roots, inside, open_dir, target_roots
from ..units import format_size
from .prompt import Fence, number

if TYPE_CHECKING:
    from ..incidents import Incident
    from ..runtime import Runtime

MAX_SCANNED = 200_000
TAIL_BYTES = 64 * 1024


class InvestigationError(FaztAgentError):
    """The tool refused its arguments or could not read; the message goes back to the model."""


class Args(BaseModel):
    # defer_build: a tool's schema is built when the LLM is first offered it, not at import
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


@dataclass(frozen=True)
class Scope:
    """What the tools may see: the store, the allowed roots, the incident under decision; and the
    fence of the conversation their results go back into."""

    rt: Runtime
    action_context: ActionContext
    incident: Incident | None = None
    fence: Fence = field(default_factory=Fence)

    @classmethod
    def of(cls, rt: Runtime, incident: Incident | None = None, fence: Fence | None = None) -> Scope:
        c = rt.definitions.policy.constraints
        return cls(rt, ActionContext(clock=rt.clock, constraints=Constraints(
            cleanup_roots=tuple(c.cleanup_roots), service_units=tuple(c.service_units), domains=tuple(c.domains)),
            settings={}), incident, fence or Fence())


Tool = Callable[[Scope, Any], Awaitable[str]]
INVESTIGATIONS: dict[str, tuple[str, type[Args], Tool]] = {}


def investigation(name: str, description: str, args: type[Args]) -> Callable[[Tool], Tool]:
    def register(fn: Tool) -> Tool:
        INVESTIGATIONS[name] = (description, args, fn)
        return fn
    return register


def _row(ts: str, status: str, message: str, metrics: dict[str, Any]) -> str:
    numbers = " ".join(f"{k}={number(v)}" for k, v in list(metrics.items())[:8])
    return f"{ts[:19]} {status:8} {message[:160]} | {numbers}"


class HistoryArgs(Args):
    check: str | None = Field(None, description="check name (default: the incident's check)")
    target: str | None = Field(None, description="the check's target (default: the incident's, or all)")
    hours: float = Field(6, gt=0, le=168, description="how far back")
    limit: int = Field(24, ge=1, le=60, description="at most this many results, the newest")


@investigation("beat_history", "Stored results of one check over time (status, message, metrics), oldest first.",
               HistoryArgs)
async def beat_history(scope: Scope, args: HistoryArgs) -> str:
    incident = scope.incident
    check = args.check or (incident.check if incident else None)
    if check is None:
        raise InvestigationError("name a check (see probe_detail or query_events for the names)")
    target = args.target if args.target is not None else (incident.target if incident and check == incident.check
                                                          else None)
    since = iso(scope.rt.clock.now() - timedelta(hours=args.hours))
    sql, params = "SELECT * FROM results WHERE check_name = ? AND ts >= ?", [check, since]
    if target is not None:
        sql += " AND target = ?"
        params.append(target)
    rows = await scope.rt.store.fetchall(sql + " ORDER BY ts DESC LIMIT ?", (*params, args.limit))
    lines = [_row(r["ts"], r["status"], f"[{r['target']}] {r['message']}", json.loads(r["metrics"]))
             for r in reversed(rows)]
    return scope.fence(f"stored results of check {check}", "\n".join(lines) or "no results in that time")


class EventsArgs(Args):
    type: str = Field("*", max_length=64, description="event type glob, e.g. 'action.*' or 'decision.made'")
    incident_id: int | None = Field(None, description="only this incident's events")
    hours: float = Field(24, gt=0, le=720, description="how far back")
    limit: int = Field(20, ge=1, le=50, description="at most this many, the newest")


@investigation("query_events", "The audit trail: recent events (decisions, actions, halts, incidents), oldest first.",
               EventsArgs)
async def query_events(scope: Scope, args: EventsArgs) -> str:
    events = await scope.rt.events.list(type_glob=args.type, incident_id=args.incident_id, limit=args.limit,
                                        since=scope.rt.clock.now() - timedelta(hours=args.hours))
    lines = [f"{e.id} {iso(e.ts)[:19]} {e.type} incident={e.incident_id or '-'} "
             f"{json.dumps(e.data, separators=(',', ':'), default=str)[:300]}" for e in reversed(events)]
    return scope.fence("event log", "\n".join(lines) or "no matching events")


class LargestArgs(Args):
    root: str = Field(description="an absolute directory inside the allowed cleanup roots")
    top: int = Field(10, ge=1, le=30, description="how many entries to list")


def _largest(root: str, top: int) -> str:
    scan, seen, total = _Scan(), 0, 0
    children: dict[str, int] = {}
    files: list[tuple[int, str]] = []   # a min-heap of the `top` largest
    for path, st in _walk(root, scan):
        seen += 1
        if seen > MAX_SCANNED:
            break
        first = os.path.join(root, PurePosixPath(path).relative_to(root).parts[0])
        children[first] = children.get(first, 0) + st.st_size
        total += st.st_size
        if len(files) < top:
            heapq.heappush(files, (st.st_size, path))
        else:
            heapq.heappushpop(files, (st.st_size, path))
    lines = [f"{format_size(total)} in {min(seen, MAX_SCANNED)} files under {root}"
             + (" (stopped counting at the limit)" if seen > MAX_SCANNED else ""), "largest entries:"]
    lines += [f"  {format_size(size)}  {path}" for path, size in
              sorted(children.items(), key=lambda item: -item[1])[:top]]
    lines.append("largest files:")
    lines += [f"  {format_size(size)}  {path}" for size, path in sorted(files, reverse=True)]
    if scan.skipped_symlinks or scan.skipped_mounts or scan.unreadable:
        lines.append(f"not followed: {scan.skipped_symlinks} symlinks, {scan.skipped_mounts} mounts; "
                     f"unreadable: {len(scan.unreadable)}")
    return "\n".join(lines)


@investigation("largest_paths", "The largest folders and files under an allowed root (like du | sort | head).",
               LargestArgs)
async def largest_paths(scope: Scope, args: LargestArgs) -> str:
    try:
        [root] = target_roots(args.root, scope.action_context)
    except ActionError as e:
        raise InvestigationError(str(e)) from None
    return scope.fence(f"sizes under {root}", await asyncio.to_thread(_largest, root, args.top))


class TailArgs(Args):
    path: str = Field(description="an absolute file path inside the allowed cleanup roots")
    lines: int = Field(50, ge=1, le=200, description="how many lines from the end")


def _tail(real: str, lines: int) -> str:
    folder = open_dir(os.path.dirname(real))
    try:
        fd = os.open(os.path.basename(real), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=folder)
    finally:
        os.close(folder)
    with open(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise InvestigationError(f"{real!r} is not a regular file")
        f.seek(max(0, st.st_size - TAIL_BYTES))
        text = f.read(TAIL_BYTES).decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


@investigation("tail_log", "The last lines of a text file inside the allowed cleanup roots.", TailArgs)
async def tail_log(scope: Scope, args: TailArgs) -> str:
    path = args.path
    if "\x00" in path or not path.startswith("/") or ".." in path.split("/"):
        raise InvestigationError(f"path {path!r} must be absolute, without '..'")
    real = os.path.realpath(path)
    try:
        roots = allowed_roots(scope.action_context)
    except ActionError as e:
        raise InvestigationError(str(e)) from None
    if not any(inside(real, root) and real != root for root in roots):
        raise InvestigationError(f"{path!r} (resolves to {real!r}) is outside the allowed roots {', '.join(roots)}")
    try:
        text = await asyncio.to_thread(_tail, real, args.lines)
    except OSError as e:
        raise InvestigationError(f"cannot read {real!r} without following a symlink: {e.strerror or e}") from None
    return scope.fence(f"log file {real}", text or "(empty)", limit=16000)


class ProcessArgs(Args):
    sort: Literal["memory", "cpu_time"] = Field("memory", description="order by resident memory or CPU time used")
    limit: int = Field(15, ge=1, le=40)
    name: str | None = Field(None, max_length=64, description="only processes whose name contains this")


def _processes(args: ProcessArgs) -> str:
    rows = []
    for p in psutil.process_iter(["pid", "name", "username", "memory_info", "cpu_times", "status", "cmdline"]):
        info = p.info
        if args.name and args.name not in (info["name"] or ""):
            continue
        rss = info["memory_info"].rss if info["memory_info"] else 0
        cpu = sum(info["cpu_times"][:2]) if info["cpu_times"] else 0.0
        rows.append((rss, cpu, info))
    rows.sort(key=lambda row: row[0] if args.sort == "memory" else row[1], reverse=True)
    lines = ["pid user status rss cpu_s name command"]
    lines += [f"{i['pid']} {i['username']} {i['status']} {format_size(rss)} {cpu:.1f} {i['name']} "
              f"{' '.join(i['cmdline'] or ())[:160]}" for rss, cpu, i in rows[:args.limit]]
    return "\n".join(lines)


@investigation("process_list", "Running processes with user, state, memory and CPU time.", ProcessArgs)
async def process_list(scope: Scope, args: ProcessArgs) -> str:
    return scope.fence("process list", await asyncio.to_thread(_processes, args))


class ProbeArgs(Args):
    check: str = Field(description="check name")
    target: str | None = Field(None, description="the check's target (default: every target)")


@investigation("probe_detail", "The newest result of a check with every detail it recorded (e.g. an HTTP body).",
               ProbeArgs)
async def probe_detail(scope: Scope, args: ProbeArgs) -> str:
    latest = [(ts, r) for ts, r in await scope.rt.beats.latest()
              if r.check == args.check and (args.target is None or r.target == args.target)]
    if not latest:
        names = sorted({c.name for c in scope.rt.pulse.checks})
        raise InvestigationError(f"no stored result for check {args.check!r} (checks: {', '.join(names)})")
    text = "\n\n".join(json.dumps({"measured": iso(ts), **r.to_json()}, indent=1, default=str)[:4000]
                       for ts, r in latest[:5])
    return scope.fence(f"probe {args.check}", text)
