"""The autonomy loop end to end, through the CLI, with real files: a cleanup root above its
dir_size threshold is notified, cleaned, or escalated depending on the autonomy level."""

from __future__ import annotations

import json
from pathlib import Path

from _helpers import events, fill
from conftest import Ops


def set_destructive_above(ops: Ops, size: str) -> None:
    (ops.dir / "kernel" / "actions.toml").write_text(f'[cleanup]\ndestructive_above = "{size}"\n')


def test_low_autonomy_notifies_and_deletes_nothing(ops: Ops, junk: Path) -> None:
    files = fill(junk, 10)
    beat = ops.cli("beat")
    assert beat.returncode == 1  # something is not ok
    assert all(f.exists() for f in files)
    decisions = events(ops, "decision.made")
    assert [d["data"]["verdict"] for d in decisions] == ["notify"]
    assert "autonomy is low" in decisions[0]["data"]["reason"]
    assert decisions[0]["data"]["plan"]["summary"].startswith("delete 10 files")
    sent = events(ops, "notification.sent")
    assert len(sent) == 1 and sent[0]["data"]["channel"] == "log"
    assert "junk" in beat.stderr and "delete 10 files" in beat.stderr  # the log channel shows the notice
    incidents = json.loads(ops.cli("incidents", "list", "--json").stdout)
    assert len(incidents) == 1 and incidents[0]["check"] == "junk" and incidents[0]["last_verdict"] == "notify"


def test_a_persisting_incident_is_decided_once_and_notified_once(ops: Ops, junk: Path) -> None:
    fill(junk, 10)
    for _ in range(3):
        ops.cli("beat")
    assert len(events(ops, "incident.opened")) == 1
    assert len(events(ops, "decision.made")) == 1
    assert len(events(ops, "notification.sent")) == 1
    shown = json.loads(ops.cli("incidents", "show", "1", "--json").stdout)
    assert shown["beats"] == 3 and shown["status"] == "open"


def test_medium_small_cleanup_runs_and_the_incident_resolves_on_the_next_beat(ops: Ops, junk: Path) -> None:
    ops.set_config("agent", "autonomy", "medium")
    old = fill(junk, 10)
    fresh = fill(junk, 2, age_days=0, prefix="new")
    ops.cli("beat")
    assert not any(f.exists() for f in old)
    assert all(f.exists() for f in fresh)  # younger than older_than = 7d
    assert junk.is_dir()
    done = events(ops, "action.succeeded")
    assert len(done) == 1 and done[0]["data"]["details"]["freed_bytes"] == 10 * 4096
    assert ops.cli("beat").returncode == 0
    assert len(events(ops, "incident.resolved")) == 1
    assert len(events(ops, "action.verified")) == 1


def test_medium_large_cleanup_asks_and_approval_deletes(ops: Ops, junk: Path) -> None:
    ops.set_config("agent", "autonomy", "medium")
    set_destructive_above(ops, "16KB")
    files = fill(junk, 10)
    ops.cli("beat")
    assert all(f.exists() for f in files)
    halts = json.loads(ops.cli("halts", "list", "--json").stdout)
    assert len(halts) == 1
    halt = halts[0]
    assert halt["status"] == "pending" and halt["options"] == ["approve", "deny"] and halt["default_option"] == "deny"
    assert halt["plan"]["risk"] == "destructive"
    shown = ops.cli("halts", "show", str(halt["id"]))
    assert "delete 10 files" in shown.stdout and f"fazt-agent approve {halt['id']}" in shown.stdout
    approved = ops.cli("approve", str(halt["id"]), "--note", "go ahead")
    assert approved.returncode == 0, approved.stderr
    assert "done" in approved.stdout
    assert not any(f.exists() for f in files)
    again = ops.cli("deny", str(halt["id"]))
    assert again.returncode == 1 and "already answered" in again.stderr
    assert ops.cli("beat").returncode == 0
    assert len(events(ops, "incident.resolved")) == 1


def test_deny_deletes_nothing(ops: Ops, junk: Path) -> None:
    ops.set_config("agent", "autonomy", "medium")
    set_destructive_above(ops, "16KB")
    files = fill(junk, 10)
    ops.cli("beat")
    halt_id = json.loads(ops.cli("halts", "list", "--json").stdout)[0]["id"]
    denied = ops.cli("deny", str(halt_id))
    assert denied.returncode == 0, denied.stderr
    assert all(f.exists() for f in files)
    assert events(ops, "halt.answered")[0]["data"]["option"] == "deny"
    assert events(ops, "action.*") == []


