"""`GET /metrics`: the agent's state in the Prometheus text exposition format (version 0.0.4).

Read from the store at each scrape (a handful of indexed queries), so it is the same whether the
numbers come from the daemon's own beats or from `fazt-agent beat`. Like /mcp it needs a bearer
token (any scope; `fazt-agent tokens create prometheus --scope read`), which Prometheus sends with
`authorization: {credentials: fzt_...}` in its scrape config.

Series (all gauges but `fazt_agent_events_total` and `fazt_agent_actions_total`):
- `fazt_agent_info{version}` 1, `fazt_agent_autonomy{level}` 1, `fazt_agent_paused` 0/1
- `fazt_agent_last_beat_timestamp_seconds`, `fazt_agent_last_beat_duration_seconds`
- `fazt_agent_check_status{check,kind,target}` 0 ok, 1 warning, 2 critical, 3 unknown (latest beat)
- `fazt_agent_check_value{check,kind,target,metric}` each number a check measured (base units)
- `fazt_agent_incidents_open{severity}`, `fazt_agent_halts_pending`, `fazt_agent_notifications_queued`
- `fazt_agent_actions_total{action,state}`, `fazt_agent_events_total`
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import TYPE_CHECKING, Iterable

from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from .. import __version__
from ..clock import parse_iso

if TYPE_CHECKING:
    from ..mcp.auth import TokenStore
    from ..runtime import Runtime

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
STATUS_VALUE = {"ok": 0, "warning": 1, "critical": 2, "unknown": 3}
SEVERITIES = ("warning", "critical", "unknown")


def label(value: str) -> str:
    """A label value escaped for the text format (backslash, double quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Family:
    """One metric family: its HELP and TYPE lines and its samples."""

    def __init__(self, name: str, kind: str, help_: str):
        self.name, self.kind, self.help = name, kind, help_
        self.samples: list[tuple[dict[str, str], float]] = []

    def add(self, value: float, **labels: str) -> None:
        self.samples.append((labels, value))

    def lines(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels, value in self.samples:
            inner = ",".join(f'{k}="{label(v)}"' for k, v in labels.items())
            yield f"{self.name}{{{inner}}} {number(value)}" if inner else f"{self.name} {number(value)}"


async def render(rt: Runtime) -> str:
    """The exposition text for the current state in `rt`'s store."""
    from ..engine import PAUSED_KEY

    store = rt.store
    families: list[Family] = []

    def family(name: str, kind: str, help_: str) -> Family:
        families.append(Family(name, kind, help_))
        return families[-1]

    family("fazt_agent_info", "gauge", "The agent's version.").add(1, version=__version__)
    family("fazt_agent_autonomy", "gauge", "The autonomy level in force (1 for the current level).").add(
        1, level=await rt.autonomy())
    family("fazt_agent_paused", "gauge", "1 while the agent is paused (observes and records only).").add(
        1 if await store.get_setting(PAUSED_KEY) == "1" else 0)

    last = await rt.beats.last_beat()
    if last is not None:
        family("fazt_agent_last_beat_timestamp_seconds", "gauge", "When the last beat ran (Unix time).").add(
            parse_iso(last["ts"]).timestamp())
        family("fazt_agent_last_beat_duration_seconds", "gauge", "How long the last beat took.").add(
            last["duration_ms"] / 1000)

    horizon = rt.clock.now() - timedelta(seconds=max(3 * rt.config.file.pulse.interval, 3600))
    configured = {c.name for c in rt.pulse.checks}
    results = [r for _, r in await rt.beats.latest(since=horizon) if r.check in configured]
    status = family("fazt_agent_check_status", "gauge",
                    "The latest status of each check and target: 0 ok, 1 warning, 2 critical, 3 unknown.")
    values = family("fazt_agent_check_value", "gauge", "Each number the latest check measured, in base units.")
    for r in results:
        status.add(STATUS_VALUE[r.status], check=r.check, kind=r.kind, target=r.target)
        for metric, value in sorted(r.metrics.items()):
            values.add(value, check=r.check, kind=r.kind, target=r.target, metric=metric)

    open_ = dict(await store.fetchall(
        "SELECT severity, COUNT(*) FROM incidents WHERE status = 'open' GROUP BY severity"))
    incidents = family("fazt_agent_incidents_open", "gauge", "Open incidents by severity.")
    for severity in SEVERITIES:
        incidents.add(open_.get(severity, 0), severity=severity)
    family("fazt_agent_halts_pending", "gauge", "Halts waiting for the owner's answer.").add(
        await store.scalar("SELECT COUNT(*) FROM halts WHERE status = 'pending'"))
    family("fazt_agent_notifications_queued", "gauge", "Notifications not delivered yet (being retried).").add(
        await store.scalar("SELECT COUNT(*) FROM notifications WHERE status = 'pending'"))
    actions = family("fazt_agent_actions_total", "counter", "Kernel actions by action and final state.")
    for row in await store.fetchall("SELECT action, state, COUNT(*) FROM actions GROUP BY action, state "
                                    "ORDER BY action, state"):
        actions.add(row[2], action=row[0], state=row[1])
    family("fazt_agent_events_total", "counter", "Events written to the audit log.").add(
        await store.scalar("SELECT COALESCE(MAX(id), 0) FROM events"))
    return "\n".join(line for f in families for line in f.lines()) + "\n"


class MetricsEndpoint:
    """ASGI app for GET /metrics behind a bearer token of any scope."""

    def __init__(self, rt: Runtime, tokens: TokenStore):
        self.rt, self.tokens = rt, tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        from ..mcp.auth import bearer, unauthorized

        if scope["type"] != "http":
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _send(send, 405, b"use GET\n", [(b"allow", b"GET, HEAD")])
            return
        if await bearer(scope, self.tokens) is None:
            await unauthorized(send, given="authorization" in Headers(scope=scope))
            return
        body = (await render(self.rt)).encode()
        await _send(send, 200, b"" if scope["method"] == "HEAD" else body, [(b"content-type", CONTENT_TYPE)],
                    length=len(body))


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]], *,
                length: int | None = None) -> None:
    headers = [*headers, (b"content-length", str(len(body) if length is None else length).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
