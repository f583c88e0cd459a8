"""One sample never decides: CPU measured since the last beat (no sampling sleep), `for = N`
confirmation before an incident opens, and flap control — all through the CLI, with a real
`command` check whose exit code a file controls."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from _helpers import events
from conftest import Ops

HOUR = 3600


class Plugin:
    """A Nagios-style plugin script that exits with the code written in its `code` file."""

    def __init__(self, folder: Path):
        self.code_file = folder / "code"
        self.path = folder / "plugin.sh"
        self.path.write_text('#!/bin/sh\ncode=$(cat "$(dirname "$0")/code")\necho "APP STATE $code"\nexit "$code"\n')
        self.path.chmod(0o755)
        self.set(0)

    def set(self, code: int) -> None:
        self.code_file.write_text(str(code))


@pytest.fixture
def plugin(tmp_path: Path) -> Plugin:
    return Plugin(tmp_path)


def command_check(ops: Ops, plugin: Plugin, extra: str = "") -> None:
    ops.write_pulse("app", f'[[checks]]\nname = "app"\nkind = "command"\ncommand = ["{plugin.path}"]\n{extra}')


def beat(ops: Ops) -> dict[str, Any]:
    result = ops.cli("beat", "--json")
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


def only_result(ops: Ops, check: str) -> dict[str, Any]:
    [result] = [r for r in beat(ops)["results"] if r["check"] == check]
    return result


def test_one_critical_beat_of_a_for_3_check_opens_nothing_and_sends_nothing_three_in_a_row_do(
        ops: Ops, plugin: Plugin) -> None:
    command_check(ops, plugin, "for = 3\n")
    plugin.set(2)
    first = only_result(ops, "app")
    assert first["status"] == "critical" and first["message"] == "APP STATE 2 (1 of 3 beats)"
    assert first["details"]["confirm"] == {"for": 3, "beats": 1, "confirmed": "ok"}
    assert events(ops, "incident.*") == [] and events(ops, "notification.*") == []
    status = ops.cli("status")
    assert "critical app app: APP STATE 2 (1 of 3 beats)" in status.stdout
    shown = ops.cli("pulse", "status")
    assert "APP STATE 2 (1 of 3 beats)" in shown.stdout and "1 pending" in shown.stdout

    plugin.set(0)  # the spike is over: the count starts again
    assert only_result(ops, "app")["status"] == "ok"
    plugin.set(2)
    assert only_result(ops, "app")["message"] == "APP STATE 2 (1 of 3 beats)"
    assert only_result(ops, "app")["message"] == "APP STATE 2 (2 of 3 beats)"
    assert events(ops, "incident.*") == [] and events(ops, "notification.*") == []

    third = only_result(ops, "app")
    assert third["message"] == "APP STATE 2" and third["details"]["confirm"]["confirmed"] == "critical"
    [opened] = events(ops, "incident.opened")
    assert opened["data"]["severity"] == "critical"
    assert len(events(ops, "notification.sent")) == 1
    assert "pending" not in ops.cli("pulse", "status").stdout


def test_an_incident_opens_at_the_severity_every_beat_reached_and_worsens_only_when_confirmed(
        ops: Ops, plugin: Plugin) -> None:
    command_check(ops, plugin, "for = 2\n")
    plugin.set(1)
    beat(ops)
    plugin.set(2)
    assert only_result(ops, "app")["message"] == "APP STATE 2 (1 of 2 beats)"
    [incident] = json.loads(ops.cli("incidents", "list", "--json").stdout)
    assert incident["severity"] == "warning"  # warning then critical: both beats reached warning
    plugin.set(2)
    beat(ops)
    [incident] = json.loads(ops.cli("incidents", "list", "--json").stdout)
    assert incident["severity"] == "critical"
    assert [e["data"]["previous"] for e in events(ops, "incident.updated")] == ["warning"]
    plugin.set(1)  # better counts at once
    beat(ops)
    [incident] = json.loads(ops.cli("incidents", "list", "--json").stdout)
    assert incident["severity"] == "warning"


def quiet_system(extra: str) -> str:
    """A system check that only its `extra` thresholds can make unhappy."""
    return ('[[checks]]\nname = "system"\nkind = "system"\ncpu_critical = 100.0\ncpu_warning = 100.0\n'
            "memory_critical = 100.0\nmemory_warning = 100.0\nswap_critical = 100.0\nswap_warning = 100.0\n"
            "load_per_core_critical = 100000.0\nload_per_core_warning = 100000.0\n" + extra)


def test_the_system_check_waits_three_beats_for_cpu_but_not_for_memory(ops: Ops) -> None:
    ops.write_pulse("system", quiet_system("").replace("cpu_critical = 100.0\ncpu_warning = 100.0\n",
                                                       "cpu_critical = 0.0\ncpu_warning = 0.0\n"))
    first = only_result(ops, "system")
    assert first["status"] == "critical" and first["message"].endswith("(1 of 3 beats)")
    assert first["message"].startswith("cpu ")
    assert only_result(ops, "system")["message"].endswith("(2 of 3 beats)")
    assert events(ops, "incident.opened") == []
    beat(ops)
    assert len(events(ops, "incident.opened")) == 1

    ops.write_pulse("system", quiet_system("").replace("memory_critical = 100.0\nmemory_warning = 100.0\n",
                                                       "memory_critical = 0.0\nmemory_warning = 0.0\n")
                    .replace('name = "system"', 'name = "memory"'))
    memory = only_result(ops, "memory")
    assert memory["status"] == "critical" and "memory " in memory["message"]
    assert "beats)" not in memory["message"] and "confirm" not in memory["details"]
    assert [e["data"]["check"] for e in events(ops, "incident.opened")] == ["system", "memory"]


def test_a_system_check_with_for_1_opens_on_the_first_busy_beat(ops: Ops) -> None:
    ops.write_pulse("system", quiet_system("for = 1\n").replace("cpu_critical = 100.0\ncpu_warning = 100.0\n",
                                                                "cpu_critical = 0.0\ncpu_warning = 0.0\n"))
    first = only_result(ops, "system")
    assert first["status"] == "critical" and "beats)" not in first["message"]
    assert len(events(ops, "incident.opened")) == 1


def test_beat_measures_cpu_over_the_time_since_the_last_beat(ops: Ops) -> None:
    ops.write_pulse("system", quiet_system(""))
    first = only_result(ops, "system")
    assert first["details"]["cpu_source"] == "load estimate"
    assert first["details"]["cpu_note"] == "no earlier sample"
    assert "cpu ~" in first["message"] and "(from load)" in first["message"]
    time.sleep(0.3)  # two beats this close still measure (a window under 0.2 s would not)
    second = only_result(ops, "system")
    assert second["details"]["cpu_source"] == "since the last beat"
    assert second["details"]["cpu_window_s"] > 0 and "cpu_note" not in second["details"]
    assert 0 <= second["metrics"]["cpu_percent"] <= 100
    assert second["message"].startswith("cpu ") and "(from load)" not in second["message"]
    # the counters of each beat are stored with its result, for the next `beat` process
    assert second["details"]["cpu_sample"]["total"] > first["details"]["cpu_sample"]["total"]

    with sqlite3.connect(ops.data_dir / "fazt-agent.db") as db:  # the last sample is a day old
        row = db.execute("SELECT rowid, details FROM results WHERE check_name = 'system' "
                         "ORDER BY beat_id DESC LIMIT 1").fetchone()
        details = json.loads(row[1])
        details["cpu_sample"]["at"] -= 24 * HOUR
        db.execute("UPDATE results SET details = ? WHERE rowid = ?", (json.dumps(details), row[0]))
    stale = only_result(ops, "system")
    assert stale["details"]["cpu_source"] == "load estimate"
    assert stale["details"]["cpu_note"].startswith("the earlier sample is ") and "old" in stale["details"]["cpu_note"]


def test_a_check_flipping_between_ok_and_critical_is_reported_once_as_flapping(ops: Ops, plugin: Plugin) -> None:
    command_check(ops, plugin, "flap_ok = 3\n")
    for i in range(6):  # critical, ok, critical, ok, critical (the 3rd incident in an hour), ok
        plugin.set(2 if i % 2 == 0 else 0)
        beat(ops)
    assert len(events(ops, "incident.opened")) == 3
    [flapping] = events(ops, "incident.flapping")
    assert flapping["data"]["openings"] == 3 and flapping["data"]["window_s"] == HOUR
    assert len(events(ops, "incident.resolved")) == 2  # the third is held open through the ok beat
    sent = len(events(ops, "notification.sent"))
    [decision] = [d for d in events(ops, "decision.made") if d["data"]["trigger"] == "flapping"]
    assert "opened 3 times in 1 h" in decision["data"]["reason"]
    assert "flapping" in ops.cli("incidents", "list").stdout

    for i in range(6):  # it keeps flipping: nothing new is opened, resolved or sent
        plugin.set(2 if i % 2 == 0 else 0)
        beat(ops)
    assert len(events(ops, "incident.opened")) == 3 and len(events(ops, "incident.resolved")) == 2
    assert len(events(ops, "notification.sent")) == sent
    [incident] = json.loads(ops.cli("incidents", "list", "--json").stdout)
    assert incident["status"] == "open" and incident["flapping_since"] is not None
    assert "flapping since" in ops.cli("incidents", "show", str(incident["id"])).stdout

    plugin.set(0)  # the last beat was ok; two more make the three in a row that resolve it
    beat(ops)
    assert json.loads(ops.cli("incidents", "list", "--json").stdout) != []
    beat(ops)
    assert json.loads(ops.cli("incidents", "list", "--json").stdout) == []
    assert len(events(ops, "incident.resolved")) == 3


def test_flap_control_can_be_turned_off_and_bad_values_are_refused(ops: Ops, plugin: Plugin) -> None:
    command_check(ops, plugin, "flap_count = 0\n")
    for i in range(6):
        plugin.set(2 if i % 2 == 0 else 0)
        beat(ops)
    assert len(events(ops, "incident.opened")) == 3 and len(events(ops, "incident.resolved")) == 3
    assert events(ops, "incident.flapping") == []

    command_check(ops, plugin, "for = 0\nflap_count = 1\n")
    checked = ops.cli("config", "check")
    assert checked.returncode == 2
    assert "app.toml:checks[0].for: Input should be greater than or equal to 1" in checked.stderr
    assert "app.toml:checks[0].flap_count: 1 would call every incident flapping" in checked.stderr


def test_a_beat_the_overloaded_agent_could_not_measure_does_not_count_toward_for_n(
        ops: Ops, plugin: Plugin) -> None:
    plugin.set(2)
    command_check(ops, plugin, "for = 3\ntimeout = \"1s\"\n")
    assert only_result(ops, "app")["message"] == "APP STATE 2 (1 of 3 beats)"
    # one slot, held by a slow check listed first: "app" waits past its 1 s timeout, not measured
    ops.set_config("pulse", "max_concurrency", 1)
    ops.write_pulse("app", '[[checks]]\nname = "hog"\nkind = "command"\ncommand = ["sleep", "2"]\ntimeout = "4s"\n\n'
                           f'[[checks]]\nname = "app"\nkind = "command"\ncommand = ["{plugin.path}"]\n'
                           'for = 3\ntimeout = "1s"\n')
    skipped = only_result(ops, "app")
    assert skipped["status"] == "unknown" and skipped["details"]["cause"] == "agent_overloaded", skipped
    command_check(ops, plugin, "for = 3\ntimeout = \"1s\"\n")
    # the unmeasured beat is no beat: neither a break in the streak nor one of its three
    assert only_result(ops, "app")["message"] == "APP STATE 2 (2 of 3 beats)"
    assert events(ops, "incident.*") == []
    third = only_result(ops, "app")
    assert third["message"] == "APP STATE 2" and third["details"]["confirm"]["confirmed"] == "critical"
    assert len(events(ops, "incident.opened")) == 1
