"""The LLM from the command line: status, `pulse ask`, `pulse status --summary`, configuration,
and the API key kept out of logs and the database."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import Ops, base_env
from fazt_agent.testing import ScriptedLLM, error, message, text, tool_use

KEY = "sk-ant-cli-test-9876543210"


@pytest.fixture
def calm(ops: Ops, tmp_path: Path) -> None:
    """One check that stays ok (the shipped system check depends on the load of the test machine)."""
    (tmp_path / "scratch").mkdir()
    ops.write_pulse("calm", f'[[checks]]\nname = "scratch"\nkind = "dir_size"\npath = "{tmp_path / "scratch"}"\n'
                            'warning = "1MB"\n')


def with_key(**extra: str) -> dict[str, str]:
    return base_env(ANTHROPIC_API_KEY=KEY, **extra)


def test_status_says_decisions_use_the_rules_planner_without_a_key(ops: Ops) -> None:
    env = {k: v for k, v in base_env().items() if k != "ANTHROPIC_API_KEY"}
    shown = ops.cli("status", env=env)
    assert "llm        not configured (no ANTHROPIC_API_KEY): decisions use the rules planner" in shown.stdout
    data = json.loads(ops.cli("status", "--json", env=env).stdout)
    assert data["llm"]["configured"] is False


def test_status_shows_the_model_and_its_spending_with_a_key(ops: Ops, llm: ScriptedLLM, calm: None) -> None:
    shown = ops.cli("status", env=with_key())
    assert "decisions by claude-sonnet-5-5" in shown.stdout and "0/30 calls this hour" in shown.stdout
    assert llm.requests == []


def test_pulse_ask_without_a_key_fails_with_a_hint(ops: Ops) -> None:
    env = {k: v for k, v in base_env().items() if k != "ANTHROPIC_API_KEY"}
    asked = ops.cli("pulse", "ask", "how is the disk?", env=env)
    assert asked.returncode == 1
    assert "not configured (no ANTHROPIC_API_KEY): set ANTHROPIC_API_KEY" in asked.stderr
    assert "Traceback" not in asked.stderr


def test_pulse_ask_answers_from_stored_data_and_is_rate_limited(ops: Ops, llm: ScriptedLLM, calm: None) -> None:
    assert ops.cli("beat", env=with_key()).returncode == 0
    assert llm.requests == []  # a healthy beat asks nothing

    def answer(request: dict) -> dict:
        first = request["messages"][0]["content"]
        assert "how full is scratch?" in first
        assert re.search(r'<data-[0-9a-f]{8} source="beats of the last 24 h">', first)
        assert [t["name"] for t in request["tools"]] == ["beat_history", "query_events", "probe_detail"]
        return message(text("The scratch folder is empty and has been all day."))

    llm.add(message(tool_use("beat_history", {"check": "scratch", "hours": 24})), answer)
    asked = ops.cli("pulse", "ask", "how full is scratch?", env=with_key())
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.strip() == "The scratch folder is empty and has been all day."
    result = llm.requests[1].body["messages"][2]["content"][0]["content"]
    assert re.match(r'<data-[0-9a-f]{8} source="stored results of check scratch">', result) and " ok " in result
    again = ops.cli("pulse", "ask", "and memory?", "--json", env=with_key())
    assert again.returncode == 1 and "at most one every 1 min ([llm] ask_interval): try again in" in again.stderr
    assert len(llm.requests) == 2


def test_pulse_status_summary_is_made_once_per_beat(ops: Ops, llm: ScriptedLLM, calm: None) -> None:
    ops.cli("beat", env=with_key())
    llm.add(message(text("All is well.")), message(text("Still well.")))
    assert "All is well." not in ops.cli("pulse", "status", env=with_key()).stdout  # off by default
    assert llm.requests == []
    for _ in range(2):
        shown = ops.cli("pulse", "status", "--summary", env=with_key())
        assert shown.returncode == 0 and shown.stdout.rstrip().endswith("All is well.")
    assert len(llm.requests) == 1 and "tools" not in llm.requests[0].body
    ops.cli("beat", env=with_key())
    data = json.loads(ops.cli("pulse", "status", "--summary", "--json", env=with_key()).stdout)
    assert data["summary"]["summary"] == "Still well." and data["summary"]["cached"] is False
    assert len(llm.requests) == 2


def test_a_prompt_with_an_unknown_placeholder_is_refused_at_load_with_file_and_placeholder(ops: Ops) -> None:
    (ops.dir / "prompts" / "decide.md").write_text("Decide on {{incident}} {{whoami}}\n")
    checked = ops.cli("config", "check", env=with_key())
    assert checked.returncode == 2
    assert f"{ops.dir / 'prompts' / 'decide.md'}:{{{{whoami}}}}: unknown placeholder" in checked.stderr
    assert ops.cli("beat", env=with_key()).returncode == 2


async def test_a_prompt_broken_while_running_leaves_the_rules_planner_and_says_where(
        ops: Ops, llm: ScriptedLLM, tmp_path: Path) -> None:
    from fazt_agent.config import load_config
    from fazt_agent.engine import Engine
    from fazt_agent.runtime import Runtime

    (tmp_path / "scratch").mkdir()
    (tmp_path / "scratch" / "big").write_bytes(b"x" * 4096)
    ops.write_pulse("calm", f'[[checks]]\nname = "scratch"\nkind = "dir_size"\npath = "{tmp_path / "scratch"}"\n'
                            'warning = "1KB"\n')
    rt = await Runtime.open(load_config(ops.config, env={"ANTHROPIC_API_KEY": KEY}))
    try:
        (ops.dir / "prompts" / "decide.md").write_text("Decide on {{incident}} {{whoami}}\n")  # edited after start
        engine = Engine(rt)
        await engine.on_beat(await rt.pulse.beat(everything=True))
        assert llm.requests == []
        events = [e for e in reversed(await rt.events.list(limit=100))]
    finally:
        await rt.close()
    [fallback] = [e.data for e in events if e.type == "llm.fallback"]
    assert fallback["kind"] == "prompt"
    assert f"{ops.dir / 'prompts' / 'decide.md'}:{{{{whoami}}}}: unknown placeholder" in fallback["reason"]
    assert [e.data["planner"] for e in events if e.type == "decision.made"] == ["rules"]


def test_the_api_key_never_reaches_the_logs_or_the_database(ops: Ops, tmp_path: Path) -> None:
    root = tmp_path / "junk"
    root.mkdir()
    for i in range(6):
        (root / f"f{i}").write_bytes(b"x" * 4096)
    ops.write_pulse("junk", f'[[checks]]\nname = "junk"\nkind = "dir_size"\npath = "{root}"\nwarning = "20KB"\n')
    ops.set_config("llm", "api_key_env", "MY_LLM_KEY")
    with ScriptedLLM(error(401, "authentication_error", "invalid x-api-key")) as llm:
        beat = ops.cli("beat", env=base_env(MY_LLM_KEY=KEY, ANTHROPIC_BASE_URL=llm.url))
    assert len(llm.requests) == 1  # $ANTHROPIC_BASE_URL is honoured; a 401 is not retried
    assert KEY not in beat.stdout + beat.stderr
    [fallback] = [e["data"] for e in json.loads(ops.cli("events", "list", "--json").stdout)
                  if e["type"] == "llm.fallback"]
    assert fallback["kind"] == "api_error" and "401" in fallback["reason"]
    for path in ops.data_dir.iterdir():
        assert KEY.encode() not in path.read_bytes(), path
