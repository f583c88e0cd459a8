"""A failed safe action is tried again while its incident stays open: with backoff, a bounded number
of attempts per incident, each attempt recorded, the owner told at the first failure and when the
retries are exhausted, not at every attempt. And each severity step (warning -> critical) is a new
decision at once, also while the incident waits for a retry or on a halt.

The "application" is a `command` check reading its status from a file (1 warning, 2 critical,
0 ok); its fix is an owner-declared `command` action that fails while a flag file exists (the
ACME server is unreachable) and otherwise sets the status to ok."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from _helpers import FakeClock, events, turn
from conftest import Ops
from fazt_agent.clock import parse_iso
from fazt_agent.config import load_config
from fazt_agent.engine import Engine
from fazt_agent.runtime import Runtime


@dataclass
class App:
    status: Path   # the check's exit status
    down: Path     # while this exists, the fix fails
    runs: Path     # one line per run of the fix

    @property
    def attempts(self) -> int:
        return len(self.runs.read_text().splitlines()) if self.runs.exists() else 0


def make_app(ops: Ops, tmp_path: Path, *, risk: str = "safe", backoff: str | None = None,
             attempts: int | None = None) -> App:
    app = App(tmp_path / "status", tmp_path / "acme-down", tmp_path / "runs")
    app.status.write_text("1")
    app.down.touch()
    fix = tmp_path / "fix.sh"
    fix.write_text(f'#!/bin/sh\necho run >> "{app.runs}"\n'
                   f'if [ -e "{app.down}" ]; then echo "cannot reach the ACME server" >&2; exit 1; fi\n'
                   f'echo 0 > "{app.status}"\n')
    fix.chmod(0o755)
    ops.write_pulse("app", '[[checks]]\nname = "app"\nkind = "command"\n'
                           f'command = ["/bin/sh", "-c", "s=$(cat {app.status}); echo app status $s; exit $s"]\n')
    (ops.dir / "kernel" / "local.toml").write_text(
        f'[[commands]]\nname = "fix-app"\nargv = ["{fix}"]\nrisk = "{risk}"\nreversible = true\n')
    (ops.dir / "policies" / "local.toml").write_text(
        '[[rules]]\nname = "fix-app"\nmatch = { check = ["app"] }\naction = "command"\nargs = { name = "fix-app" }\n')
    policy = ops.dir / "policies" / "default.toml"
    text = policy.read_text()
    if backoff is not None:
        text, n = re.subn(r"(?m)^retry_backoff = .*$", f"retry_backoff = {backoff}", text)
        assert n == 1
    if attempts is not None:
        text, n = re.subn(r"(?m)^retry_attempts = .*$", f"retry_attempts = {attempts}", text)
        assert n == 1
    policy.write_text(text)
    ops.set_config("agent", "autonomy", "medium")
    return app


def triggers(ops: Ops) -> list[str]:
    return [e["data"]["trigger"] for e in events(ops, "decision.made")]


def action_notices(ops: Ops) -> list[str]:
    return [e["data"]["title"] for e in events(ops, "notification.sent") if "run fix-app" in e["data"]["title"]]


def test_a_failed_safe_action_is_retried_until_its_attempts_are_spent_and_the_owner_hears_twice(
        ops: Ops, tmp_path: Path) -> None:
    app = make_app(ops, tmp_path, backoff='["0s"]', attempts=3)
    first = ops.cli("beat")
    assert app.attempts == 1
    assert "FAILED: run fix-app" in first.stderr and "I will try again in " in first.stderr
    assert "at most 2 more times" in first.stderr
    second = ops.cli("beat")
    assert app.attempts == 2 and "FAILED" not in second.stderr  # each attempt is an event, not a message
    third = ops.cli("beat")
    assert app.attempts == 3
    assert "FAILED: run fix-app" in third.stderr and "Gave up after 3 failed attempts" in third.stderr
    for _ in range(2):
        ops.cli("beat")
    assert app.attempts == 3  # bounded
    assert triggers(ops) == ["opened", "retry", "retry"]
    assert len(events(ops, "action.failed")) == 3
    scheduled = [e["data"] for e in events(ops, "action.retry_scheduled")]
    assert [(s["attempt"], s["max_attempts"]) for s in scheduled] == [(1, 3), (2, 3)]
    assert all("cannot reach the ACME server" in s["message"] and s["next_attempt_at"] for s in scheduled)
    [exhausted] = [e["data"] for e in events(ops, "action.retries_exhausted")]
    assert exhausted["attempt"] == 3 and exhausted["max_attempts"] == 3
    assert len(action_notices(ops)) == 2
    [incident] = json.loads(ops.cli("incidents", "list", "--json").stdout)
    assert incident["status"] == "open"


def test_a_retry_that_succeeds_is_done_and_the_incident_resolves(ops: Ops, tmp_path: Path) -> None:
    app = make_app(ops, tmp_path, backoff='["0s"]')
    ops.cli("beat")
    ops.cli("beat")
    app.down.unlink()  # the ACME server is back
    fixed = ops.cli("beat")
    assert app.attempts == 3
    assert "done: run fix-app" in fixed.stderr and "(after 2 failed attempts)" in fixed.stderr
    assert ops.cli("beat").returncode == 0
    assert len(events(ops, "incident.resolved")) == 1 and len(events(ops, "action.verified")) == 1
    assert action_notices(ops)[-1].endswith(f"done: run fix-app: {tmp_path / 'fix.sh'}")
    assert len(action_notices(ops)) == 2  # the first failure and the success


def test_a_retry_waits_for_its_backoff_but_a_worsening_is_decided_at_once(ops: Ops, tmp_path: Path) -> None:
    app = make_app(ops, tmp_path, backoff='["1h"]')
    ops.cli("beat")
    [scheduled] = [e["data"] for e in events(ops, "action.retry_scheduled")]
    failed_at = parse_iso(events(ops, "action.failed")[0]["ts"])
    assert abs(parse_iso(scheduled["next_attempt_at"]) - failed_at - timedelta(hours=1)) < timedelta(seconds=5)
    ops.cli("beat")
    assert app.attempts == 1  # not due yet
    app.status.write_text("2")  # warning -> critical while the retry waits
    ops.cli("beat")
    assert app.attempts == 2
    assert triggers(ops) == ["opened", "worsened"]


def test_a_worsening_while_a_halt_waits_asks_again_and_withdraws_the_older_halt(ops: Ops, tmp_path: Path) -> None:
    app = make_app(ops, tmp_path, risk="destructive")
    ops.cli("beat")
    [first] = json.loads(ops.cli("halts", "list", "--json").stdout)
    app.status.write_text("2")
    ops.cli("beat")
    assert triggers(ops) == ["opened", "worsened"]
    [second] = json.loads(ops.cli("halts", "list", "--json").stdout)
    assert second["id"] != first["id"]
    every = {h["id"]: h for h in json.loads(ops.cli("halts", "list", "--all", "--json").stdout)}
    assert every[first["id"]]["status"] == "cancelled"
    assert every[first["id"]]["note"] == f"superseded by halt #{second['id']} (the incident is critical now)"
    assert app.attempts == 0


# -- the default backoff, with a fake clock (from the real now) -----------------------------

async def test_the_default_backoff_is_5_15_60_minutes_then_4_hours_for_five_attempts(
        ops: Ops, tmp_path: Path) -> None:
    app = make_app(ops, tmp_path)  # the shipped [defaults]
    clock = FakeClock()
    rt = await Runtime.open(load_config(ops.config), clock=clock)
    try:
        engine = Engine(rt)
        await turn(engine)
        assert app.attempts == 1
        for attempt, wait in enumerate([5, 15, 60, 240], start=2):
            clock.advance(wait * 60 - 1)
            await turn(engine)
            assert app.attempts == attempt - 1, f"attempt {attempt} ran before its {wait} min wait"
            clock.advance(1)
            await turn(engine)
            assert app.attempts == attempt
        clock.advance(3 * 86400)
        await turn(engine)
        assert app.attempts == 5
        done = [e.data for e in await rt.events.list(type_glob="action.retr*", newest_first=False)]
        assert [(d["attempt"], "next_attempt_at" in d) for d in done] == [
            (1, True), (2, True), (3, True), (4, True), (5, False)]
    finally:
        await rt.close()
