"""Read queries that the Runtime and the CLI's light read path (`cli/_light.py`) both run: one
copy, in a module that imports nothing, so the light path needs neither pydantic nor asyncio to
read exactly what the Runtime reads."""

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
