"""`config check` finds what would otherwise surface only later (a rule that can never match, a
notification URL apprise cannot use), and accepts what it needlessly refused (a model without a
built-in price: only the USD budget is skipped)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from _helpers import event_data
from conftest import Ops, base_env
from fazt_agent.testing import ScriptedLLM, message, tool_use

KEY = "sk-ant-test-key-config-checks-42"
UNPRICED = "claude-future-9"


def test_a_rule_matching_an_unknown_check_kind_is_a_file_key_error(ops: Ops) -> None:
    local = ops.dir / "policies" / "local.toml"
    local.write_text('[[rules]]\nname = "disk-typo"\nmatch = { kind = ["dsk"] }\naction = "cleanup"\n')
    for command in (("config", "check"), ("policy", "check")):
        checked = ops.cli(*command)
        assert checked.returncode == 2, (command, checked.stdout)
        line = checked.stderr.strip().splitlines()[0]
        assert line.startswith(f"{local}:rules[0].match.kind: unknown check kind 'dsk' (accepted: ")
        assert "cert_file, command, " in line and "disk" in line
    # a glob matching a known kind is fine
    local.write_text('[[rules]]\nname = "disks"\nmatch = { kind = ["di*"] }\naction = "cleanup"\n')
    assert ops.cli("config", "check").returncode == 0


def test_notification_urls_apprise_cannot_use_are_file_key_errors_that_never_show_the_url(ops: Ops) -> None:
    secret = "not-a-slack-token-4711"
    ops.set_config("notify", "urls", ["notaurl", "json://127.0.0.1:9/hook", "slack://${SLACK_TOKEN}",
                                      "nosuchservice://${SLACK_TOKEN}@host"])
    checked = ops.cli("config", "check", env=base_env(SLACK_TOKEN=secret))
    assert checked.returncode == 2
    lines = checked.stderr.strip().splitlines()
    assert lines[0].startswith(f"{ops.config}:notify.urls[0]: apprise cannot use this URL: it has no scheme")
    assert lines[1].startswith(f"{ops.config}:notify.urls[2]: apprise cannot use 'slack://***': not a valid slack URL")
    assert lines[2].startswith(f"{ops.config}:notify.urls[3]: apprise cannot use 'nosuchservice://***': "
                               "unknown scheme 'nosuchservice'")
    assert len(lines) == 3   # the json:// URL is fine
    assert secret not in checked.stdout + checked.stderr and "notaurl" not in checked.stderr
    ops.set_config("notify", "urls", ["json://127.0.0.1:9/hook"])
    assert ops.cli("config", "check").returncode == 0


def test_a_model_without_a_built_in_price_is_accepted_with_a_warning(ops: Ops) -> None:
    ops.set_config("llm", "model", UNPRICED)
    warning = (f"{ops.config}:llm.model: no price known for model '{UNPRICED}': the USD budget is not applied; "
               f"set [llm.prices.\"{UNPRICED}\"]")
    checked = ops.cli("config", "check")
    assert checked.returncode == 0, checked.stderr
    assert f"warning: {warning}" in checked.stderr
    shown = ops.cli("status", env=base_env(ANTHROPIC_API_KEY=KEY))
    assert f"note: {warning}" in shown.stdout
    assert f"tokens and no USD limit (no price known for {UNPRICED}) in 24 h" in shown.stdout
    ops.set_config("llm", "prices", {UNPRICED: {"input_per_mtok": 1, "output_per_mtok": 2, "cache_read_per_mtok": 0.1,
                                                "cache_write_per_mtok": 1.25}})
    checked = ops.cli("config", "check")
    assert checked.returncode == 0 and "warning" not in checked.stderr


def junk(ops: Ops, tmp_path: Path, name: str, *, only: bool) -> Path:
    root = tmp_path / name
    root.mkdir()
    ops.write_pulse(name, f'[[checks]]\nname = "{name}"\nkind = "dir_size"\npath = "{root}"\nwarning = "20KB"\n',
                    only=only)
    for i in range(6):
        path = root / f"old-{i}.log"
        path.write_bytes(b"x" * 4096)
        then = time.time() - 30 * 86400
        os.utime(path, (then, then))
    return root


def test_an_unpriced_model_decides_and_the_token_budget_still_stops_it(ops: Ops, llm: ScriptedLLM,
                                                                       tmp_path: Path) -> None:
    ops.set_config("llm", "model", UNPRICED)
    # a USD limit of 0 would refuse every call if it applied; the token limit still does
    ops.set_config("llm", "budget", {"tokens_per_day": 50_000, "usd_per_day": 0})
    env = base_env(ANTHROPIC_API_KEY=KEY)
    big = {"input_tokens": 60_000, "output_tokens": 200, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
    llm.add(message(tool_use("notify_only", {"reason": "old logs fill the folder"}), usage=big, model=UNPRICED))
    junk(ops, tmp_path, "first", only=True)
    ops.cli("beat", env=env)
    assert len(llm.requests) == 1 and llm.requests[0].body["model"] == UNPRICED
    [decision] = event_data(ops, "decision.made")
    assert decision["planner"] == "llm" and decision["model"] == UNPRICED
    assert decision["usage"]["cost_usd"] == 0   # not known, not guessed

    junk(ops, tmp_path, "second", only=False)   # a second incident: the token budget is spent
    ops.cli("beat", env=env)
    assert len(llm.requests) == 1
    [exhausted] = event_data(ops, "llm.budget_exhausted")
    assert exhausted["limit"] == "tokens_per_day" and exhausted["used"] == 60_200
    assert [d["planner"] for d in event_data(ops, "decision.made")] == ["llm", "rules"]
