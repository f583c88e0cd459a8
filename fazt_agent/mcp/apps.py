"""The apps MCP tools (issue 13): list, info, releases, logs (read); deploy and rollback (operate);
delete (operate, through the policy gate: `app.delete` is destructive, so it opens a halt).

`fazt_deploy` takes the files themselves (`{path: text}`), with the same refusals and limits as
`fazt-agent deploy` (paths that escape, `[apps] max_files`, `[apps] max_upload`).
"""

from __future__ import annotations

import base64
import binascii

import json
from typing import Annotated, Any

from mcp.server.mcpserver import Context
from pydantic import Field

from ._registry import caller, deps_of, tool

AppName = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$",
                               description="the app's name")]


def apps_list(deps: Any) -> dict[str, Any]:
    from ..apps.deploy import list_apps

    return {"apps": list_apps(deps.rt)}


def app_info(deps: Any, name: str) -> dict[str, Any]:
    from ..apps.deploy import info, releases

    return {**info(deps.rt, name), "release_list": releases(deps.rt, name)}


@tool("fazt_apps_list", scope="read", title="Apps", read_only=True)
async def fazt_apps_list(ctx: Context) -> dict[str, Any]:
    """The deployed apps: name, URL, current release, size, when deployed, whether it has serverless code."""
    return apps_list(deps_of(ctx))


@tool("fazt_app_info", scope="read", title="One app", read_only=True)
async def fazt_app_info(ctx: Context, name: AppName) -> dict[str, Any]:
    """One app: its current release, domains, fazt.toml settings, env keys (never values), its releases."""
    return app_info(deps_of(ctx), name)


@tool("fazt_app_releases", scope="read", title="An app's releases", read_only=True)
async def fazt_app_releases(ctx: Context, name: AppName) -> dict[str, Any]:
    """An app's kept releases, newest first: number, time, files, size, status (live, replaced, failed)."""
    from ..apps.deploy import releases

    return {"app": name, "releases": releases(deps_of(ctx).rt, name)}


@tool("fazt_app_logs", scope="read", title="An app's logs", read_only=True)
async def fazt_app_logs(ctx: Context, name: AppName,
                        limit: Annotated[int, Field(ge=1, le=1000, description="at most this many (newest)")] = 100,
                        ) -> dict[str, Any]:
    """What the app's serverless code logged (console.*, fazt.log.*) and its errors and timeouts, oldest first."""
    from ..apps.deploy import logs

    return {"app": name, "logs": logs(deps_of(ctx).rt, name, limit)}


@tool("fazt_deploy", scope="operate", title="Deploy an app", read_only=False, idempotent=False)
async def fazt_deploy(
        ctx: Context, app_name: AppName,
        files: Annotated[dict[str, str], Field(description="the app's files: {relative path: text content}; "
                                                           "api/main.js for serverless code, fazt.toml for settings")],
        binary_files: Annotated[dict[str, str] | None, Field(
            description="files that are not UTF-8 text (images, fonts): {relative path: base64 content}")] = None,
) -> dict[str, Any]:
    """Deploy the files as a new release of the app (created if new). The release is switched atomically
    and health-checked; a failing release is rolled back by itself (`rolled_back` in the answer)."""
    from ..apps import bundle
    from ..apps.deploy import deploy
    from ..event_types import AppDeployRefused

    deps = deps_of(ctx)
    section = deps.rt.config.file.apps
    source = caller(deps).by
    try:
        contents = {p: c.encode("utf-8") for p, c in files.items()}
        for path, encoded in (binary_files or {}).items():
            if path in contents:
                raise bundle.BundleError(f"{path!r} is in both files and binary_files")
            try:
                contents[path] = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise bundle.BundleError(f"binary_files[{path!r}] is not base64") from None
        b = bundle.from_files(contents, max_files=section.max_files, max_bytes=section.max_upload)
    except bundle.BundleError as e:
        await deps.rt.events.emit("app.deploy_refused", AppDeployRefused(app=app_name, reason=str(e), source=source),
                                  source="apps")
        raise
    return await deploy(deps.rt, app_name, b, source)


@tool("fazt_app_rollback", scope="operate", title="Roll an app back", read_only=False, idempotent=False)
async def fazt_app_rollback(
        ctx: Context, name: AppName,
        to: Annotated[int | None, Field(ge=1, le=2**31, description="the release number; default: the last good one")]
        = None,
) -> dict[str, Any]:
    """Make an earlier release of the app current again (one transaction; reversible by another rollback)."""
    from ..apps.deploy import rollback

    deps = deps_of(ctx)
    return await rollback(deps.rt, name, to, f"requested over MCP by {caller(deps).name}")


@tool("fazt_app_delete", scope="operate", title="Delete an app", read_only=False, destructive=True, idempotent=False)
async def fazt_app_delete(ctx: Context, name: AppName) -> dict[str, Any]:
    """Propose deleting the app with all its releases and data. It goes through the policy gate as the
    destructive action `app.delete`: it never runs without the owner's approval (a halt is opened;
    its id is returned)."""
    from ..decide.rules import Proposal

    deps = deps_of(ctx)
    who = caller(deps)
    d = await deps.engine.gate(Proposal("app.delete", {"app": name}, None, "manual", f"requested over MCP by {who.name}"),
                               incident=None, trigger="manual", requested_by=who.by)
    return {"verdict": d.verdict, "reason": d.reason, "plan": d.plan, "halt_id": d.halt_id, "outcome": d.outcome}


def register_resources(server: Any, deps: Any) -> None:
    """`fazt://apps` and `fazt://apps/{name}`."""

    @server.resource("fazt://apps", name="apps", description="The deployed apps and their current releases.",
                     mime_type="application/json")
    async def apps() -> str:
        return json.dumps(apps_list(deps), indent=2, default=str)

    @server.resource("fazt://apps/{name}", name="app", description="One app: current release, settings, releases.",
                     mime_type="application/json")
    async def app(name: str) -> str:
        return json.dumps(app_info(deps, name), indent=2, default=str)