def test_an_approved_plan_that_grew_is_asked_again(ops: Ops, junk: Path) -> None:
    ops.set_config("agent", "autonomy", "medium")
    set_destructive_above(ops, "16KB")
    fill(junk, 10)
    ops.cli("beat")
    halt_id = json.loads(ops.cli("halts", "list", "--json").stdout)[0]["id"]
    more = fill(junk, 3, prefix="later")  # +30 % files since the plan was made
    result = ops.cli("approve", str(halt_id), "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["replanned"] is True and answer["executed"] is False
    assert all(f.exists() for f in more)
    pending = json.loads(ops.cli("halts", "list", "--json").stdout)
    assert [h["id"] for h in pending] == [answer["new_halt_id"]]
    assert "13 files" in pending[0]["plan"]["summary"]


def test_cleanup_outside_the_allowed_roots_is_refused(ops: Ops, junk: Path, tmp_path: Path) -> None:
    ops.set_config("agent", "autonomy", "high")
    outside = tmp_path / "precious"
    outside.mkdir()
    keep = fill(outside, 3)
    fill(junk, 2)
    (junk / "escape").symlink_to(outside)
    result = ops.cli("actions", "run", "cleanup", "--arg", f"root={outside}")
    assert result.returncode == 1
    assert "arguments refused" in result.stdout
    via_link = ops.cli("actions", "run", "cleanup", "--arg", f"root={junk / 'escape'}")
    assert via_link.returncode == 1 and "arguments refused" in via_link.stdout
    ran = ops.cli("actions", "run", "cleanup", "--arg", f"root={junk}", "--arg", "older_than=1d")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert all(f.exists() for f in keep)
    assert (junk / "escape").is_symlink()
    assert len(events(ops, "decision.rejected")) == 2


def test_actions_plan_changes_nothing_and_shows_the_verdict(ops: Ops, junk: Path) -> None:
    ops.set_config("agent", "autonomy", "medium")
    files = fill(junk, 4)
    result = ops.cli("actions", "plan", "cleanup", "--arg", f"root={junk}", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["verdict"] == "act" and data["plan"]["details"]["count"] == 4
    assert all(f.exists() for f in files)
    assert events(ops, "decision.*") == []


def test_policy_simulate_shows_plan_and_verdict_without_side_effects(ops: Ops, junk: Path, tmp_path: Path) -> None:
    fill(junk, 5)
    incident = tmp_path / "incident.json"
    incident.write_text(json.dumps({"check": "junk", "kind": "dir_size", "target": str(junk), "severity": "warning"}))
    verdicts = {}
    for level in ("low", "medium", "high"):
        result = ops.cli("policy", "simulate", "--incident", str(incident), "--autonomy", level, "--json")
        assert result.returncode == 0, result.stderr
        verdicts[level] = json.loads(result.stdout)["verdict"]
    assert verdicts == {"low": "notify", "medium": "act", "high": "act"}
    assert len(list(junk.iterdir())) == 5
    assert events(ops) == []


def test_policy_simulate_counts_what_already_ran_on_the_same_target(ops: Ops, junk: Path, tmp_path: Path) -> None:
    """The verdict the daemon would give now: a cleanup that ran on this target within the rule's
    cooldown holds the next one (notify), as the gate would."""
    incident = tmp_path / "incident.json"
    incident.write_text(json.dumps({"check": "junk", "kind": "dir_size", "target": str(junk), "severity": "warning"}))

    def simulate() -> dict:
        result = ops.cli("policy", "simulate", "--incident", str(incident), "--autonomy", "high", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    fill(junk, 10)
    assert simulate()["verdict"] == "act"
    assert ops.cli("autonomy", "high").returncode == 0
    ops.cli("beat")
    assert [a["data"]["action"] for a in events(ops, "action.started")] == ["cleanup"]
    fill(junk, 10, prefix="again")
    held = simulate()
    assert held["verdict"] == "notify" and "cooldown" in held["reason"], held
    assert len(list(junk.iterdir())) == 10 and len(events(ops, "action.started")) == 1


def test_policy_check_reports_file_and_key(ops: Ops) -> None:
    path = ops.dir / "policies" / "bad.toml"
    path.write_text('[[rules]]\nname = "x"\naction = "reboot"\n\n[[rules]]\nname = "y"\naction = "notify"\n'
                    'verdicts = { medium = "maybe" }\n')
    result = ops.cli("policy", "check")
    assert result.returncode == 2
    assert f"{path}:rules[1].verdicts.medium:" in result.stderr and "'act'" in result.stderr
    path.write_text('[[rules]]\nname = "x"\naction = "reboot"\n')
    result = ops.cli("policy", "check")
    assert result.returncode == 2
    assert f"{path}:rules[0].action: unknown action 'reboot'" in result.stderr
    assert ops.cli("config", "check").returncode == 2  # config check covers policies too


def test_policy_explain_lists_every_rule_per_level(ops: Ops) -> None:
    result = ops.cli("policy", "explain", "--json")
    assert result.returncode == 0, result.stderr
    rules = {r["rule"]: r for r in json.loads(result.stdout)}
    assert {"disk-pressure", "directory-pressure", "service-down", "probe-failing"} <= set(rules)
    levels = rules["directory-pressure"]["levels"]
    assert levels["low"] == {"safe": "notify", "destructive": "notify", "costly": "notify"}
    assert levels["medium"] == {"safe": "act", "destructive": "ask", "costly": "ask"}
    assert levels["high"] == {"safe": "act", "destructive": "ask", "costly": "ask"}


def test_autonomy_is_persisted_and_recorded(ops: Ops) -> None:
    assert ops.cli("autonomy").stdout.strip() == "low"
    assert ops.cli("autonomy", "high").returncode == 0
    assert ops.cli("autonomy").stdout.strip() == "high"
    changed = events(ops, "autonomy.changed")
    assert changed[0]["data"] == {"old": "low", "new": "high", "by": "cli",
                                  "note": "overrides the config file's low until [agent] autonomy is edited there"}
    bad = ops.cli("autonomy", "max")
    assert bad.returncode == 2 and "accepted: low, medium, high" in bad.stderr


def test_paused_agent_records_but_does_not_act(ops: Ops, junk: Path) -> None:
    ops.set_config("agent", "autonomy", "medium")
    files = fill(junk, 5)
    assert ops.cli("pause").returncode == 0
    ops.cli("beat")
    assert all(f.exists() for f in files)
    decision = events(ops, "decision.made")[0]["data"]
    assert decision["paused"] is True and decision["verdict"] == "act"
    assert events(ops, "notification.*") == []
    assert ops.cli("resume").returncode == 0
    ops.cli("beat")
    assert not any(f.exists() for f in files)


def test_process_down_restarts_its_service_with_the_owner_command(ops: Ops, tmp_path: Path) -> None:
    ops.set_config("agent", "autonomy", "medium")
    record = tmp_path / "restarted"
    script = tmp_path / "restart.sh"
    script.write_text(f'#!/bin/sh\necho "$@" > {record}\n')
    script.chmod(0o755)
    (ops.dir / "kernel" / "actions.toml").write_text(f'[service]\nrestart_command = ["{script}", "{{unit}}"]\n')
    (ops.dir / "policies" / "local.toml").write_text('[constraints]\nservice_units = ["ghost*.service"]\n')
    ops.write_pulse("ghost", '[[checks]]\nname = "ghost"\nkind = "process"\nprocess = "ghostd-not-running"\n'
                             'service = "ghostd.service"\n')
    ops.cli("beat")
    assert record.read_text().strip() == "ghostd.service"
    assert events(ops, "action.succeeded")[0]["data"]["summary"] == "restart ghostd.service"


def test_a_rule_that_lacks_a_value_notifies_with_the_reason(ops: Ops) -> None:
    ops.set_config("agent", "autonomy", "medium")
    ops.write_pulse("ghost", '[[checks]]\nname = "ghost"\nkind = "process"\nprocess = "ghostd-not-running"\n')
    ops.cli("beat")
    decision = events(ops, "decision.made")[0]["data"]
    assert decision["verdict"] == "notify" and "no value for {service}" in decision["reason"]
