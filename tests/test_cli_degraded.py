"""One broken definition file does not lock the owner out: commands that only read the store or
deny (status, halts, deny, the event log, MCP reads) work with a warning naming the file, while
whatever acts on the definitions (beat, approve, plans, policy explain, config check) refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _mcp import destructive_junk, stdio_client
from conftest import Ops

BROKEN_RULE = '[[rules]]\nname = "reboot-it"\naction = "reboot"\n'


def pending_halt(ops: Ops, tmp_path: Path) -> tuple[int, list[Path]]:
    """A halt asking to delete old files (medium autonomy, a destructive cleanup)."""
    root, files = destructive_junk(ops, tmp_path)
    ops.write_pulse("junk", f'[[checks]]\nname = "junk"\nkind = "dir_size"\npath = "{root}"\nwarning = "1KB"\n')
    assert ops.cli("beat").returncode == 1
    [halt] = json.loads(ops.cli("halts", "list", "--json").stdout)
    return halt["id"], files


def break_policy(ops: Ops) -> Path:
    """An edit the daemon would refuse (it keeps its last good policy): an unknown action."""
    path = ops.dir / "policies" / "zz-broken.toml"
    path.write_text(BROKEN_RULE)
    return path


def warned(stderr: str, where: str) -> bool:
    """One warning line naming FILE:KEY."""
    lines = [line for line in stderr.splitlines() if line.startswith("warning: ")]
    return len(lines) == 1 and where in lines[0] and "last good definitions" in lines[0]


def test_a_broken_policy_file_leaves_status_halts_deny_and_the_event_log_working(ops: Ops, tmp_path: Path) -> None:
    halt_id, files = pending_halt(ops, tmp_path)
    where = f"{break_policy(ops)}:rules[0].action: unknown action 'reboot'"

    status = ops.cli("status")
    assert status.returncode == 0, status.stderr
    assert "health" in status.stdout and warned(status.stderr, where)
    as_json = ops.cli("status", "--json")
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["checks"] == 1  # stdout stays pure JSON

    listed = ops.cli("halts", "list")
    assert listed.returncode == 0 and f"{halt_id:>5} pending" in listed.stdout and warned(listed.stderr, where)
    assert ops.cli("halts", "show", str(halt_id)).returncode == 0

    # approving runs the plan under the policy: refused, the halt stays pending, nothing deleted
    approved = ops.cli("approve", str(halt_id))
    assert approved.returncode == 2
    assert where in approved.stderr and f"approving halt {halt_id} needs valid definitions" in approved.stderr
    assert f"fazt-agent deny {halt_id}" in approved.stderr
    assert json.loads(ops.cli("halts", "list", "--json").stdout)[0]["status"] == "pending"
    assert all(f.exists() for f in files)

    denied = ops.cli("deny", str(halt_id), "--note", "not now")
    assert denied.returncode == 0, denied.stderr
    assert f"halt {halt_id}: deny" in denied.stdout and warned(denied.stderr, where)
    assert json.loads(ops.cli("halts", "list", "--all", "--json").stdout)[0]["answer"] == "deny"
    assert all(f.exists() for f in files)

    verified = ops.cli("events", "verify")
    assert verified.returncode == 0 and "chain intact" in verified.stdout and warned(verified.stderr, where)
    answered = json.loads(ops.cli("events", "list", "--type", "halt.answered", "--json").stdout)
    assert [e["data"]["option"] for e in answered] == ["deny"]


def test_commands_that_act_on_the_definitions_still_refuse_with_file_and_key(ops: Ops, tmp_path: Path) -> None:
    path = break_policy(ops)
    where = f"{path}:rules[0].action: unknown action 'reboot'"
    for args in (["config", "check"], ["beat"], ["policy", "explain"], ["actions", "plan", "cleanup"],
                 ["actions", "run", "cleanup"]):
        result = ops.cli(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert where in result.stderr, args
    assert ops.cli("events", "list", "--type", "action.*", "--json").stdout.strip() == "[]"


@pytest.mark.parametrize("broken", ["pulse", "kernel", "prompts"])
def test_a_broken_pulse_kernel_or_prompt_file_is_named_and_the_rest_still_loads(
        ops: Ops, tmp_path: Path, broken: str) -> None:
    (tmp_path / "scratch").mkdir()
    ops.write_pulse("calm", f'[[checks]]\nname = "scratch"\nkind = "dir_size"\npath = "{tmp_path / "scratch"}"\n')
    assert ops.cli("beat").returncode == 0
    if broken == "pulse":
        path, key = ops.write_pulse("zz-broken", '[[checks]]\nname = "oops"\nkind = "dsk"\n', only=False), "checks[0].kind"
    elif broken == "kernel":
        path, key = ops.dir / "kernel" / "zz-broken.toml", "cleanup.destructive_above"
        path.write_text('[cleanup]\ndestructive_above = "lots"\n')
    else:
        path, key = ops.dir / "prompts" / "decide.md", "{{whoami}}"
        path.write_text("Decide on {{incident}} {{whoami}}\n")

    status = ops.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    assert warned(status.stderr, f"{path}:{key}")
    assert json.loads(status.stdout)["checks"] == 1   # the valid pulse file's check is still there
    pulse = ops.cli("pulse", "status", "--json")
    assert pulse.returncode == 0 and [r["check"] for r in json.loads(pulse.stdout)] == ["scratch"]
    for args in (["incidents", "list"], ["decisions", "list"], ["events", "verify"], ["autonomy"]):
        result = ops.cli(*args)
        assert result.returncode == 0 and warned(result.stderr, f"{path}:{key}"), (args, result.stderr)
    checked = ops.cli("config", "check")
    assert checked.returncode == 2 and f"{path}:{key}" in checked.stderr


def test_pause_works_while_a_policy_file_is_broken(ops: Ops) -> None:
    break_policy(ops)
    paused = ops.cli("pause")
    assert paused.returncode == 0 and "paused" in paused.stdout
    assert ops.cli("resume").returncode == 0


async def test_mcp_stdio_starts_reads_and_denies_but_refuses_to_act_while_a_policy_file_is_broken(
        ops: Ops, tmp_path: Path) -> None:
    halt_id, files = pending_halt(ops, tmp_path)
    path = break_policy(ops)
    where = f"{path}:rules[0].action: unknown action 'reboot'"
    async with stdio_client(ops) as client:
        assert client.instructions is not None and where in client.instructions
        status = await client.call_tool("fazt_system_status", {})
        halts = await client.call_tool("fazt_halts_list", {})
        approve = await client.call_tool("fazt_halt_answer", {"halt_id": halt_id, "option": "approve"})
        run = await client.call_tool("fazt_action_run", {"name": "cleanup", "args": {"root": str(tmp_path)}})
        explain = await client.call_tool("fazt_policy_explain", {})
        deny = await client.call_tool("fazt_halt_answer", {"halt_id": halt_id, "option": "deny"})
    assert not status.is_error and status.structured_content["pending_halts"] == 1
    assert not halts.is_error and halts.structured_content["halts"][0]["id"] == halt_id
    for refused in (approve, run, explain):
        assert refused.is_error and where in refused.content[0].text
    assert f"approving halt {halt_id} needs valid definitions" in approve.content[0].text
    assert not deny.is_error, deny.content
    assert all(f.exists() for f in files)
    calls = json.loads(ops.cli("events", "list", "--type", "mcp.call", "--json").stdout)
    outcomes = {(c["data"]["tool"], c["data"]["arguments"].get("option")): c["data"]["outcome"] for c in calls}
    assert outcomes[("fazt_halt_answer", "approve")] == "refused" and outcomes[("fazt_halt_answer", "deny")] == "ok"
    assert outcomes[("fazt_action_run", None)] == "refused"
