"""Deploy, roll back, delete: the store's steps, the health check, events and the owner's notice.

A deploy: blobs first (under the write lock), then the release inserted and made current in one
transaction, then the health check through the apps plane (the same ASGI app the daemon serves,
in this process): GET `/` must not fail (< 500; < 400 when no health path is declared) and the
release's declared `health` path must answer < 400. A failing release is rolled back to the one it
replaced, marked `failed`, recorded (`app.rolled_back`, automatic) and the owner is told.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..event_types import AppDeleted, AppDeployed, AppDeployRefused, AppEnvChanged, AppRolledBack
from .bundle import Bundle, check_name
from .store import AppError, AppStore, Release


def _store(rt: Any, create: bool = False) -> AppStore:
    return AppStore(rt.config.data_dir, create=create)


class ActionRuntime:
    """What these functions need from a Runtime, for a kernel action (which has no Runtime): the
    data dir, the [apps] settings last remembered in apps.db, the executor's notifier (and the
    event log it writes to, when it has one)."""

    def __init__(self, data_dir: Any, notifier: Any):
        from types import SimpleNamespace

        from ..config import AppsSection

        store = AppStore(data_dir, create=False)
        try:
            section = AppsSection.model_validate(store.remembered_settings())
        finally:
            store.close()
        self.config = SimpleNamespace(data_dir=data_dir, file=SimpleNamespace(apps=section))
        self.notifier = notifier
        # the executor's notifier is the outbox, which holds the event log: app.* events then too
        self.events = getattr(notifier, "events", None) or self

    async def emit(self, *args: Any, **kwargs: Any) -> None:
        return None


async def _notify(rt: Any, title: str, body: str, severity: str) -> None:
    from ..notify import Notifications

    if getattr(rt, "notifier", None) is not None:
        await rt.notifier.notify(title, body, severity=severity)
        return

    await Notifications(rt.store, rt.events, rt.clock, rt.config.file.notify.urls).notify(title, body, severity=severity)


async def health_check(rt: Any, name: str, settings: dict[str, Any]) -> str | None:
    """None when the current release of `name` is healthy, else why not."""
    import httpx

    from .server import plane_for

    section = rt.config.file.apps
    plane = plane_for(rt.config)
    host = f"{name}.{section.domain}"
    health = settings.get("health")
    probes = [("/", 500 if health else 400)] + ([(health, 400)] if health else [])
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=plane), base_url=f"http://{host}",
                                     timeout=section.health_timeout) as client:
            for path, limit in probes:
                try:
                    r = await asyncio.wait_for(client.get(path), section.health_timeout)
                except Exception as e:  # a crash of the app's code is a failed health check
                    return f"GET {path} failed: {type(e).__name__}: {e}"
                if r.status_code >= limit:
                    return f"GET {path} answered {r.status_code}"
        return None
    finally:
        await plane.aclose()


async def deploy(rt: Any, name: str, bundle: Bundle, source: str) -> dict[str, Any]:
    """Deploy `bundle` as a new release of `name`; returns what happened.

    Raises:
        AppError: refused (a domain taken by another app); recorded as `app.deploy_refused`.
    """
    check_name(name)
    section = rt.config.file.apps
    started = time.monotonic()
    store = _store(rt, create=True)
    try:
        if not isinstance(rt, ActionRuntime):
            store.remember_settings(section.model_dump())
        with store.write_lock():
            manifest: dict[str, list[Any]] = {}
            new = 0
            for path, content in bundle.files.items():
                digest, fresh = store.put_blob(content)
                manifest[path] = [digest, len(content)]
                new += fresh
            try:
                release, previous = store.commit_release(name, manifest, bundle.settings, source)
            except AppError as e:
                await rt.events.emit("app.deploy_refused", AppDeployRefused(app=name, reason=str(e), source=source),
                                     source="apps")
                raise
            await rt.events.emit("app.deployed", AppDeployed(
                app=name, release=release.number, previous=previous, files=release.files, bytes=release.bytes,
                new_blobs=new, duration_ms=round((time.monotonic() - started) * 1000, 1), source=source),
                source="apps")
            result: dict[str, Any] = {"app": name, "release": release.number, "previous": previous,
                                      "files": release.files, "bytes": release.bytes, "new_blobs": new,
                                      "url": f"http://{name}.{section.domain}/", "healthy": True, "rolled_back": False}
            problem = await health_check(rt, name, bundle.settings)
            if problem is not None:
                result.update(healthy=False, problem=problem)
                await _failed(rt, store, name, release, previous, problem, result)
            store.gc(section.keep_releases)
        result["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
        return result
    finally:
        store.close()


async def _failed(rt: Any, store: AppStore, name: str, release: Release, previous: int | None, problem: str,
                  result: dict[str, Any]) -> None:
    if previous is None:
        await _notify(rt, f"app {name}: release {release.number} is unhealthy",
                      f"The health check of {name} release {release.number} failed ({problem}) and there is no "
                      "earlier release to roll back to; it keeps serving.", "warning")
        return
    back = store.release_by_number(release.app_id, previous)
    store.switch(release.app_id, back, failed=release)
    reason = f"health check failed: {problem}"
    await rt.events.emit("app.rolled_back", AppRolledBack(app=name, from_release=release.number,
                                                          to_release=previous, reason=reason, automatic=True),
                         source="apps")
    await _notify(rt, f"app {name}: release {release.number} rolled back",
                  f"Release {release.number} of {name} failed its health check ({problem}); release {previous} "
                  "serves again.", "warning")
    result.update(rolled_back=True, serving=previous)


async def rollback(rt: Any, name: str, to: int | None, reason: str = "requested", *,
                   automatic: bool = False) -> dict[str, Any]:
    """Make release `to` (default: the newest earlier release that did not fail) current.

    Raises:
        AppError: no such app or release, or nothing to roll back to.
    """
    store = _store(rt)
    try:
        with store.write_lock():
            app = store.app(name)
            if app["current_release"] is None:
                raise AppError(f"app {name!r} has no current release")
            current = store.release(app["current_release"])
            if to is None:
                earlier = [r for r in store.releases(app["id"]) if r.number < current.number and r.status != "failed"]
                if not earlier:
                    raise AppError(f"app {name!r} has no earlier release to roll back to")
                target = earlier[0]
            else:
                target = store.release_by_number(app["id"], to)
                if target.id == current.id:
                    raise AppError(f"release {to} of {name!r} is already current")
            store.switch(app["id"], target)
            await rt.events.emit("app.rolled_back", AppRolledBack(
                app=name, from_release=current.number, to_release=target.number, reason=reason,
                automatic=automatic), source="apps")
            return {"app": name, "from_release": current.number, "to_release": target.number}
    finally:
        store.close()


async def delete(rt: Any, name: str) -> dict[str, Any]:
    """Delete the app, its releases and env; its blobs go unless another app shares them."""
    store = _store(rt)
    try:
        with store.write_lock():
            app = store.app(name)
            count = len(store.releases(app["id"]))
            store.delete(app["id"])
            for suffix in ("", "-wal", "-shm"):   # its kv and ds data
                (store.root / "data" / f"{app['id']}.db{suffix}").unlink(missing_ok=True)
            _, blobs = store.gc(rt.config.file.apps.keep_releases)
            await rt.events.emit("app.deleted", AppDeleted(app=name, releases=count), source="apps")
            return {"app": name, "releases": count, "blobs_removed": blobs}
    finally:
        store.close()


async def set_env(rt: Any, name: str, key: str, value: str | None) -> bool:
    store = _store(rt)
    try:
        changed = store.set_env(store.app(name)["id"], key, value)
        if changed:
            await rt.events.emit("app.env_changed", AppEnvChanged(app=name, key=key,
                                                                  change="unset" if value is None else "set"),
                                 source="apps")
        return changed
    finally:
        store.close()


def info(rt: Any, name: str) -> dict[str, Any]:
    store = _store(rt)
    try:
        return describe(store, store.app(name), rt.config.file.apps.domain)
    finally:
        store.close()


def describe(store: AppStore, app: Any, domain: str) -> dict[str, Any]:
    current = store.release(app["current_release"]) if app["current_release"] is not None else None
    releases = store.releases(app["id"])
    return {"name": app["name"], "id": app["id"], "created_at": app["created_at"],
            "url": f"http://{app['name']}.{domain}/", "domains": store.domains(app["id"]),
            "release": current.number if current else None,
            "deployed_at": current.created_at if current else None,
            "files": current.files if current else 0, "bytes": current.bytes if current else 0,
            "settings": current.settings if current else {}, "releases": len(releases),
            "serverless": bool(current and "api/main.js" in current.manifest),
            "env": sorted(store.env(app["id"]))}


def list_apps(rt: Any) -> list[dict[str, Any]]:
    from .store import has_apps

    if not has_apps(rt.config.data_dir):
        return []
    store = _store(rt)
    try:
        return [describe(store, a, rt.config.file.apps.domain) for a in store.apps()]
    finally:
        store.close()


def releases(rt: Any, name: str) -> list[dict[str, Any]]:
    store = _store(rt)
    try:
        app = store.app(name)
        return [r.to_json(r.id == app["current_release"]) for r in store.releases(app["id"])]
    finally:
        store.close()


def logs(rt: Any, name: str, limit: int) -> list[dict[str, Any]]:
    store = _store(rt)
    try:
        return store.logs(store.app(name)["id"], limit)
    finally:
        store.close()


def env(rt: Any, name: str) -> dict[str, str]:
    store = _store(rt)
    try:
        return store.env(store.app(name)["id"])
    finally:
        store.close()
