"""Read queries that the Runtime and the CLI's light read path (`cli/_light.py`) both run: one
copy, in a module that imports nothing, so the light path needs neither pydantic nor asyncio to
read exactly what the Runtime reads."""

from __future__ import annotations

from typing import Any

# The newest result of each check target, by seeks in results_check_ts (check_name, target, ts):
# `checks` steps from one check name to the next, `pairs` from one target of a check to the next,
# and each pair's newest row is the last index entry of (check, target) (the later write when two
# share a time). Its cost grows with the number of check targets, not with the stored results.
LATEST = """
WITH RECURSIVE
  checks(c) AS (
    SELECT MIN(check_name) FROM results
    UNION ALL
    SELECT (SELECT MIN(check_name) FROM results WHERE check_name > checks.c) FROM checks WHERE c IS NOT NULL),
  pairs(c, t) AS (
    SELECT c, (SELECT MIN(target) FROM results WHERE check_name = checks.c) FROM checks WHERE c IS NOT NULL
    UNION ALL
    SELECT c, (SELECT MIN(target) FROM results WHERE check_name = pairs.c AND target > pairs.t)
    FROM pairs WHERE t IS NOT NULL)
SELECT r.* FROM pairs CROSS JOIN results AS r
  ON r.rowid = (SELECT rowid FROM results WHERE check_name = pairs.c AND target = pairs.t
                ORDER BY ts DESC, rowid DESC LIMIT 1)"""

# what the LLM spent since a time (`decide.budget.Budget.spent`, and `status` on the light path)
CALLS_SINCE = "SELECT COUNT(*) FROM llm_calls WHERE ts >= ?"
TOKENS_AND_USD_SINCE = ("SELECT COALESCE(SUM(input_tokens + output_tokens + cached_tokens), 0), "
                        "COALESCE(SUM(cost_usd), 0) FROM llm_calls WHERE ts >= ?")


RECENT = 10_000   # events listed by type are looked for first among this many newest ids


def events_select(where: list[str], params: list[Any], since: str | None = None, after_id: int | None = None,
                  incident_id: int | None = None, limit: int | None = None,
                  newest_first: bool = True) -> tuple[str, list[Any]]:
    """`SELECT * FROM events` with the conditions `where` (their `params`), and those of `since` (an
    ISO time), `after_id` and `incident_id`, ordered by id, at most `limit` rows."""
    where, params = list(where), list(params)
    if since is not None:
        where.append("ts >= ?")
        params.append(since)
    if after_id is not None:
        where.append("id > ?")
        params.append(after_id)
    if incident_id is not None:
        where.append("incident_id = ?")
        params.append(incident_id)
    sql = "SELECT * FROM events"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id " + ("DESC" if newest_first else "ASC")
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return sql, params


def events_listed(type_glob: str | None, limit: int | None, incident_id: int | None = None,
                  newest_first: bool = True) -> list[tuple[list[str], list[Any]]]:
    """The conditions `EventLog.list` tries, in order, for events of a type glob: the newest of a glob
    among the RECENT newest ids first (a range of ids, read until `limit` match), which holds them
    unless the type is rare; only when that found fewer than `limit`, the type index, whose matches
    are sorted by id (all of them: cheap for a rare type, not for `pulse.*` in a million events)."""
    tried: list[tuple[list[str], list[Any]]] = []
    if type_glob and newest_first and limit is not None and incident_id is None:
        tried.append((["+type GLOB ?", "id > (SELECT MAX(id) FROM events) - ?"], [type_glob, RECENT]))
    tried.append((["type GLOB ?"], [type_glob]) if type_glob else ([], []))
    return tried
