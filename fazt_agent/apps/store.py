"""Apps, releases and env in `DATA/apps/apps.db`; file contents by SHA-256 in `DATA/apps/blobs/`.

A release is immutable: a manifest `{path: [sha256, size]}` whose blobs are written (tmp file,
rename) *before* the release row exists. Making a release current is one UPDATE in the same
transaction that inserts it, so a reader sees the old or the new manifest, never a mix, and a
process killed at any point leaves the previous release serving (blobs written by a killed deploy
are unreferenced and removed by the next `gc`).

Writers (deploy, rollback, delete, gc) also hold `apps/write.lock` (flock, released by the kernel
when a process dies), so `gc` never removes the blobs of a deploy that has not committed yet.

This is a database of its own rather than tables in the agent's store: the daemon can tell
whether any app exists without opening it (the file is created by the first deploy), and the
apps plane reads it with plain sqlite3 on its own connection.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..clock import iso
from ..errors import FaztAgentError
from datetime import datetime, timezone

SCHEMA = [
    """
    CREATE TABLE apps (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        name            TEXT NOT NULL UNIQUE,
        created_at      TEXT NOT NULL,
        current_release INTEGER
    );
    CREATE TABLE releases (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        app_id     INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        number     INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        files      INTEGER NOT NULL,
        bytes      INTEGER NOT NULL,
        manifest   TEXT NOT NULL,
        settings   TEXT NOT NULL,
        status     TEXT NOT NULL,
        source     TEXT NOT NULL,
        UNIQUE(app_id, number)
    );
    CREATE TABLE domains (
        domain TEXT PRIMARY KEY,
        app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE
    );
    CREATE TABLE env (
        app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        key    TEXT NOT NULL,
        value  TEXT NOT NULL,
        PRIMARY KEY(app_id, key)
    )
    """,
    """
    CREATE TABLE logs (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        app_id  INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        ts      TEXT NOT NULL,
        level   TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX logs_app ON logs(app_id, id)
    """,
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )
    """,
]
LOGS_KEPT = 1000   # per app


class AppError(FaztAgentError):
    """An app operation that cannot be done (unknown app, no such release, a taken domain)."""


def apps_dir(data_dir: Path) -> Path:
    return data_dir / "apps"


def has_apps(data_dir: Path) -> bool:
    """Whether any app was ever deployed here (no import, no open: the file exists)."""
    return (apps_dir(data_dir) / "apps.db").exists()


def now_iso() -> str:
    return iso(datetime.now(timezone.utc))


@dataclass(frozen=True)
class Release:
    id: int
    app_id: int
    number: int
    created_at: str
    files: int
    bytes: int
    manifest: dict[str, list[Any]]
    settings: dict[str, Any]
    status: str
    source: str

    def to_json(self, current: bool) -> dict[str, Any]:
        return {"number": self.number, "created_at": self.created_at, "files": self.files, "bytes": self.bytes,
                "status": self.status, "source": self.source, "current": current, "settings": self.settings}


