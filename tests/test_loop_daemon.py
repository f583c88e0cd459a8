"""The loop inside a real daemon: killed with SIGKILL during an apply, restarted, reconciled."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path

from _helpers import db_rows, run_daemon, stop_daemon, wait_until
from conftest import Ops


def event_types(ops: Ops) -> list[tuple[str, dict]]:
    return [(r["type"], json.loads(r["data"])) for r in db_rows(ops, "SELECT type, data FROM events ORDER BY id")]


def test_a_daemon_killed_during_apply_marks_the_action_interrupted_and_decides_afresh(ops: Ops, tmp_path: Path) -> None:
    pidfile = tmp_path / "slow.pid"
    slow = tmp_path / "slow.sh"
    slow.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 120\n")
    slow.chmod(0o755)
    (ops.dir / "kernel" / "actions.toml").write_text(
        f'[[commands]]\nname = "slow-fix"\nargv = ["{slow}"]\nrisk = "destructive"\nreversible = false\n'
        'timeout = "300s"\n')
    (ops.dir / "policies" / "local.toml").write_text(
        '[[rules]]\nname = "fix-broken"\nmatch = { check = ["broken"] }\naction = "command"\n'
        'args = { name = "slow-fix" }\n')
    ops.write_pulse("broken", '[[checks]]\nname = "broken"\nkind = "command"\ncommand = ["/bin/sh", "-c", "echo CRITICAL - down; exit 2"]\n')
    ops.set_config("agent", "autonomy", "high")  # destructive but deleting nothing: acts at high
    daemon = run_daemon(ops)
    try:
        wait_until("the slow action to start", pidfile.exists)
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        assert [t for t, _ in event_types(ops)].count("action.started") == 1
        assert ops.cli("autonomy", "medium").returncode == 0  # a fresh verdict at medium asks
        restarted = run_daemon(ops)
        try:
            wait_until("a halt after the restart", lambda: "halt.requested" in [t for t, _ in event_types(ops)])
        finally:
            err = stop_daemon(restarted, 10, check=False)
        assert restarted.returncode == 0, err
    finally:
        if daemon.poll() is None:
            daemon.kill()
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)  # the orphaned script of the killed daemon
            except ProcessLookupError:
                pass
    events = event_types(ops)
    types = [t for t, _ in events]
    assert types.count("action.started") == 1  # never re-run without a fresh verdict
    interrupted = [d for t, d in events if t == "action.interrupted"]
    assert len(interrupted) == 1 and "restart" in interrupted[0]["message"]
    decisions = [d for t, d in events if t == "decision.made"]
    assert [(d["trigger"], d["verdict"]) for d in decisions] == [("opened", "act"), ("interrupted", "ask")]
    with sqlite3.connect(ops.data_dir / "fazt-agent.db") as db:
        assert db.execute("SELECT state FROM actions").fetchall() == [("interrupted",)]
