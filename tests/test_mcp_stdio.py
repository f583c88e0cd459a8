"""The MCP server over stdio, driven by the real `mcp` Python client: tools with schemas and honest
annotations, structured output, resources, prompts, the policy gate with elicitation, the audit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import ElicitRequestParams, ElicitResult

from _mcp import cleanup_args, destructive_junk, events, stdio_client, stdio_params
from conftest import Ops, base_env

TOOLS = {
    # name: (readOnlyHint, destructiveHint, idempotentHint)
    "fazt_system_status": (True, False, True), "fazt_pulse_status": (True, False, True),
    "fazt_pulse_history": (True, False, True), "fazt_pulse_ask": (True, False, True),
    "fazt_incidents_list": (True, False, True), "fazt_events_list": (True, False, True),
    "fazt_decisions_list": (True, False, True), "fazt_halts_list": (True, False, True),
    "fazt_halt_answer": (False, True, False), "fazt_policy_explain": (True, False, True),
    "fazt_actions_list": (True, False, True), "fazt_action_plan": (True, False, True),
    "fazt_action_run": (False, True, False), "fazt_autonomy_get": (True, False, True),
    "fazt_autonomy_set": (False, False, True), "fazt_agent_pause": (False, False, True),
    "fazt_agent_resume": (False, False, True),
    "fazt_apps_list": (True, False, True), "fazt_app_info": (True, False, True),
    "fazt_app_releases": (True, False, True), "fazt_app_logs": (True, False, True),
    "fazt_deploy": (False, False, False), "fazt_app_rollback": (False, False, False),
    "fazt_app_delete": (False, True, False),
}
READ_TOOLS = ["fazt_system_status", "fazt_pulse_status", "fazt_pulse_history", "fazt_incidents_list",
              "fazt_events_list", "fazt_decisions_list", "fazt_halts_list", "fazt_policy_explain",
              "fazt_actions_list", "fazt_autonomy_get"]


def approving(decision: str = "approve", action: str = "accept") -> Any:
    asked: list[str] = []

    async def callback(context: Any, params: ElicitRequestParams) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(action=action, content={"decision": decision} if action == "accept" else None)

    callback.asked = asked  # type: ignore[attr-defined]
    return callback


async def test_tools_list_shows_every_tool_with_input_and_output_schemas_and_honest_annotations(ops: Ops) -> None:
    async with stdio_client(ops) as client:
        listed = {t.name: t for t in (await client.list_tools()).tools}
    assert set(listed) == set(TOOLS)
    for name, (read_only, destructive, idempotent) in TOOLS.items():
        tool = listed[name]
        hints = tool.annotations
        assert hints is not None and hints.title, name
        hinted = (hints.read_only_hint, hints.destructive_hint, hints.idempotent_hint)
        assert hinted == (read_only, destructive, idempotent), name
        assert tool.description and tool.input_schema["type"] == "object", name
        assert tool.output_schema and tool.output_schema["type"] == "object", name
        assert "ctx" not in tool.input_schema.get("properties", {}), name
    assert listed["fazt_pulse_ask"].annotations.open_world_hint is True
    assert listed["fazt_autonomy_set"].input_schema["properties"]["level"]["enum"] == ["low", "medium", "high"]


async def test_each_read_tool_returns_structured_content_that_fits_its_output_schema(ops: Ops, tmp_path: Path) -> None:
    root, _ = destructive_junk(ops, tmp_path)
    ops.write_pulse("junk", f'[[checks]]\nname = "junk"\nkind = "dir_size"\npath = "{root}"\nwarning = "1KB"\n')
    assert ops.cli("beat").returncode == 1   # over its threshold: an incident, a decision, a halt (medium asks)
    async with stdio_client(ops) as client:
        schemas = {t.name: t.output_schema for t in (await client.list_tools()).tools}
        results = {name: await client.call_tool(name, {}) for name in READ_TOOLS}
    for name, result in results.items():
        assert not result.is_error, (name, result.content)
        jsonschema.validate(result.structured_content, schemas[name])
    assert results["fazt_system_status"].structured_content["open_incidents"] == 1
    assert results["fazt_pulse_status"].structured_content["results"][0]["check"] == "junk"
    assert results["fazt_incidents_list"].structured_content["incidents"][0]["check"] == "junk"
    decisions = results["fazt_decisions_list"].structured_content["events"]
    assert decisions and {d["type"] for d in decisions} <= {"decision.made", "decision.rejected"}
    assert results["fazt_halts_list"].structured_content["halts"][0]["status"] == "pending"  # medium + destructive
    assert "cleanup" in [a["name"] for a in results["fazt_actions_list"].structured_content["actions"]]
    autonomy = results["fazt_autonomy_get"].structured_content
    assert (autonomy["autonomy"], autonomy["paused"]) == ("medium", False)
    assert autonomy["detail"]["source"] == "config" and autonomy["detail"]["summary"] == "medium (from config.toml)"


async def test_resources_and_prompts_are_served_and_the_config_resource_hides_secrets(ops: Ops) -> None:
    ops.set_config("notify", "urls", ["json://127.0.0.1:9/${HOOK_TOKEN}"])
    secret = "tok-very-secret-4711"
    params = stdio_params(ops)
    params.env = base_env(HOOK_TOKEN=secret)
    async with Client(params) as client:
        await client.call_tool("fazt_autonomy_get", {})   # event 1: its mcp.call
        uris = {str(r.uri) for r in (await client.list_resources()).resources}
        config = (await client.read_resource("fazt://config")).contents[0].text
        policies = (await client.read_resource("fazt://policies")).contents[0].text
        status = (await client.read_resource("fazt://pulse/status")).contents[0].text
        prompts = {p.name: p for p in (await client.list_prompts()).prompts}
        diagnose = await client.get_prompt("diagnose", {})
        report = await client.get_prompt("weekly_report", {})
        explained = await client.get_prompt("explain_decision", {"event_id": "1"})
        with pytest.raises(MCPError, match="there is no event 999"):
            await client.get_prompt("explain_decision", {"event_id": "999"})
    assert uris == {"fazt://pulse/status", "fazt://pulse/history", "fazt://events/recent", "fazt://incidents",
                    "fazt://halts/pending", "fazt://policies", "fazt://config", "fazt://apps"}
    assert secret not in config and "json://***" in config
    assert '"rules"' in policies and "directory-pressure" in policies
    assert '"results"' in status
    assert [a.name for a in prompts["explain_decision"].arguments] == ["event_id"]
    assert "fazt_system_status" in diagnose.messages[0].content.text or "health" in diagnose.messages[0].content.text
    assert "Event counts by type" in report.messages[0].content.text
    assert '"id": 1' in explained.messages[0].content.text


async def test_pulse_ask_without_an_llm_is_a_tool_error_that_says_how_to_configure_it(ops: Ops) -> None:
    async with stdio_client(ops) as client:
        result = await client.call_tool("fazt_pulse_ask", {"question": "why is the disk filling up?"})
    assert result.is_error
    assert "the LLM is not configured (no ANTHROPIC_API_KEY): set ANTHROPIC_API_KEY" in result.content[0].text


async def test_pulse_ask_is_answered_by_the_llm_from_stored_data(ops: Ops, tmp_path: Path) -> None:
    from fazt_agent.testing import ScriptedLLM, message, text

    (tmp_path / "scratch").mkdir()
    ops.write_pulse("calm", f'[[checks]]\nname = "scratch"\nkind = "dir_size"\npath = "{tmp_path / "scratch"}"\n')
    with ScriptedLLM(message(text("Everything is fine: scratch is empty."))) as llm:
        ops.set_config("llm", "base_url", llm.url)
        assert ops.cli("beat").returncode == 0
        async with stdio_client(ops, env={"ANTHROPIC_API_KEY": "sk-ant-mcp-test"}) as client:
            result = await client.call_tool("fazt_pulse_ask", {"question": "is scratch ok?"})
    assert not result.is_error, result.content
    assert result.structured_content["answer"] == "Everything is fine: scratch is empty."
    assert "is scratch ok?" in llm.requests[0].body["messages"][0]["content"]


async def test_every_call_is_an_mcp_call_event_with_secret_arguments_redacted(ops: Ops) -> None:
    async with stdio_client(ops) as client:
        await client.call_tool("fazt_system_status", {})
        refused = await client.call_tool("fazt_action_plan", {"name": "command", "args": {
            "name": "deploy", "api_token": "hunter2-abc", "text": "fzt_AAAAAAAAAAAAAAAAAAAAAAAAAAAA"}})
        invalid = await client.call_tool("fazt_pulse_history", {"hours": -1, "password": "s3cr3t-pw"})
        unknown = await client.call_tool("fazt_reboot", {})
    assert refused.is_error and "api_token: Extra inputs are not permitted" in refused.content[0].text
    assert invalid.is_error and unknown.is_error
    calls = events(ops, "mcp.call")
    assert [(c["data"]["tool"], c["data"]["outcome"]) for c in calls] == [
        ("fazt_system_status", "ok"), ("fazt_action_plan", "error"), ("fazt_pulse_history", "error"),
        ("fazt_reboot", "error")]
    assert "hours" in calls[2]["data"]["error"] and "Unknown tool" in calls[3]["data"]["error"]
    assert calls[2]["data"]["arguments"] == {"hours": -1, "password": "***"}
    plan = calls[1]["data"]
    assert plan["token"] == "stdio" and plan["scope"] == "admin" and plan["transport"] == "stdio"
    assert plan["arguments"]["args"]["api_token"] == "***" and plan["arguments"]["args"]["text"] == "***"
    assert plan["arguments"]["args"]["name"] == "deploy" and plan["error"]
    assert "hunter2" not in str(calls) and "s3cr3t-pw" not in str(calls)


async def test_a_safe_action_run_acts_through_the_gate_and_reports_its_outcome(ops: Ops, tmp_path: Path) -> None:
    root, files = destructive_junk(ops, tmp_path)
    (ops.dir / "kernel" / "actions.toml").write_text('[cleanup]\ndestructive_above = "1MB"\n')  # small: safe
    async with stdio_client(ops) as client:
        result = await client.call_tool("fazt_action_run", cleanup_args(root))
    out = result.structured_content
    assert not result.is_error and out["verdict"] == "act" and out["outcome"]["ok"] is True
    assert out["plan"]["risk"] == "safe" and out["halt_id"] is None
    assert not any(f.exists() for f in files)
    made = events(ops, "decision.made")
    assert [(d["data"]["trigger"], d["data"]["planner"], d["data"]["verdict"]) for d in made] == [
        ("manual", "manual", "act")]


async def test_a_destructive_action_run_opens_a_halt_when_the_client_cannot_elicit(ops: Ops, tmp_path: Path) -> None:
    root, files = destructive_junk(ops, tmp_path)
    async with stdio_client(ops) as client:
        result = await client.call_tool("fazt_action_run", cleanup_args(root))
    out = result.structured_content
    assert out["verdict"] == "ask" and out["approval"] == "pending" and out["plan"]["risk"] == "destructive"
    assert all(f.exists() for f in files)
    halts = ops.cli("halts", "list", "--json")
    assert '"status": "pending"' in halts.stdout and f'"id": {out["halt_id"]}' in halts.stdout


@pytest.mark.parametrize("mode", ["legacy", "auto"])  # 2025-11-25 elicits mid-call; 2026-07-28 with input_required
async def test_a_destructive_action_run_asks_the_person_and_runs_once_when_approved(
        ops: Ops, tmp_path: Path, mode: str) -> None:
    root, files = destructive_junk(ops, tmp_path)
    ask = approving()
    async with stdio_client(ops, elicitation_callback=ask, mode=mode) as client:
        result = await client.call_tool("fazt_action_run", cleanup_args(root))
    out = result.structured_content
    assert not result.is_error, result.content
    assert out["verdict"] == "ask" and out["approval"] == "approved"
    assert out["answer"]["executed"] is True and out["answer"]["ok"] is True
    assert len(ask.asked) == 1 and "delete 5 files" in ask.asked[0] and f"halt #{out['halt_id']}" in ask.asked[0]
    assert not any(f.exists() for f in files)
    answered = events(ops, "halt.answered")
    assert [(a["data"]["option"], a["data"]["by"]) for a in answered] == [("approve", "mcp:stdio")]
    assert len(events(ops, "action.started")) == 1 and len(events(ops, "halt.requested")) == 1


@pytest.mark.parametrize("decision,action", [("deny", "accept"), (None, "decline"), (None, "cancel")])
async def test_denying_declining_or_cancelling_the_elicitation_denies_the_halt(
        ops: Ops, tmp_path: Path, decision: str | None, action: str) -> None:
    root, files = destructive_junk(ops, tmp_path)
    async with stdio_client(ops, elicitation_callback=approving(decision or "deny", action)) as client:
        result = await client.call_tool("fazt_action_run", cleanup_args(root))
    out = result.structured_content
    assert out["approval"] == "denied" and out["answer"]["executed"] is False
    assert out["answer"]["halt"]["answer"] == "deny"
    assert all(f.exists() for f in files)
    assert events(ops, "action.started") == []


async def test_admin_tools_set_autonomy_and_pause_and_resume_over_stdio(ops: Ops) -> None:
    async with stdio_client(ops) as client:
        changed = await client.call_tool("fazt_autonomy_set", {"level": "high"})
        bad = await client.call_tool("fazt_autonomy_set", {"level": "reckless"})
        paused = await client.call_tool("fazt_agent_pause", {})
        again = await client.call_tool("fazt_agent_pause", {})
        state = await client.call_tool("fazt_autonomy_get", {})
        resumed = await client.call_tool("fazt_agent_resume", {})
    assert {k: changed.structured_content[k] for k in ("old", "new", "changed")} == {"old": "low", "new": "high",
                                                                                    "changed": True}
    detail = changed.structured_content["detail"]
    assert (detail["source"], detail["by"], detail["config"]) == ("override", "mcp:stdio", "low")
    assert detail["summary"] == f"high (set by mcp:stdio at {detail['at']}, overrides config.toml's low)"
    assert bad.is_error and "level" in bad.content[0].text
    assert paused.structured_content == {"paused": True, "changed": True}
    assert again.structured_content == {"paused": True, "changed": False}
    assert (state.structured_content["autonomy"], state.structured_content["paused"]) == ("high", True)
    assert state.structured_content["detail"] == detail
    assert resumed.structured_content == {"paused": False, "changed": True}
    assert ops.cli("autonomy").stdout.strip() == "high"
    assert [e["data"]["by"] for e in events(ops, "autonomy.changed")] == ["mcp:stdio"]
