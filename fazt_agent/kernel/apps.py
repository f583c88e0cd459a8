"""App actions (issue 13): `deploy` (safe, reversible), `app.rollback` (safe, reversible) and
`app.delete` (destructive, deletes: it always asks).

`app.rollback` with `within` rolls back only a release deployed less than that long ago: the
shipped policy uses it so that an app failing soon after a deploy goes back to the release that
worked, while an app failing long after its deploy is reported instead (its code is not the news).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import Field

from ..errors import ActionError
from ..units import Duration, format_duration, format_size
from .base import Action, ActionArgs, ActionContext, Outcome, Plan, action

APP_NAME = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"


class DeployArgs(ActionArgs):
    app: str = Field(pattern=APP_NAME)
    source: str = Field(min_length=1, max_length=4096)   # a directory or .zip on this server


class RollbackArgs(ActionArgs):
    app: str = Field(pattern=APP_NAME)
    to: int | None = Field(None, ge=1)
    within: Duration | None = None   # only a release deployed less than this long ago


class DeleteArgs(ActionArgs):
    app: str = Field(pattern=APP_NAME)


def _runtime(ctx: ActionContext) -> Any:
    from ..apps.deploy import ActionRuntime
    from ..apps.store import AppError, has_apps

    if ctx.data_dir is None or not has_apps(ctx.data_dir):
        raise ActionError("no apps deployed yet")
    try:
        return ActionRuntime(ctx.data_dir, ctx.notifier)
    except AppError as e:
        raise ActionError(str(e)) from None


def _store(ctx: ActionContext) -> Any:
    from ..apps.store import AppStore

    if ctx.data_dir is None:
        raise ActionError("no data dir")
    return AppStore(ctx.data_dir, create=False)


@action("deploy")
class Deploy(Action):
    description = "Deploy a directory or .zip on this server as a new release of an app (health-checked)."
    Args = DeployArgs
    timeout = 600.0

    async def plan(self, args: DeployArgs, ctx: ActionContext) -> Plan:  # type: ignore[override]
        from ..apps import bundle
        from ..apps.store import AppError, has_apps

        if ctx.data_dir is None:
            raise ActionError("no data dir")
        section = _section(ctx)
        try:
            b = bundle.read(Path(args.source), max_files=section.max_files, max_bytes=section.max_upload)
        except bundle.BundleError as e:
            raise ActionError(str(e)) from None
        current = None
        if has_apps(ctx.data_dir):
            store = _store(ctx)
            try:
                current = store.app(args.app)["current_release"]
            except AppError:
                pass
            finally:
                store.close()
        summary = f"deploy {args.source} as app {args.app} ({len(b.files)} files, {format_size(b.size)})"
        return Plan(action=self.name, args=args.model_dump(), summary=summary,
                    steps=[f"store {len(b.files)} files by content hash", "switch the current release in one transaction",
                           "health-check; roll back by itself if it fails"],
                    risk="safe", reversible=True, details={"files": len(b.files), "bytes": b.size,
                                                           "replaces_release_id": current})

    async def apply(self, plan: Plan, ctx: ActionContext) -> Outcome:
        from ..apps import bundle
        from ..apps.deploy import ActionRuntime, deploy

        section = _section(ctx)
        try:
            b = bundle.read(Path(plan.args["source"]), max_files=section.max_files, max_bytes=section.max_upload)
        except bundle.BundleError as e:
            raise ActionError(str(e)) from None
        assert ctx.data_dir is not None
        from ..apps.store import AppStore

        AppStore(ctx.data_dir).close()   # the first deploy creates apps.db
        result = await deploy(ActionRuntime(ctx.data_dir, ctx.notifier), plan.args["app"], b, plan.args["source"])
        if result["rolled_back"]:
            return Outcome(ok=False, message=f"release {result['release']} failed its health check "
                                             f"({result['problem']}); rolled back to release {result['serving']}",
                           details=result)
        return Outcome(ok=True, message=f"app {plan.args['app']}: release {result['release']} live", details=result)


@action("app.rollback")
class AppRollback(Action):
    description = "Make an earlier release of an app current again (default: the last good one)."
    Args = RollbackArgs
    timeout = 60.0

    async def plan(self, args: RollbackArgs, ctx: ActionContext) -> Plan:  # type: ignore[override]
        from ..apps.store import AppError

        _runtime(ctx)
        store = _store(ctx)
        try:
            app = store.app(args.app)
            if app["current_release"] is None:
                raise ActionError(f"app {args.app!r} has no current release")
            current = store.release(app["current_release"])
            earlier = [r for r in store.releases(app["id"]) if r.number < current.number and r.status != "failed"]
            target = store.release_by_number(app["id"], args.to) if args.to else (earlier[0] if earlier else None)
        except AppError as e:
            raise ActionError(str(e)) from None
        finally:
            store.close()
        base = dict(action=self.name, args=args.model_dump(), risk="safe", reversible=True)
        age = (ctx.clock.now() - datetime.fromisoformat(current.created_at.replace("Z", "+00:00"))).total_seconds()
        details = {"from_release": current.number, "deployed_s_ago": round(age, 1)}
        if target is None or target.number == current.number:
            return Plan(summary=f"app {args.app}: no earlier good release to roll back to", noop=True,
                        details=details, **base)  # type: ignore[arg-type]
        if args.within is not None and age > args.within:
            return Plan(summary=f"app {args.app}: release {current.number} has served for {format_duration(age)}, "
                                f"longer than {format_duration(args.within)}: not rolled back", noop=True,
                        details=details, **base)  # type: ignore[arg-type]
        return Plan(summary=f"roll app {args.app} back from release {current.number} to {target.number}",
                    steps=[f"make release {target.number} current (one transaction)"],
                    details={**details, "to_release": target.number}, **base)  # type: ignore[arg-type]

    async def apply(self, plan: Plan, ctx: ActionContext) -> Outcome:
        from ..apps.deploy import rollback
        from ..apps.store import AppError

        try:
            r = await rollback(_runtime(ctx), plan.args["app"], plan.details["to_release"], "kernel action app.rollback")
        except AppError as e:
            raise ActionError(str(e)) from None
        return Outcome(ok=True, message=f"app {r['app']}: release {r['to_release']} live again (was {r['from_release']})",
                       details=r)


@action("app.delete")
class AppDelete(Action):
    description = "Delete an app, all its releases and its data (always asks)."
    Args = DeleteArgs
    timeout = 120.0

    async def plan(self, args: DeleteArgs, ctx: ActionContext) -> Plan:  # type: ignore[override]
        from ..apps.store import AppError

        _runtime(ctx)
        store = _store(ctx)
        try:
            app = store.app(args.app)
            releases = store.releases(app["id"])
        except AppError as e:
            raise ActionError(str(e)) from None
        finally:
            store.close()
        return Plan(action=self.name, args=args.model_dump(),
                    summary=f"delete app {args.app} with its {len(releases)} releases and its data",
                    steps=[f"delete app {args.app}", "remove its kv/ds data", "remove blobs no other release uses"],
                    risk="destructive", reversible=False, deletes=True, details={"releases": len(releases)})

    async def apply(self, plan: Plan, ctx: ActionContext) -> Outcome:
        from ..apps.deploy import delete
        from ..apps.store import AppError

        try:
            r = await delete(_runtime(ctx), plan.args["app"])
        except AppError as e:
            raise ActionError(str(e)) from None
        return Outcome(ok=True, message=f"app {r['app']} deleted ({r['releases']} releases)", details=r)


def _section(ctx: ActionContext) -> Any:
    from ..apps.store import has_apps
    from ..config import AppsSection

    if ctx.data_dir is not None and has_apps(ctx.data_dir):
        from ..apps.store import AppStore

        store = AppStore(ctx.data_dir, create=False)
        try:
            return AppsSection.model_validate(store.remembered_settings())
        finally:
            store.close()
    return AppsSection()
