"""`app`: probe each deployed app through the apps plane (issue 13).

The check asks the apps plane (`url`, the `[apps] listen` address) for its apps at
`/.well-known/fazt-apps` (answered to loopback clients only), then GETs each app's health path
(its fazt.toml `health`, else `/`) with the app's Host header. One result per app, target = the
app's name: critical when it answers 5xx (or 4xx on a declared health path) or not at all.
Details carry the release and how long ago it was deployed, so a policy can roll back only a
release that starts failing soon after its deploy (`app.rollback` with `within`).
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Literal

from pydantic import Field

from ..units import Duration, format_duration
from .base import Check, CheckConfig, CheckContext, CheckResult, check


class AppConfig(CheckConfig):
    kind: Literal["app"]
    url: str = "http://127.0.0.1:8080"      # the apps plane ([apps] listen)
    domain: str = "localhost"               # [apps] domain: an app is probed at NAME.<domain>
    apps: list[str] = Field(default_factory=lambda: ["*"])   # globs of app names
    request_timeout: Duration = 5.0


@check("app")
class AppCheck(Check):
    Config = AppConfig
    config: AppConfig

    async def collect(self, ctx: CheckContext) -> list[CheckResult]:
        import httpx

        c = self.config
        base = c.url.rstrip("/")
        async with httpx.AsyncClient(timeout=c.request_timeout) as client:
            try:
                listing = await client.get(f"{base}/.well-known/fazt-apps")
                listing.raise_for_status()
                apps = listing.json()
            except (httpx.HTTPError, ValueError) as e:
                return [self.result("", "critical", f"the apps plane at {base} does not answer: {e or type(e).__name__}")]
            wanted = [a for a in apps if any(fnmatchcase(a["name"], g) for g in c.apps)]
            return list(await asyncio.gather(*(self._probe(client, base, a, ctx) for a in wanted)))

    async def _probe(self, client: object, base: str, app: dict[str, object], ctx: CheckContext) -> CheckResult:
        import httpx

        assert isinstance(client, httpx.AsyncClient)
        name, health = str(app["name"]), app.get("health")
        path = str(health) if health else "/"
        limit = 400 if health else 500
        deployed = datetime.fromisoformat(str(app["deployed_at"]).replace("Z", "+00:00"))
        age = max((ctx.clock.now() - deployed).total_seconds(), 0.0)
        details = {"app": name, "release": app["release"], "deployed_at": app["deployed_at"],
                   "since_deploy_s": round(age, 1), "path": path}
        t0 = time.monotonic()
        try:
            r = await client.get(f"{base}{path}", headers={"host": f"{name}.{self.config.domain}"})
        except httpx.HTTPError as e:
            return self.result(name, "critical", f"{name}: GET {path} failed: {e or type(e).__name__}", **details)
        ms = (time.monotonic() - t0) * 1000
        metrics = {"latency_ms": ms, "status_code": float(r.status_code)}
        where = f"release {app['release']}, deployed {format_duration(age)} ago"
        if r.status_code >= limit:
            return self.result(name, "critical", f"{name}: GET {path} answered {r.status_code} ({where})", metrics,
                               **details)
        return self.result(name, "ok", f"{name}: GET {path} {r.status_code} in {ms:.0f} ms ({where})", metrics,
                           **details)
