"""Audit of refused halt answers: an answer that does not count (given twice, after expiry, not one
of the halt's options, for a halt that does not exist) is refused with a clear message and leaves
a `halt.answer_refused` event naming the channel (`cli`, `mcp:TOKEN`) and the reason, on the CLI
as over MCP."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from _mcp import cleanup_args, destructive_junk, events, stdio_client
from conftest import Ops


def pending_halt(ops: Ops, tmp_path: Path) -> tuple[int, list[Path]]:
    """A cleanup halt opened by a beat at medium autonomy (the plan deletes more than 1 KB)."""
    root, files = destructive_junk(ops, tmp_path)
    ops.write_pulse("junk", f'[[checks]]\nname = "junk"\nkind = "dir_size"\npath = "{root}"\nwarning = "10KB"\n')
    ops.cli("beat")
    halts = json.loads(ops.cli("halts", "list", "--all", "--json").stdout)  # --all: a 1 s halt may be over
    assert len(halts) == 1, halts
    return halts[0]["id"], files


def refusals(ops: Ops) -> list[dict]:
    return [e["data"] for e in events(ops, "halt.answer_refused")]  # oldest first


def test_a_second_answer_is_refused_with_who_answered_first_and_recorded(ops: Ops, tmp_path: Path) -> None:
    halt_id, files = pending_halt(ops, tmp_path)
    assert ops.cli("deny", str(halt_id)).returncode == 0
    again = ops.cli("approve", str(halt_id))
    assert again.returncode == 1
    assert f"halt #{halt_id} was already answered 'deny' by cli" in again.stderr
    assert all(f.exists() for f in files)
    [refused] = refusals(ops)
    assert refused["halt_id"] == halt_id and refused["option"] == "approve" and refused["by"] == "cli"
    assert "already answered 'deny'" in refused["reason"]
    shown = events(ops, "halt.answer_refused")[0]
    assert shown["incident_id"] is not None  # found from the incident too (incidents show)


def test_an_answer_that_is_not_an_option_is_refused_and_the_halt_stays_pending(ops: Ops, tmp_path: Path) -> None:
    halt_id, files = pending_halt(ops, tmp_path)
    wrong = ops.cli("halts", "answer", str(halt_id), "maybe")
    assert wrong.returncode == 1
    assert "'maybe' is not an option" in wrong.stderr and "approve, deny" in wrong.stderr
    [refused] = refusals(ops)
    assert refused == {"halt_id": halt_id, "option": "maybe", "by": "cli", "channel": "cli", "reason": refused["reason"]}
    assert "'maybe' is not an option" in refused["reason"]
    assert [h["status"] for h in json.loads(ops.cli("halts", "list", "--json").stdout)] == ["pending"]
    assert ops.cli("deny", str(halt_id)).returncode == 0  # a valid answer still counts


def test_an_answer_to_a_halt_that_does_not_exist_is_refused_and_recorded(ops: Ops) -> None:
    missing = ops.cli("approve", "4242")
    assert missing.returncode == 1 and "there is no halt #4242" in missing.stderr
    assert refusals(ops) == [{"halt_id": 4242, "option": "approve", "by": "cli", "channel": "cli", "reason": "there is no halt #4242"}]


def test_an_answer_after_expiry_is_refused_and_the_default_stands(ops: Ops, tmp_path: Path) -> None:
    policy = ops.dir / "policies" / "default.toml"
    text, n = re.subn(r'(?m)^halt_expiry = "24h"', 'halt_expiry = "1s"', policy.read_text())
    assert n == 1
    policy.write_text(text)
    halt_id, files = pending_halt(ops, tmp_path)
    time.sleep(1.5)
    late = ops.cli("approve", str(halt_id))
    assert late.returncode == 1
    assert f"halt #{halt_id} expired at" in late.stderr and "'deny' was applied" in late.stderr
    assert all(f.exists() for f in files)
    [refused] = refusals(ops)
    assert refused["by"] == "cli" and refused["option"] == "approve" and "expired" in refused["reason"]
    assert events(ops, "action.*") == []


async def test_refused_answers_over_mcp_name_the_token_channel(ops: Ops, tmp_path: Path) -> None:
    root, files = destructive_junk(ops, tmp_path)
    async with stdio_client(ops) as client:
        opened = await client.call_tool("fazt_action_run", cleanup_args(root))
        halt_id = opened.structured_content["halt_id"]
        wrong = await client.call_tool("fazt_halt_answer", {"halt_id": halt_id, "option": "yes"})
        first = await client.call_tool("fazt_halt_answer", {"halt_id": halt_id, "option": "deny"})
        second = await client.call_tool("fazt_halt_answer", {"halt_id": halt_id, "option": "approve"})
    assert wrong.is_error and "'yes' is not an option" in str(wrong.content)
    assert not first.is_error and first.structured_content["halt"]["answer"] == "deny"
    assert second.is_error and "already answered 'deny' by mcp:stdio" in str(second.content)
    assert all(f.exists() for f in files)
    assert [(r["option"], r["by"]) for r in refusals(ops)] == [("yes", "mcp:stdio"), ("approve", "mcp:stdio")]
    assert "already answered" in refusals(ops)[1]["reason"]