class AppStore:
    """One connection to apps.db (not shared between threads)."""

    def __init__(self, data_dir: Path, *, create: bool = True):
        self.root = apps_dir(data_dir)
        self.blobs = self.root / "blobs"
        path = self.root / "apps.db"
        if create:
            self.blobs.mkdir(parents=True, exist_ok=True)
            (self.root / "tmp").mkdir(exist_ok=True)
        elif not path.exists():
            raise AppError("no apps deployed yet")
        self.db = sqlite3.connect(path, isolation_level=None, timeout=10.0, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA busy_timeout = 10000")
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.db.execute("PRAGMA foreign_keys = ON")
        self._migrate()

    def close(self) -> None:
        self.db.close()

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version >= len(SCHEMA):
            return
        with self.transaction():
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(SCHEMA[version:], start=version + 1):
                for statement in (s.strip() for s in script.split(";\n")):
                    if statement:
                        self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {number}")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        else:
            self.db.execute("COMMIT")

    @contextlib.contextmanager
    def write_lock(self) -> Iterator[None]:
        """Serialise writers across processes; the kernel drops it if the holder dies."""
        with open(self.root / "write.lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # -- blobs --------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.blobs / digest[:2] / digest

    def put_blob(self, content: bytes) -> tuple[str, bool]:
        """Store `content` under its SHA-256; returns (digest, newly written)."""
        digest = hashlib.sha256(content).hexdigest()
        path = self.blob_path(digest)
        if path.exists():
            return digest, False
        path.parent.mkdir(exist_ok=True)
        tmp = self.root / "tmp" / f"{digest}.{os.getpid()}"
        tmp.write_bytes(content)
        os.replace(tmp, path)
        return digest, True

    def gc(self, keep: int) -> tuple[int, int]:
        """Drop releases beyond the last `keep` of each app (never the current one) and the blobs
        no release references; returns (releases, blobs) removed. Call under `write_lock`."""
        with self.transaction() as db:
            cur = db.execute(
                "DELETE FROM releases WHERE id IN (SELECT r.id FROM releases r JOIN apps a ON a.id = r.app_id "
                "WHERE r.id IS NOT a.current_release AND (SELECT COUNT(*) FROM releases n WHERE n.app_id = r.app_id "
                "AND n.number > r.number) >= ?)", (keep,))
            dropped = cur.rowcount
        used: set[str] = set()
        for row in self.db.execute("SELECT manifest FROM releases"):
            used.update(h for h, _ in json.loads(row[0]).values())
        removed = 0
        for sub in self.blobs.iterdir() if self.blobs.exists() else []:
            for blob in sub.iterdir():
                if blob.name not in used:
                    blob.unlink(missing_ok=True)
                    removed += 1
        for tmp in (self.root / "tmp").iterdir():
            tmp.unlink(missing_ok=True)
        return dropped, removed

    # -- reads --------------------------------------------------------------------------------

    def app(self, name: str) -> sqlite3.Row:
        row = self.db.execute("SELECT * FROM apps WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise AppError(f"no app named {name!r} (see `fazt-agent apps list`)")
        return row

    def apps(self) -> list[sqlite3.Row]:
        return list(self.db.execute("SELECT * FROM apps ORDER BY name"))

    def release(self, release_id: int) -> Release:
        row = self.db.execute("SELECT * FROM releases WHERE id = ?", (release_id,)).fetchone()
        if row is None:
            raise AppError(f"no release {release_id}")
        return _release(row)

    def releases(self, app_id: int) -> list[Release]:
        return [_release(r) for r in self.db.execute(
            "SELECT * FROM releases WHERE app_id = ? ORDER BY number DESC", (app_id,))]

    def release_by_number(self, app_id: int, number: int) -> Release:
        row = self.db.execute("SELECT * FROM releases WHERE app_id = ? AND number = ?", (app_id, number)).fetchone()
        if row is None:
            raise AppError(f"no release {number} of this app (see `fazt-agent apps releases`)")
        return _release(row)

    def env(self, app_id: int) -> dict[str, str]:
        return {r[0]: r[1] for r in self.db.execute("SELECT key, value FROM env WHERE app_id = ? ORDER BY key",
                                                     (app_id,))}

    def domains(self, app_id: int) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT domain FROM domains WHERE app_id = ? ORDER BY domain",
                                              (app_id,))]

    # -- writes -------------------------------------------------------------------------------

    def commit_release(self, name: str, manifest: dict[str, list[Any]], settings: dict[str, Any],
                       source: str) -> tuple[Release, int | None]:
        """Insert the release and make it current in one transaction; returns it and the number of
        the release it replaced (None for a new app).

        Raises:
            AppError: one of its custom domains belongs to another app (nothing changes).
        """
        with self.transaction() as db:
            row = db.execute("SELECT * FROM apps WHERE name = ?", (name,)).fetchone()
            if row is None:
                app_id = db.execute("INSERT INTO apps(name, created_at) VALUES (?, ?)", (name, now_iso())).lastrowid
                previous = None
            else:
                app_id = row["id"]
                previous = row["current_release"]
            number = db.execute("SELECT COALESCE(MAX(number), 0) + 1 FROM releases WHERE app_id = ?",
                                (app_id,)).fetchone()[0]
            size = sum(s for _, s in manifest.values())
            release_id = db.execute(
                "INSERT INTO releases(app_id, number, created_at, files, bytes, manifest, settings, status, source)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 'live', ?)",
                (app_id, number, now_iso(), len(manifest), size, json.dumps(manifest, separators=(",", ":")),
                 json.dumps(settings), source)).lastrowid
            self._switch(db, app_id, release_id, settings)
            prev_number = None
            if previous is not None:
                prev_number = db.execute("SELECT number FROM releases WHERE id = ?", (previous,)).fetchone()[0]
                db.execute("UPDATE releases SET status = 'replaced' WHERE id = ? AND status = 'live'", (previous,))
        assert release_id is not None
        return self.release(release_id), prev_number

    def switch(self, app_id: int, release: Release, *, failed: Release | None = None) -> None:
        """Make `release` current (a rollback); `failed`, when given, is marked failed."""
        with self.transaction() as db:
            current = db.execute("SELECT current_release FROM apps WHERE id = ?", (app_id,)).fetchone()[0]
            db.execute("UPDATE releases SET status = 'replaced' WHERE id = ? AND status = 'live'", (current,))
            if failed is not None:
                db.execute("UPDATE releases SET status = 'failed' WHERE id = ?", (failed.id,))
            db.execute("UPDATE releases SET status = 'live' WHERE id = ?", (release.id,))
            self._switch(db, app_id, release.id, release.settings)

    def _switch(self, db: sqlite3.Connection, app_id: int, release_id: int, settings: dict[str, Any]) -> None:
        db.execute("DELETE FROM domains WHERE app_id = ?", (app_id,))
        for domain in settings.get("domains", []):
            owner = db.execute("SELECT a.name FROM domains d JOIN apps a ON a.id = d.app_id WHERE d.domain = ?",
                               (domain,)).fetchone()
            if owner is not None:
                raise AppError(f"domain {domain!r} already belongs to app {owner[0]!r}")
            db.execute("INSERT INTO domains(domain, app_id) VALUES (?, ?)", (domain, app_id))
        db.execute("UPDATE apps SET current_release = ? WHERE id = ?", (release_id, app_id))

    def add_logs(self, app_id: int, entries: list[tuple[str, str]]) -> None:
        """Append an app's log lines (console.*, fazt.log.*, errors); keep the last LOGS_KEPT."""
        ts = now_iso()
        with self.transaction() as db:
            cur = db.executemany("INSERT INTO logs(app_id, ts, level, message) VALUES (?, ?, ?, ?)",
                                 [(app_id, ts, level, message) for level, message in entries])
            last = db.execute("SELECT MAX(id) FROM logs").fetchone()[0]
            if last % 100 < len(entries):   # now and then, not on every request
                db.execute("DELETE FROM logs WHERE app_id = ? AND id <= (SELECT id FROM logs WHERE app_id = ? "
                           "ORDER BY id DESC LIMIT 1 OFFSET ?)", (app_id, app_id, LOGS_KEPT))
            del cur

    def logs(self, app_id: int, limit: int) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT ts, level, message FROM logs WHERE app_id = ? ORDER BY id DESC LIMIT ?",
                               (app_id, limit)).fetchall()
        return [{"ts": r[0], "level": r[1], "message": r[2]} for r in reversed(rows)]

    def remember_settings(self, section: dict[str, Any]) -> None:
        """Keep the [apps] settings of the last process that had the config (kernel actions,
        which get no config, use them)."""
        value = json.dumps(section, sort_keys=True, default=str)
        self.db.execute("INSERT INTO meta(key, value) VALUES ('apps_settings', ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = excluded.value WHERE value != excluded.value", (value,))

    def remembered_settings(self) -> dict[str, Any]:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'apps_settings'").fetchone()
        return {} if row is None else json.loads(row[0])

    def delete(self, app_id: int) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM apps WHERE id = ?", (app_id,))

    def set_env(self, app_id: int, key: str, value: str | None) -> bool:
        """Set (or with None, unset) one variable; returns whether anything changed."""
        with self.transaction() as db:
            if value is None:
                return db.execute("DELETE FROM env WHERE app_id = ? AND key = ?", (app_id, key)).rowcount > 0
            db.execute("INSERT INTO env(app_id, key, value) VALUES (?, ?, ?) "
                       "ON CONFLICT(app_id, key) DO UPDATE SET value = excluded.value", (app_id, key, value))
            return True


def _release(row: sqlite3.Row) -> Release:
    return Release(row["id"], row["app_id"], row["number"], row["created_at"], row["files"], row["bytes"],
                   json.loads(row["manifest"]), json.loads(row["settings"]), row["status"], row["source"])
