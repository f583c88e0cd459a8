"""The autonomy level in force is never a surprise: `status`, `config check` and MCP say where it comes
from (config.toml, or an override set by whom and when), and an edit of config.toml's
`[agent] autonomy` takes effect in a running daemon, clears the override and is recorded."""

from __future__ import annotations

import json
import time
from functools import partial
from typing import Any

import _helpers
from _helpers import db_events, run_daemon, stop_daemon
from conftest import Ops

BROKEN = '[[checks]]\nname = "broken"\nkind = "command"\ncommand = ["/bin/sh", "-c", "echo CRITICAL - down; exit 2"]\n'


wait_until = partial(_helpers.wait_until, interval=0.1)


def status(ops: Ops) -> dict[str, Any]:
    shown = ops.cli("status", "--json")
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


def test_status_and_config_check_say_that_an_override_is_in_force_and_what_the_file_says(ops: Ops) -> None:
    ops.set_config("agent", "autonomy", "low")
    assert "autonomy   low (from config.toml)" in ops.cli("status").stdout
    assert "  autonomy: low (from config.toml)" in ops.cli("config", "check").stdout

    changed = ops.cli("autonomy", "high")
    assert changed.returncode == 0, changed.stderr
    assert "overrides config.toml's low" in changed.stdout

    data = status(ops)
    detail = data["autonomy_detail"]
    assert data["autonomy"] == "high"
    assert (detail["level"], detail["source"], detail["config"], detail["by"]) == ("high", "override", "low", "cli")
    summary = f"high (set by cli at {detail['at']}, overrides config.toml's low)"
    assert detail["summary"] == summary
    assert f"autonomy   {summary}" in ops.cli("status").stdout
    checked = ops.cli("config", "check")
    assert checked.returncode == 0, checked.stderr
    assert f"  autonomy: {summary}" in checked.stdout
    shown = ops.cli("autonomy")
    assert shown.stdout.strip() == "high" and summary in shown.stderr

    # setting the file's own level again clears the override
    assert "high → low (from config.toml)" in ops.cli("autonomy", "low").stdout
    assert status(ops)["autonomy_detail"]["source"] == "config"
    assert [e["note"] for e in db_events(ops, "autonomy.changed")] == [
        "overrides the config file's low until [agent] autonomy is edited there",
        "the config file's level again (the override is cleared)"]


def test_an_edit_of_the_config_files_autonomy_wins_over_the_override_even_without_a_daemon(ops: Ops) -> None:
    ops.set_config("agent", "autonomy", "low")
    assert ops.cli("autonomy", "high").returncode == 0
    ops.set_config("agent", "autonomy", "medium")
    data = status(ops)
    assert data["autonomy"] == "medium"
    assert data["autonomy_detail"]["source"] == "config"
    assert "autonomy   medium (from config.toml)" in ops.cli("status").stdout


def test_a_running_daemon_follows_edits_of_the_config_files_autonomy(ops: Ops) -> None:
    ops.set_config("pulse", "interval", "1s")
    ops.write_pulse("broken", BROKEN)
    ops.set_config("agent", "autonomy", "low")
    assert ops.cli("autonomy", "high").returncode == 0   # an override of low...
    ops.set_config("agent", "autonomy", "medium")         # ...that an edit made while stopped ends
    daemon = run_daemon(ops)
    try:
        wait_until("the stale override to be cleared at start", lambda: len(db_events(ops, "autonomy.changed")) == 2)
        at_start = db_events(ops, "autonomy.changed")[1]
        assert (at_start["old"], at_start["new"], at_start["by"]) == ("high", "medium", "config")
        assert "the override to high (set by cli at " in at_start["note"]
        wait_until("the first decision", lambda: len(db_events(ops, "decision.made")) == 1)

        assert ops.cli("autonomy", "high").returncode == 0   # an override while the daemon runs
        assert status(ops)["autonomy_detail"]["source"] == "override"
        wait_until("a decision at high", lambda: any(d["autonomy"] == "high" for d in db_events(ops, "decision.made")))

        ops.set_config("agent", "autonomy", "low")             # the owner edits the file
        wait_until("the edit to be followed", lambda: len(db_events(ops, "autonomy.changed")) == 4)
        edit = db_events(ops, "autonomy.changed")[3]
        assert (edit["old"], edit["new"], edit["by"]) == ("high", "low", "config")
        assert edit["note"].startswith("[agent] autonomy edited in the config file from medium to low; "
                                       "the override to high (set by cli at ")
        data = status(ops)
        assert data["autonomy"] == "low" and data["autonomy_detail"]["source"] == "config"
        wait_until("the open incident decided again at low",
                   lambda: db_events(ops, "decision.made")[-1]["autonomy"] == "low")
        assert db_events(ops, "decision.made")[-1]["trigger"] == "retry"

        good = ops.config.read_text()
        ops.config.write_text(good.replace('autonomy = "low"', 'autonomy = "high'))   # a broken edit: not TOML
        wait_until("the broken edit to be recorded", lambda: len(db_events(ops, "agent.alert")) == 1)
        alert = db_events(ops, "agent.alert")[0]
        assert "autonomy stays low" in alert["message"] and "invalid TOML" in alert["message"]
        assert alert["file"] == str(ops.config)
        time.sleep(2.5)   # another housekeeping round: recorded once, the daemon still runs
        assert daemon.poll() is None and len(db_events(ops, "agent.alert")) == 1

        ops.config.write_text(good.replace('autonomy = "low"', 'autonomy = "max"'))   # TOML, but no level
        wait_until("the unknown level to be recorded", lambda: len(db_events(ops, "agent.alert")) == 2)
        assert (f"{ops.config}:agent.autonomy: unknown autonomy level 'max'"
                in db_events(ops, "agent.alert")[1]["message"])
        assert daemon.poll() is None and len(db_events(ops, "autonomy.changed")) == 4

        ops.config.write_text(good.replace('autonomy = "low"', 'autonomy = "high"'))   # repaired
        wait_until("the repaired edit to be followed", lambda: len(db_events(ops, "autonomy.changed")) == 5)
        assert (db_events(ops, "autonomy.changed")[4]["old"],
                db_events(ops, "autonomy.changed")[4]["new"]) == ("low", "high")
        assert status(ops)["autonomy_detail"]["summary"] == "high (from config.toml)"
    finally:
        err = stop_daemon(daemon, check=False)
    assert daemon.returncode == 0, err
    assert "Traceback" not in err


def test_status_says_the_agent_is_paused_by_whom_and_since_when(ops: Ops) -> None:
    data = status(ops)
    assert (data["paused"], data["paused_by"], data["paused_at"]) == (False, None, None)
    assert "PAUSED" not in ops.cli("status").stdout
    assert ops.cli("pause").returncode == 0
    data = status(ops)
    assert data["paused"] is True and data["paused_by"] == "cli" and data["paused_at"]
    shown = ops.cli("status").stdout
    assert (f"paused     PAUSED by cli at {data['paused_at']}: observing and recording only, no action, halt or "
            "notification (fazt-agent resume)") in shown
    assert ops.cli("resume").returncode == 0
    assert status(ops)["paused"] is False and "PAUSED" not in ops.cli("status").stdout
