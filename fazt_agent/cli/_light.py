"""The light read path: `status`, `events list` and `halts list` with plain sqlite3, tomllib and json.

A command that only reads the store need not pay for pydantic (validating config.toml and every
definition file), asyncio and aiosqlite (the Runtime): ~150 ms of a ~200 ms process on a small
server. What it needs from the validated load is in the snapshot the last validated run wrote
(`_snapshot`): used only when every input of that load is byte for byte what it was then. The store
is read with the same queries as the Runtime's (the constants shared, or compared by
tests/test_import_budget.py) and printed by the same functions (`_bodies.print_*`).

`run` returns False, having printed nothing, whenever it cannot answer exactly as the validated path
would: no or a stale snapshot, a `${NAME}` in the config, `--server`, a `--since` that is not a
duration, a database that
is missing or of another schema version, a halt whose reminder or expiry is due (`halts list`
sends and expires them first), a plan row of an unknown form, any SQLite error. The validated path
then runs as before and writes a new snapshot. `approve`/`deny` never answer here: the answer, the
plan's re-check and run, the event and the hash chain are `Executor.answer`'s, in the running daemon
(`answer/local.py`, which they ask first) or in the command's own validated process.
"""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any, Callable

from .. import _snapshot
from .._autonomy import AUTONOMY_KEY, PAUSED_BY_SQL, PAUSED_KEY, Override, in_force
from .._ready_db import open_ready
from .._rows import halt_json
from .._sql import CALLS_SINCE, LATEST, TOKENS_AND_USD_SINCE, events_listed, events_select
from ..clock import iso, parse_iso
from ._common import state, warn_broken


class Declined(Exception):
    """The light path cannot answer exactly as the validated one: that one runs instead."""


def run(body: str, kwargs: dict[str, Any]) -> bool:
    """Run command `body` of `_bodies` here; False (nothing printed) leaves it to the validated path."""
    command = COMMANDS.get(body)
    if command is None or kwargs.get("server") is not None:
        return False
    try:
        observed = _snapshot.observe(state.config_path)
        facts = _snapshot.load(observed) if observed is not None else None
        if observed is None or facts is None:
            return False
        if bool(os.environ.get(facts["llm_key_env"])) != facts["llm_key_set"]:
            return False   # the key came or went: the LLM note (or its budget) changes
        db = open_ready(observed.data_dir)
        try:
            show = command(db, facts, observed, **{k: v for k, v in kwargs.items() if k != "server"})
        finally:
            db.close()
    except Exception:   # Declined, NotReady, a busy or broken database, a row or snapshot of an odd form: nothing
        return False    # is printed yet, and the validated path says what it always said about it
    if facts["broken"]:   # what runtime() says when a definition file did not load
        warn_broken(facts["broken"])
    show()
    return True


def _now() -> datetime:
    return datetime.now(timezone.utc)   # clock.SystemClock.now


# -- status ------------------------------------------------------------------------------------


def status(db: sqlite3.Connection, facts: dict[str, Any], observed: _snapshot.Observed,
           as_json: bool = False) -> Callable[[], None]:
    from ..status import assemble, horizon, with_spent
    from ._bodies import print_status

    rows = db.execute(LATEST + " WHERE r.ts >= ? ORDER BY r.check_name, r.target",
                      (iso(horizon(_now(), facts["interval"])),)).fetchall()
    configured = set(facts["checks"])
    results = [{"check": r["check_name"], "kind": r["kind"], "target": r["target"], "status": r["status"],
                "message": r["message"], "metrics": json.loads(r["metrics"]), "details": json.loads(r["details"]),
                "duration_ms": round(r["duration_ms"], 3)}   # CheckResult.to_json
               for r in rows if r["check_name"] in configured]
    last = db.execute("SELECT * FROM beats ORDER BY id DESC LIMIT 1").fetchone()
    source = str(observed.source) if observed.source else None
    autonomy = in_force(facts["autonomy"], source, Override.parse(_setting(db, AUTONOMY_KEY)))
    if _setting(db, PAUSED_KEY) != "1":
        pause = {"paused": False, "paused_by": None, "paused_at": None}
    else:
        row = db.execute(PAUSED_BY_SQL).fetchone()
        pause = {"paused": True, "paused_by": row["by"] if row else None, "paused_at": row["ts"] if row else None}
    config = SimpleNamespace(agent=SimpleNamespace(personality=facts["personality"]), source=observed.source,
                             data_dir=observed.data_dir)
    data = assemble(results=results, last=dict(last) if last else None, autonomy=autonomy, pause=pause,
                    checks=len(facts["checks"]), config=config, llm=with_spent(facts["llm"], _spent(db)),
                    warnings=facts["warnings"])
    return lambda: print_status(data, as_json)


