"""`POST /webhooks/alertmanager`: Alertmanager's alerts become this agent's incidents.

An owner who already runs Prometheus and Alertmanager points a receiver at the agent
(`webhook_configs: [{url: http://AGENT/webhooks/alertmanager, http_config: {authorization:
{credentials: fzt_...}}}]`) instead of keeping a second alerting brain. The body is Alertmanager's
webhook format, version 4. Each alert becomes one result fed through the same path as a beat's
(`incidents.transitions` → `IncidentStore.apply` → `Engine` triggers and decisions):

- check = the `alertname` label; kind = `alertmanager`; target = the `target` label, else
  `instance`, else `job`, else the alert's fingerprint;
- severity from the `severity` label: `critical`, `page`, `error`, `high`, `emergency`, `alert` →
  critical, anything else (or none) → warning;
- details keep the fingerprint, labels, annotations, generator URL, and `service` from the
  `service` label (so a rule's `{service}` can name the unit to restart);
- a firing alert opens the incident or updates it (a repeat of the same fingerprint changes
  nothing and triggers no second decision); a resolved alert resolves the open incident of its
  key only when the incident carries its fingerprint.

The token needs `operate` scope (an alert may lead to an action); a `read` token that scrapes
/metrics cannot inject alerts. Every refused request (401, 403, 405, 413, 400, 422) is answered
with a JSON error, records nothing but a `webhook.refused` event, and never reaches the engine.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from ..pulse.base import CheckResult

if TYPE_CHECKING:
    from ..engine import Engine
    from ..mcp.auth import TokenStore

log = logging.getLogger(__name__)

KIND = "alertmanager"            # the incidents' kind; `IncidentStore.resolve_orphans` leaves them alone
MAX_BODY = 1024 * 1024
CRITICAL = {"critical", "page", "error", "high", "emergency", "alert"}
TARGET_LABELS = ("target", "instance", "job")
SCOPE_NEEDED = "operate"


class _Model(BaseModel):
    # unknown fields ignored: Alertmanager may add some; defer_build: built at the first webhook, not at start
    model_config = ConfigDict(extra="ignore", defer_build=True)


class Alert(_Model):
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime | None = None
    endsAt: datetime | None = None
    generatorURL: str = ""
    fingerprint: str = Field(min_length=1, max_length=128)


class Notification(_Model):
    version: Literal["4"]
    status: Literal["firing", "resolved"] | None = None
    receiver: str = ""
    groupKey: str = ""
    alerts: list[Alert] = Field(max_length=10000)


class Refused(Exception):
    def __init__(self, status: int, reason: str, token: str | None = None):
        super().__init__(reason)
        self.status, self.reason, self.token = status, reason, token


def severity(labels: dict[str, str]) -> Literal["warning", "critical"]:
    return "critical" if labels.get("severity", "").strip().lower() in CRITICAL else "warning"


def target(alert: Alert) -> str:
    return next((alert.labels[k] for k in TARGET_LABELS if alert.labels.get(k)), alert.fingerprint)


def to_result(alert: Alert) -> CheckResult:
    """The result a beat would have produced for this alert."""
    name = alert.labels.get("alertname") or "alertmanager"
    details: dict[str, Any] = {"fingerprint": alert.fingerprint, "labels": alert.labels,
                               "annotations": alert.annotations, "source": "alertmanager"}
    if alert.generatorURL:
        details["generator_url"] = alert.generatorURL
    if alert.labels.get("service"):
        details["service"] = alert.labels["service"]
    if alert.status == "resolved":
        return CheckResult(name, KIND, target(alert), "ok", f"{name}: resolved in Alertmanager", {}, details)
    summary = alert.annotations.get("summary") or alert.annotations.get("description") or "firing"
    return CheckResult(name, KIND, target(alert), severity(alert.labels), f"{name}: {summary} (Alertmanager)"[:500],
                       {}, details)


class AlertmanagerWebhook:
    """ASGI app for POST /webhooks/alertmanager on the daemon's control plane."""

    def __init__(self, engine: Engine, tokens: TokenStore):
        self.engine, self.tokens = engine, tokens
        self._lock = asyncio.Lock()   # one notification at a time: the transitions see each other's incidents

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            await self._authenticate(scope)
            body = await _read(scope, receive)
            notification = _parse(body)
        except Refused as e:
            await self._refused(scope, send, e)
            return
        try:
            async with self._lock:
                summary = await self.handle(notification)
        except Exception:  # the daemon never breaks on one request; Alertmanager retries a 5xx
            log.exception("the Alertmanager webhook failed")
            await _json(send, 500, {"error": "internal error; see the agent's log"})
            return
        await _json(send, 200, summary)

    async def _authenticate(self, scope: Scope) -> str:
        from ..mcp.auth import bearer, covers

        if scope["method"] != "POST":
            raise Refused(405, f"method {scope['method']} not allowed: Alertmanager POSTs its notifications")
        token = await bearer(scope, self.tokens)
        if token is None:
            given = "authorization" in Headers(scope=scope)
            raise Refused(401, "unknown or revoked token" if given else
                          "no bearer token: set http_config.authorization.credentials in the receiver "
                          "(create one with: fazt-agent tokens create alertmanager --scope operate)")
        if not covers(token.scope, SCOPE_NEEDED):
            raise Refused(403, f"token {token.name!r} has scope {token.scope!r}; alerts need the "
                               f"{SCOPE_NEEDED!r} scope (they may lead to actions)", token.name)
        return token.name

    async def handle(self, notification: Notification) -> dict[str, int]:
        """Feed the alerts through the engine as one beat's results; returns what changed."""
        from ..pulse.runner import BeatResult

        incidents = self.engine.incidents
        open_ = await incidents.open_incidents()
        results: dict[tuple[str, str], CheckResult] = {}
        ignored = 0
        for alert in notification.alerts:
            r = to_result(alert)
            key = (r.check, r.target)
            if r.status == "ok":
                current = open_.get(key)
                if current is None or current.details.get("fingerprint") != alert.fingerprint:
                    ignored += 1   # nothing open for this alert (already resolved, or another alert's)
                    continue
            if key in results and results[key].status != "ok" and r.status == "ok":
                continue           # one notification firing and resolving one key: firing wins
            results[key] = r
        before = {i.id for i in open_.values()}
        await self.engine.on_beat(BeatResult(self.engine.clock.now(), list(results.values()), 0.0))
        after = await incidents.open_incidents()
        opened = sum(1 for i in after.values() if i.id not in before)
        resolved = sum(1 for i in open_.values() if i.key not in after or after[i.key].id != i.id)
        return {"alerts": len(notification.alerts), "opened": opened, "resolved": resolved, "ignored": ignored}

    async def _refused(self, scope: Scope, send: Send, e: Refused) -> None:
        client = scope.get("client")
        peer = f"{client[0]}:{client[1]}" if client else None
        try:
            await self.engine.rt.events.emit("webhook.refused", {
                "source": "alertmanager", "status": e.status, "reason": e.reason[:500], "token": e.token,
                "peer": peer}, source="webhook")
        except Exception:  # recording the refusal must not turn it into a 500
            log.exception("could not record webhook.refused")
        headers: list[tuple[bytes, bytes]] = []
        if e.status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="fazt-agent"'))
        if e.status == 405:
            headers.append((b"allow", b"POST"))
        await _json(send, e.status, {"error": e.reason}, headers)


async def _read(scope: Scope, receive: Receive) -> bytes:
    length = Headers(scope=scope).get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise Refused(413, f"body of {int(length)} bytes is over the 1 MiB limit")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Refused(400, "the client disconnected before the body was complete")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise Refused(413, "body over the 1 MiB limit")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _parse(body: bytes) -> Notification:
    try:
        data = json.loads(body)
    except RecursionError:   # json recurses once per nested array or object
        raise Refused(400, "the body is not JSON: nested too deeply") from None
    except ValueError as e:  # not JSON, not UTF-8, or a number of 4300+ digits
        raise Refused(400, f"the body is not JSON: {e}") from None
    if isinstance(data, dict) and "version" in data and data["version"] != "4":
        raise Refused(422, f"webhook format version {data['version']!r} is not supported (expected \"4\")")
    try:
        return Notification.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
                             for err in e.errors()[:5])
        raise Refused(422, f"not an Alertmanager notification (version 4): {problems}") from None


async def _json(send: Send, status: int, data: dict[str, Any],
                headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(data).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})
