"""The apps plane: a plain ASGI app serving each app's current release, routed by Host.

`NAME.<[apps] domain>` is app NAME; any other host is looked up among the custom domains the
current releases declare. A request resolves the app's current release once, then reads only
that release's immutable manifest and blobs: a deploy switching releases meanwhile never gives it
a mix. Route answers are cached until apps.db changes (`PRAGMA data_version`, one cheap read per
request); manifests are cached by release id (they never change); small blobs by digest.

Static files: content type by extension, a strong ETag (the content hash) with 304 on
`If-None-Match`, `index.html` for a directory, and with `spa = true` in the release's fazt.toml,
`index.html` for any path that is not a file.
"""

from __future__ import annotations

import mimetypes
from collections import OrderedDict
from pathlib import Path
from typing import Any, Awaitable, Callable

from .store import AppStore

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

BLOB_CACHE_BYTES = 16 * 1024 * 1024
BLOB_CACHE_MAX_FILE = 256 * 1024
CHUNK = 256 * 1024
TEXT_TYPES = ("text/", "application/javascript", "application/json", "image/svg+xml", "application/xml")


def content_type(path: str) -> str:
    guessed, _ = mimetypes.guess_type(path, strict=False)
    if path.endswith(".js") or path.endswith(".mjs"):
        guessed = "application/javascript"
    guessed = guessed or "application/octet-stream"
    return f"{guessed}; charset=utf-8" if guessed.startswith(TEXT_TYPES) else guessed


