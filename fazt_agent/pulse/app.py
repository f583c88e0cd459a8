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
import json
import time
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Literal

from pydantic import Field

from ..units import Duration, format_duration
from .base import Check, CheckConfig, CheckContext, CheckResult, check
from .http import pool
from .http_client import HttpError, HttpPool

_LISTING_LIMIT = 1024 * 1024


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
        """Through the pulse's shared keep-alive pool (as `http` checks), else a pool of its own."""
        shared = pool(ctx)
        if shared is not None:
            return await self._collect(shared, ctx)
        own = HttpPool()
        try:
            return await self._collect(own, ctx)
        finally:
            await own.aclose()

    async def _collect(self, client: HttpPool, ctx: CheckContext) -> list[CheckResult]:
        c = self.config
        base = c.url.rstrip("/")

        async def read_listing() -> list[dict[str, object]]:
            async with asyncio.timeout(c.request_timeout):
                listing = await client.request("GET", f"{base}/.well-known/fazt-apps", body_limit=_LISTING_LIMIT)
            if not 200 <= listing.status_code < 300:
                raise ValueError(f"status {listing.status_code}")
            apps = json.loads(listing.body)
            if not isinstance(apps, list) or not all(isinstance(a, dict) and "name" in a for a in apps):
                raise ValueError("the listing is not a list of apps")
            return apps

        try:   # one listing a beat for every app check of this apps plane (N checks of one app each: not N reads)
            apps = await ctx.once(f"app.listing {base} {c.request_timeout}", read_listing)
        except TimeoutError:
            return [self.result("", "critical", f"the apps plane at {base} does not answer within "
                                                f"{format_duration(c.request_timeout)}")]
        except (HttpError, ValueError) as e:
            return [self.result("", "critical", f"the apps plane at {base} does not answer: {e or type(e).__name__}")]
        wanted = [a for a in apps if any(fnmatchcase(a["name"], g) for g in c.apps)]
        return list(await asyncio.gather(*(self._probe(client, base, a, ctx) for a in wanted)))

    async def _probe(self, client: HttpPool, base: str, app: dict[str, object], ctx: CheckContext) -> CheckResult:
        name, health = str(app["name"]), app.get("health")
        path = str(health) if health else "/"
        limit = 400 if health else 500
        deployed = datetime.fromisoformat(str(app["deployed_at"]).replace("Z", "+00:00"))
        age = max((ctx.clock.now() - deployed).total_seconds(), 0.0)
        details = {"app": name, "release": app["release"], "deployed_at": app["deployed_at"],
                   "since_deploy_s": round(age, 1), "path": path}
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(self.config.request_timeout):
                r = await client.request("GET", f"{base}{path}", {"Host": f"{name}.{self.config.domain}"})
        except TimeoutError:
            return self.result(name, "critical", f"{name}: GET {path}: no answer within "
                                                 f"{format_duration(self.config.request_timeout)}", **details)
        except HttpError as e:
            return self.result(name, "critical", f"{name}: GET {path} failed: {type(e).__name__}: {e}", **details)
        ms = (time.monotonic() - t0) * 1000
        metrics = {"latency_ms": ms, "status_code": float(r.status_code)}
        where = f"release {app['release']}, deployed {format_duration(age)} ago"
        if r.status_code >= limit:
            return self.result(name, "critical", f"{name}: GET {path} answered {r.status_code} ({where})", metrics,
                               **details)
        return self.result(name, "ok", f"{name}: GET {path} {r.status_code} in {ms:.0f} ms ({where})", metrics,
                           **details)
