"""`fazt.app.kv` and `fazt.app.ds`: an app's own SQLite file, `DATA/apps/data/APP_ID.db`.

Runs in the JS worker process, one connection per request. Documents are JSON; queries are
matched in Python (`$eq $ne $gt $gte $lt $lte $in $nin $contains`, a bare value means `$eq`),
updates apply `$set $unset $inc` (a document without operators replaces the fields it names).
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires_at REAL);
CREATE TABLE IF NOT EXISTS docs (
    id TEXT NOT NULL, collection TEXT NOT NULL, seq INTEGER PRIMARY KEY AUTOINCREMENT, doc TEXT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS docs_id ON docs(collection, id);
"""
OPERATORS = {"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$contains"}


class DataError(Exception):
    """A bad call from the app's code (becomes a JS exception, never a Python one across the binding)."""


class AppData:
    def __init__(self, path: Path):
        self.path = path
        self._db: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.executescript(SCHEMA)
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- kv -------------------------------------------------------------------------------------

    def kv_set(self, key: str, value: Any, ttl_ms: Any = None) -> bool:
        _key(key)
        expires = None
        if ttl_ms is not None:
            if not isinstance(ttl_ms, (int, float)) or isinstance(ttl_ms, bool) or ttl_ms <= 0:
                raise DataError("kv.set: ttlMs must be a positive number")
            expires = time.time() + ttl_ms / 1000
        self.db.execute("INSERT INTO kv(key, value, expires_at) VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                        "value = excluded.value, expires_at = excluded.expires_at", (key, json.dumps(value), expires))
        return True

    def kv_get(self, key: str) -> Any:
        _key(key)
        row = self.db.execute("SELECT value FROM kv WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)",
                              (key, time.time())).fetchone()
        return None if row is None else json.loads(row[0])

    def kv_delete(self, key: str) -> bool:
        _key(key)
        return self.db.execute("DELETE FROM kv WHERE key = ?", (key,)).rowcount > 0

    def kv_list(self, prefix: str = "") -> list[dict[str, Any]]:
        if not isinstance(prefix, str):
            raise DataError("kv.list: the prefix must be a string")
        rows = self.db.execute("SELECT key, value FROM kv WHERE substr(key, 1, ?) = ? AND "
                               "(expires_at IS NULL OR expires_at > ?) ORDER BY key",
                               (len(prefix), prefix, time.time()))
        return [{"key": k, "value": json.loads(v)} for k, v in rows]

    # -- ds -------------------------------------------------------------------------------------

    def _docs(self, collection: str) -> list[dict[str, Any]]:
        _key(collection, "collection")
        return [json.loads(r[0]) for r in self.db.execute(
            "SELECT doc FROM docs WHERE collection = ? ORDER BY seq", (collection,))]

    def insert(self, collection: str, doc: Any) -> dict[str, Any]:
        _key(collection, "collection")
        if not isinstance(doc, dict):
            raise DataError("ds.insert: the document must be an object")
        doc = dict(doc)
        doc.setdefault("id", uuid.uuid4().hex[:16])
        try:
            self.db.execute("INSERT INTO docs(id, collection, doc) VALUES (?, ?, ?)",
                            (str(doc["id"]), collection, json.dumps(doc)))
        except sqlite3.IntegrityError:
            raise DataError(f"ds.insert: id {doc['id']!r} exists in {collection!r}") from None
        return doc

    def find(self, collection: str, query: Any = None, options: Any = None) -> list[dict[str, Any]]:
        docs = [d for d in self._docs(collection) if matches(d, query or {})]
        options = options or {}
        if not isinstance(options, dict):
            raise DataError("ds.find: options must be an object")
        order = options.get("order")
        if order:
            for field, desc in reversed(_order(order)):
                docs.sort(key=lambda d: _sort_key(d.get(field)), reverse=desc)
        offset = int(options.get("offset") or 0)
        limit = options.get("limit")
        return docs[offset:offset + int(limit)] if limit is not None else docs[offset:]

    def find_one(self, collection: str, query: Any = None) -> dict[str, Any] | None:
        found = self.find(collection, query, {"limit": 1})
        return found[0] if found else None

    def update(self, collection: str, query: Any, change: Any) -> int:
        if not isinstance(change, dict):
            raise DataError("ds.update: the update must be an object")
        count = 0
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for doc in self.find(collection, query):
                new = apply_update(doc, change)
                self.db.execute("UPDATE docs SET doc = ? WHERE collection = ? AND id = ?",
                                (json.dumps(new), collection, str(doc["id"])))
                count += 1
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return count

    def delete(self, collection: str, query: Any = None) -> int:
        ids = [str(d["id"]) for d in self.find(collection, query)]
        self.db.executemany("DELETE FROM docs WHERE collection = ? AND id = ?", [(collection, i) for i in ids])
        return len(ids)

    def count(self, collection: str, query: Any = None) -> int:
        return len(self.find(collection, query))


def _key(key: Any, what: str = "key") -> None:
    if not isinstance(key, str) or not key:
        raise DataError(f"the {what} must be a non-empty string")


def _order(order: Any) -> list[tuple[str, bool]]:
    """`"name"`, `"-name"`, `"name desc"`, `{"name": -1}` or a list of these."""
    if isinstance(order, dict):
        return [(k, v in (-1, "desc", "DESC")) for k, v in order.items()]
    if isinstance(order, list):
        return [o for item in order for o in _order(item)]
    if isinstance(order, str):
        parts = order.split()
        if len(parts) == 2:
            return [(parts[0], parts[1].lower() == "desc")]
        return [(order.lstrip("-"), order.startswith("-"))]
    raise DataError("ds.find: order must be a field name, '-field', 'field desc' or {field: 1|-1}")


def _sort_key(v: Any) -> tuple[int, Any]:
    if v is None:
        return (0, 0)
    if isinstance(v, bool):
        return (1, int(v))
    if isinstance(v, (int, float)):
        return (2, v)
    if isinstance(v, str):
        return (3, v)
    return (4, json.dumps(v, sort_keys=True))


def _get(doc: dict[str, Any], path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def matches(doc: dict[str, Any], query: Any) -> bool:
    if not isinstance(query, dict):
        raise DataError("a query must be an object")
    for field, cond in query.items():
        value = _get(doc, field)
        if isinstance(cond, dict) and cond and all(k.startswith("$") for k in cond):
            for op, arg in cond.items():
                if not _op(op, value, arg):
                    return False
        elif value != cond:
            return False
    return True


def _op(op: str, value: Any, arg: Any) -> bool:
    if op not in OPERATORS:
        raise DataError(f"unknown query operator {op!r} (use {', '.join(sorted(OPERATORS))})")
    if op == "$eq":
        return value == arg
    if op == "$ne":
        return value != arg
    if op in ("$in", "$nin"):
        if not isinstance(arg, list):
            raise DataError(f"{op} expects an array")
        return (value in arg) == (op == "$in")
    if op == "$contains":
        if isinstance(value, str):
            return isinstance(arg, str) and arg in value
        return isinstance(value, list) and arg in value
    if value is None or arg is None:
        return False
    try:
        return {"$gt": value > arg, "$gte": value >= arg, "$lt": value < arg, "$lte": value <= arg}[op]
    except TypeError:
        return False


def apply_update(doc: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    new = dict(doc)
    if not any(k.startswith("$") for k in change):
        new.update({k: v for k, v in change.items() if k != "id"})
        return new
    for op, fields in change.items():
        if op not in ("$set", "$unset", "$inc") or not isinstance(fields, dict):
            raise DataError(f"unknown update {op!r} (use $set, $unset, $inc with an object)")
        for field, v in fields.items():
            if field == "id":
                raise DataError("the id of a document cannot change")
            if op == "$set":
                new[field] = v
            elif op == "$unset":
                new.pop(field, None)
            else:
                if not isinstance(v, (int, float)) or isinstance(v, bool):
                    raise DataError("$inc expects numbers")
                current = new.get(field, 0)
                if not isinstance(current, (int, float)) or isinstance(current, bool):
                    raise DataError(f"$inc: {field!r} is not a number")
                new[field] = current + v
    return new