class AppsPlane:
    """The ASGI app. `domain` is `[apps] domain`."""

    def __init__(self, data_dir: Path, domain: str, *, timeout: float = 1.0, memory: int = 64 * 1024 * 1024,
                 workers: int = 2):
        self.data_dir = data_dir
        self.domain = domain.lower().strip(".")
        self.timeout, self.memory, self.workers = timeout, memory, workers
        self._env: dict[int, dict[str, str]] = {}
        self._api: dict[int, tuple[int, bytes, float]] = {}   # app id -> (release id, spec, deadline)
        self._store: AppStore | None = None
        self._data_version = -1
        self._routes: dict[str, tuple[int, str, int] | None] = {}
        self._manifests: dict[int, tuple[dict[str, list[Any]], dict[str, Any]]] = {}
        self._blobs: OrderedDict[str, bytes] = OrderedDict()
        self._blob_bytes = 0
        self.pool: Any = None   # the JS workers (js.JsPool), started by the first /api request

    @property
    def store(self) -> AppStore:
        if self._store is None:
            self._store = AppStore(self.data_dir)
        return self._store

    async def aclose(self) -> None:
        if self.pool is not None:
            await self.pool.aclose()
            self.pool = None
        self.close()

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    # -- routing ------------------------------------------------------------------------------

    def route(self, host: str) -> tuple[int, str, int] | None:
        """(app id, name, current release id) for a Host header value, or None."""
        version = self.store.db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:
            self._data_version, self._routes, self._env, self._api = version, {}, {}, {}
        if host in self._routes:
            return self._routes[host]
        name = host.rpartition(":")[0] if host.count(":") == 1 else host
        name = name.lower().rstrip(".")
        db = self.store.db
        row = None
        if name.endswith("." + self.domain) and "." not in name[:-len(self.domain) - 1]:
            row = db.execute("SELECT id, name, current_release FROM apps WHERE name = ?",
                             (name[:-len(self.domain) - 1],)).fetchone()
        if row is None:
            row = db.execute("SELECT a.id, a.name, a.current_release FROM domains d JOIN apps a ON a.id = d.app_id "
                             "WHERE d.domain = ?", (name,)).fetchone()
        found = None if row is None or row[2] is None else (row[0], row[1], row[2])
        if len(self._routes) > 10000:
            self._routes.clear()
        self._routes[host] = found
        return found

    def manifest(self, release_id: int) -> tuple[dict[str, list[Any]], dict[str, Any]]:
        cached = self._manifests.get(release_id)
        if cached is None:
            release = self.store.release(release_id)
            cached = self._manifests[release_id] = (release.manifest, release.settings)
        return cached

    # -- ASGI ---------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        found = self.route(headers.get("host", ""))
        if found is None and scope["path"] == DIRECTORY and _loopback(scope, headers.get("host", "")):
            await self.directory(send)
            return
        if found is None:
            await _text(send, 404, "no app at this host\n")
            return
        app_id, name, release_id = found
        manifest, settings = self.manifest(release_id)
        path = scope["path"]
        if (path == "/api" or path.startswith("/api/")) and "api/main.js" in manifest:
            await self.serve_api(scope, receive, send, app_id, name, release_id, manifest, settings, headers)
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _text(send, 405, "method not allowed\n", [(b"allow", b"GET, HEAD")])
            return
        await self.static(scope, send, manifest, settings, path, headers)

    async def static(self, scope: Scope, send: Send, manifest: dict[str, list[Any]], settings: dict[str, Any],
                     path: str, headers: dict[str, str]) -> None:
        rel = _lookup(manifest, path)
        if rel is None and settings.get("spa") and "index.html" in manifest:
            rel = "index.html"
        if rel is None:
            await _text(send, 404, "not found\n")
            return
        digest, size = manifest[rel]
        etag = f'"{digest[:32]}"'
        common = [(b"etag", etag.encode()), (b"cache-control", b"no-cache")]
        match = headers.get("if-none-match")
        if match is not None and (match.strip() == "*" or etag in [t.strip().removeprefix("W/") for t in match.split(",")]):
            await send({"type": "http.response.start", "status": 304, "headers": common})
            await send({"type": "http.response.body", "body": b""})
            return
        start = {"type": "http.response.start", "status": 200,
                 "headers": common + [(b"content-type", content_type(rel).encode()),
                                      (b"content-length", str(size).encode())]}
        head = scope["method"] == "HEAD"
        body = self._cached_blob(digest, size)
        if body is not None or head:
            await send(start)
            await send({"type": "http.response.body", "body": b"" if head else body})
            return
        with open(self.store.blob_path(digest), "rb") as f:
            await send(start)
            while chunk := f.read(CHUNK):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    async def serve_api(self, scope: Scope, receive: Receive, send: Send, app_id: int, name: str, release_id: int,
                        manifest: dict[str, list[Any]], settings: dict[str, Any], headers: dict[str, str]) -> None:
        """Run api/main.js for this request in a JS worker (see js.py, worker.py)."""
        from . import js

        body = await js.read_body(receive, js.MAX_BODY)
        if body is None:
            await _text(send, 413, "request body too large\n")
            return
        if self.pool is None:
            self.pool = js.JsPool(self.workers)
        spec, timeout = self._api_spec(app_id, name, release_id, manifest, settings)
        out = await self.pool.run(spec, js.encode_request(scope, headers, body), timeout)
        logs = out.get("logs")
        entries = [(e["level"], e["message"]) for e in logs] if logs else []
        if "error" in out:
            entries.append(("error", f"{scope['method']} {scope['path']}: {out['error']}"))
        if entries:
            self.store.add_logs(app_id, entries)
        status, out_headers, out_body = js.response(out)
        out_headers.append((b"content-length", str(len(out_body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": out_headers})
        await send({"type": "http.response.body", "body": out_body})

    def _api_spec(self, app_id: int, name: str, release_id: int, manifest: dict[str, list[Any]],
                  settings: dict[str, Any]) -> tuple[bytes, float]:
        """The app's side of a job line (files, env, data file, limits: js.JsPool.run) and its
        deadline, encoded once per release and kept until apps.db changes (its env with it), so a
        request only encodes its own part."""
        from . import js

        hit = self._api.get(app_id)
        if hit is not None and hit[0] == release_id:
            return hit[1], hit[2]
        files = {p: str(self.store.blob_path(h)) for p, (h, _) in manifest.items()
                 if p.startswith("api/") and p.endswith(".js")}
        env = self._env.get(app_id)
        if env is None:
            env = self._env[app_id] = self.store.env(app_id)
        spec = js.encode_spec({"app_id": app_id, "name": name, "files": files, "env": env, "memory": self.memory,
                               "data": str(self.store.root / "data" / f"{app_id}.db")})
        if len(self._api) > 1000:
            self._api.clear()
        timeout = float(settings.get("timeout", self.timeout))
        self._api[app_id] = (release_id, spec, timeout)
        return spec, timeout

    async def directory(self, send: Send) -> None:
        """The apps, their current release, deploy time and health path, for the `app` check
        (loopback clients only, and only at a host that is no app)."""
        import json

        rows = self.store.db.execute(
            "SELECT a.name, r.number, r.created_at, r.settings FROM apps a JOIN releases r ON r.id = a.current_release "
            "ORDER BY a.name").fetchall()
        body = json.dumps([{"name": n, "release": num, "deployed_at": at, "health": json.loads(s).get("health")}
                           for n, num, at, s in rows]).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def _cached_blob(self, digest: str, size: int) -> bytes | None:
        if size > BLOB_CACHE_MAX_FILE:
            return None
        body = self._blobs.get(digest)
        if body is not None:
            self._blobs.move_to_end(digest)
            return body
        body = self.store.blob_path(digest).read_bytes()
        self._blobs[digest] = body
        self._blob_bytes += len(body)
        while self._blob_bytes > BLOB_CACHE_BYTES:
            _, old = self._blobs.popitem(last=False)
            self._blob_bytes -= len(old)
        return body


def plane_for(config: Any) -> AppsPlane:
    """The apps plane of a loaded `Config` ([apps] settings)."""
    s = config.file.apps
    return AppsPlane(config.data_dir, s.domain, timeout=s.timeout, memory=s.memory, workers=s.workers)


DIRECTORY = "/.well-known/fazt-apps"


def _loopback(scope: Scope, host: str) -> bool:
    """A local client asking by address: behind a reverse proxy the client is loopback too, but
    the Host is then a domain, so the listing is never served to the outside."""
    import ipaddress

    client = scope.get("client")
    name = host.rsplit(":", 1)[0].strip("[]") if not host.startswith("[") else host[1:].split("]")[0]
    try:
        by_address = name == "localhost" or ipaddress.ip_address(name).is_loopback
    except ValueError:
        by_address = False
    return by_address and client is not None and ipaddress.ip_address(client[0]).is_loopback


def _lookup(manifest: dict[str, list[Any]], path: str) -> str | None:
    rel = path.lstrip("/")
    if any(part == ".." for part in rel.split("/")):
        return None
    if rel == "" or rel.endswith("/"):
        rel += "index.html"
    if rel in manifest:
        return rel
    if rel + "/index.html" in manifest:
        return rel + "/index.html"
    return None


async def _text(send: Send, status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), *(extra or [])]})
    await send({"type": "http.response.body", "body": body})
