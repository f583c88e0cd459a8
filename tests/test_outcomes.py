"""A result that changed nothing is never "done": approving a cleanup whose files are gone (or
changed) since the plan is `action.ineffective`, says so on the CLI (exit 1) and in the
notification, and leaves nothing to verify; a partial cleanup is done and counts what it skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _helpers import events, fill
from conftest import Ops


@pytest.fixture
def halt(ops: Ops, junk: Path) -> tuple[int, Path, list[Path]]:
    """A pending halt to delete 10 old files (40 KiB, destructive above 16 KB) under a watched root."""
    ops.set_config("agent", "autonomy", "medium")
    (ops.dir / "kernel" / "actions.toml").write_text('[cleanup]\ndestructive_above = "16KB"\n')
    files = fill(junk, 10)
    ops.cli("beat")
    [pending] = json.loads(ops.cli("halts", "list", "--json").stdout)
    assert pending["plan"]["summary"].startswith("delete 10 files")
    return pending["id"], junk, files


def test_approving_a_halt_whose_files_are_gone_is_nothing_done_not_done(ops: Ops, halt) -> None:
    halt_id, root, files = halt
    for f in files:
        f.unlink()
    approved = ops.cli("approve", str(halt_id))
    assert approved.returncode == 1, approved.stdout + approved.stderr
    assert approved.stdout.startswith(f"halt {halt_id}: approve; nothing done: ")
    assert "nothing deleted: all 10 planned files were skipped (10 gone since the plan)" in approved.stdout
    assert events(ops, "action.succeeded") == []
    [ineffective] = events(ops, "action.ineffective")
    assert ineffective["data"]["message"].startswith("nothing deleted: all 10 planned files were skipped")
    assert ineffective["data"]["details"]["freed_bytes"] == 0
    titles = [e["data"]["title"] for e in events(ops, "notification.sent")]
    assert any(t.endswith(f"nothing done: delete 10 files (40.0 KiB) older than 7d under {root}") for t in titles)
    assert not any(": done: " in t for t in titles)
    ops.cli("beat")  # the directory is empty now: the incident resolves by itself ...
    assert len(events(ops, "incident.resolved")) == 1
    assert events(ops, "action.verified") == []  # ... and no action is credited with it


def test_files_changed_since_the_plan_are_left_alone_and_the_answer_says_nothing_was_done(ops: Ops, halt) -> None:
    halt_id, root, files = halt
    fill(root, 10, size=4096)  # rewritten in place: same names, sizes and age, but not the planned files
    approved = ops.cli("approve", str(halt_id), "--json")
    assert approved.returncode == 1, approved.stderr
    result = json.loads(approved.stdout)
    assert result["executed"] is True and result["state"] == "ineffective"
    assert result["ok"] is False and result["changed"] is False
    assert result["message"] == "nothing deleted: all 10 planned files were skipped (10 changed since the plan)"
    assert all(f.exists() for f in files)
    assert [e["data"]["action_id"] for e in events(ops, "action.ineffective")] == [result["action_id"]]


def test_a_partial_cleanup_is_done_and_says_how_many_files_it_skipped(ops: Ops, halt) -> None:
    halt_id, root, files = halt
    for f in files[:4]:
        f.unlink()
    approved = ops.cli("approve", str(halt_id), "--json")
    assert approved.returncode == 0, approved.stdout + approved.stderr
    result = json.loads(approved.stdout)
    assert result["state"] == "succeeded" and result["ok"] is True and result["changed"] is True
    assert result["message"] == "freed 24.0 KiB (6 files); skipped 4"
    assert not any(f.exists() for f in files)
    assert len(events(ops, "action.succeeded")) == 1 and events(ops, "action.ineffective") == []
    assert ops.cli("beat").returncode == 0
    assert len(events(ops, "action.verified")) == 1