def _spent(db: sqlite3.Connection) -> dict[str, float]:
    """decide.budget.Budget.spent: calls in the last hour; tokens and dollars in the last 24 hours."""
    now = _now()
    calls = db.execute(CALLS_SINCE, (iso(now - timedelta(hours=1)),)).fetchone()[0]
    tokens, usd = db.execute(TOKENS_AND_USD_SINCE, (iso(now - timedelta(days=1)),)).fetchone()
    return {"calls_per_hour": calls or 0, "tokens_per_day": tokens, "usd_per_day": usd}


def _setting(db: sqlite3.Connection, key: str) -> str | None:
    row = db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()   # Store.get_setting
    return row[0] if row else None


# -- events list -------------------------------------------------------------------------------


class Event(SimpleNamespace):
    """A row of `events` as `events.Event` shows it."""

    def to_json(self) -> dict[str, Any]:   # events.Event.to_json
        return {"id": self.id, "ts": iso(self.ts), "type": self.type, "source": self.source,
                "incident_id": self.incident_id, "data": self.data, "hash": self.hash}


def events_list(db: sqlite3.Connection, facts: dict[str, Any], observed: _snapshot.Observed,
                type_glob: str | None = None, since: str | None = None, limit: int = 50,
                as_json: bool = False) -> Callable[[], None]:
    from ._bodies import print_events

    cutoff = None
    if since is not None:
        from ..units import parse_duration

        try:   # as _bodies.since_delta; a bad duration is the validated path's to refuse
            cutoff = iso(_now() - timedelta(seconds=parse_duration(since)))
        except ValueError as e:
            raise Declined(str(e)) from None
    rows: list[sqlite3.Row] = []
    for where, params in events_listed(type_glob, limit):   # as EventLog.list
        rows = db.execute(*events_select(where, params, cutoff, limit=limit)).fetchall()
        if len(rows) >= limit:
            break
    events = [Event(id=r["id"], ts=parse_iso(r["ts"]), type=r["type"], source=r["source"],
                    incident_id=r["incident_id"], data=json.loads(r["data"]), hash=r["hash"]) for r in reversed(rows)]
    return lambda: print_events(events, as_json)


# -- halts list --------------------------------------------------------------------------------

PLAN_DEFAULTS = {"steps": [], "risk": "safe", "reversible": True, "deletes": False, "noop": False, "details": {}}
PLAN_KEYS = ("action", "args", "summary", *PLAN_DEFAULTS)   # kernel.base.Plan's fields, in order


class Halt(SimpleNamespace):
    """A row of `halts` as `halt.store.Halt` shows it."""

    def to_json(self) -> dict[str, Any]:   # halt.store.Halt.to_json
        return halt_json(self, self.plan_json)


def halts_list(db: sqlite3.Connection, facts: dict[str, Any], observed: _snapshot.Observed,
               all_: bool = False, as_json: bool = False) -> Callable[[], None]:
    from ._bodies import print_halts

    at = iso(_now())
    if db.execute("SELECT 1 FROM halts WHERE status = 'pending' AND (expires_at <= ? OR (reminded_at IS NULL"
                  " AND remind_at <= ?)) LIMIT 1", (at, at)).fetchone():
        raise Declined("a reminder or an expiry is due: Executor.sweep_halts sends it first")
    where, params = ("", []) if all_ else ("WHERE status = ?", ["pending"])   # HaltStore.list
    rows = db.execute(f"SELECT * FROM halts {where} ORDER BY id DESC LIMIT ?", [*params, 100]).fetchall()
    halts = [_halt(r) for r in rows]
    return lambda: print_halts(halts, all_, as_json)


def _halt(r: sqlite3.Row) -> Halt:
    """halt.store.halt_from_row, with the plan as Plan.from_json(...).to_json() gives it."""
    plan = json.loads(r["plan"])
    if not isinstance(plan, dict) or set(plan) - set(PLAN_KEYS) or not {"action", "args", "summary"} <= set(plan):
        raise Declined("a plan of a form kernel.base.Plan decides about")
    plan_json = {key: plan[key] if key in plan else PLAN_DEFAULTS[key] for key in PLAN_KEYS}

    def ts(value: str | None) -> datetime | None:
        return parse_iso(value) if value else None

    return Halt(id=r["id"], incident_id=r["incident_id"], rule=r["rule"], title=r["title"], body=r["body"],
                plan=SimpleNamespace(summary=plan["summary"]), plan_json=plan_json, options=json.loads(r["options"]),
                default_option=r["default_option"], status=r["status"], answer=r["answer"],
                answered_by=r["answered_by"], note=r["note"], created_at=parse_iso(r["created_at"]),
                expires_at=parse_iso(r["expires_at"]), remind_at=ts(r["remind_at"]),
                reminded_at=ts(r["reminded_at"]), answered_at=ts(r["answered_at"]),
                execution=r["execution"], action_id=r["action_id"], answered_via=r["answered_via"])


COMMANDS: dict[str, Callable[..., Callable[[], None]]] = {
    "status": status, "events_list": events_list, "halts_list": halts_list}
