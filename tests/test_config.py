"""Configuration: search order, init scaffolding, and every class of error as FILE:KEY lines."""

from __future__ import annotations

from pathlib import Path

import tomli_w

from conftest import Ops, base_env, cli


def test_init_scaffolds_a_folder_that_passes_config_check(ops: Ops) -> None:
    for name in ("policies", "prompts", "pulse", "kernel"):
        assert (ops.dir / name).is_dir()
    assert "data/" in (ops.dir / ".gitignore").read_text()
    result = ops.cli("config", "check")
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout
    assert "shipped defaults" not in result.stdout  # the ops folder's own definitions are used


def test_init_refuses_to_overwrite_config_without_force(ops: Ops) -> None:
    result = cli("init", str(ops.dir))
    assert result.returncode == 2
    assert "already exists" in result.stderr and "--force" in result.stderr
    assert cli("init", "--force", str(ops.dir)).returncode == 0


def test_unknown_autonomy_level_names_file_key_and_accepted_values(ops: Ops) -> None:
    ops.set_config("agent", "autonomy", "reckless")
    result = ops.cli("config", "check")
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[0]
    assert line.startswith(f"{ops.config}:agent.autonomy:")
    assert "'low'" in line and "'medium'" in line and "'high'" in line
    assert "Traceback" not in result.stderr


def test_run_refuses_a_broken_config_with_the_same_messages(ops: Ops) -> None:
    ops.set_config("agent", "autonomy", "reckless")
    result = ops.cli("run", timeout=30)
    assert result.returncode == 2
    assert f"{ops.config}:agent.autonomy:" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_config_key_lists_the_accepted_keys(ops: Ops) -> None:
    ops.set_config("agent", "autonmy", "low")
    result = ops.cli("config", "check")
    assert result.returncode == 2
    assert f"{ops.config}:agent.autonmy: unknown key (accepted keys: autonomy, data_dir" in result.stderr


def test_wrong_types_are_reported_per_key(ops: Ops) -> None:
    ops.set_config("pulse", "interval", "soon")
    ops.set_config("http", "listen", "7070")
    result = ops.cli("config", "check")
    assert result.returncode == 2
    assert f"{ops.config}:pulse.interval: expected a duration like '60s'" in result.stderr
    assert f"{ops.config}:http.listen: expected HOST:PORT" in result.stderr
    assert result.stderr.count("'soon'") == 1 and result.stderr.count("'7070'") == 1   # said once each


def test_invalid_toml_names_the_file_and_line(ops: Ops) -> None:
    ops.config.write_text("[agent\nautonomy = 'low'\n")
    result = ops.cli("config", "check")
    assert result.returncode == 2
    assert f"{ops.config}: invalid TOML" in result.stderr and "line 1" in result.stderr


def test_unknown_check_kind_is_refused(ops: Ops) -> None:
    path = ops.write_pulse("bad", '[[checks]]\nname = "x"\nkind = "telepathy"\n')
    result = ops.cli("config", "check")
    assert result.returncode == 2
    assert f"{path}:checks[0].kind: unknown kind 'telepathy'" in result.stderr
    assert "disk" in result.stderr  # the accepted kinds are listed


def test_missing_key_and_misspelt_check_key_are_refused(ops: Ops) -> None:
    path = ops.write_pulse("bad", '[[checks]]\nkind = "dir_size"\npath = "/tmp"\n\n'
                                  '[[checks]]\nname = "d"\nkind = "dir_size"\npath = "/tmp"\nwarnnig = "1GB"\n')
    result = ops.cli("config", "check")
    assert result.returncode == 2
    assert f"{path}:checks[0].name: required key is missing" in result.stderr
    assert f"{path}:checks[1].warnnig: unknown key (accepted keys:" in result.stderr


def test_warning_threshold_beyond_critical_is_refused(ops: Ops) -> None:
    path = ops.write_pulse("bad", '[[checks]]\nname = "disk"\nkind = "disk"\nwarning = 97\ncritical = 90\n')
    result = ops.cli("config", "check")
    assert result.returncode == 2
    assert f"{path}:checks[0].warning: warning threshold 97 is beyond" in result.stderr


def test_duplicate_check_names_across_files_are_refused(ops: Ops) -> None:
    ops.write_pulse("a", '[[checks]]\nname = "sys"\nkind = "system"\n')
    path = ops.write_pulse("b", '[[checks]]\nname = "sys"\nkind = "system"\n', only=False)
    result = ops.cli("config", "check")
    assert result.returncode == 2
    assert f"{path}:checks[0].name: duplicate check name 'sys'" in result.stderr


def test_unreadable_definition_file_is_reported_not_a_traceback(ops: Ops) -> None:
    (ops.dir / "pulse" / "broken.toml").mkdir()  # a directory where a file is expected: unreadable
    result = ops.cli("config", "check")
    assert result.returncode == 2
    assert f"{ops.dir / 'pulse' / 'broken.toml'}: cannot read file" in result.stderr
    assert "Traceback" not in result.stderr


def test_all_errors_of_all_files_are_listed_at_once(ops: Ops) -> None:
    ops.write_pulse("a", '[[checks]]\nname = "A"\nkind = "system"\n')
    ops.write_pulse("b", '[[checks]]\nname = "b"\nkind = "nope"\n', only=False)
    result = ops.cli("config", "check")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 2


def test_secrets_come_from_the_environment(ops: Ops) -> None:
    ops.set_config("notify", "urls", ["json://127.0.0.1:9/${HOOK_TOKEN}"])
    missing = ops.cli("config", "check")
    assert missing.returncode == 2
    assert f"{ops.config}:notify.urls[0]: environment variable 'HOOK_TOKEN' is not set" in missing.stderr
    assert ops.cli("config", "check", env=base_env(HOOK_TOKEN="s3cret")).returncode == 0


def test_config_search_order_env_then_cwd(ops: Ops, tmp_path: Path) -> None:
    ops.set_config("agent", "autonomy", "medium")
    via_env = cli("status", "--json", env=base_env(FAZT_AGENT_CONFIG=str(ops.config)), cwd=tmp_path)
    assert via_env.returncode == 0, via_env.stderr
    assert '"autonomy": "medium"' in via_env.stdout
    via_cwd = cli("status", "--json", cwd=ops.dir)
    assert via_cwd.returncode == 0, via_cwd.stderr
    assert f'"config": "{ops.config}"' in via_cwd.stdout
    missing = cli("--config", str(tmp_path / "nope.toml"), "status")
    assert missing.returncode == 2 and "config file not found" in missing.stderr


def test_config_flag_is_accepted_after_the_subcommand(ops: Ops) -> None:
    result = cli("config", "check", "--config", str(ops.config))
    assert result.returncode == 0, result.stderr
    assert str(ops.config) in result.stdout


def test_answer_channel_settings_are_checked_with_file_and_key(ops: Ops) -> None:
    """Email without the agent's own address, and two owners sharing a Slack ID, are refused
    by `config check` naming FILE:KEY; good owners pass."""
    ops.set_config("email", "imap_host", "imap.example.com")
    result = ops.cli("config", "check")
    assert result.returncode == 2 and f"{ops.config}:email: set address" in result.stderr
    ops.set_config("email", "address", "agent@example.com")
    data = ops.read_config()
    data["owners"] = [{"name": "alice", "slack": "U0123ABC"}, {"name": "bob", "slack": "U0123ABC"}]
    ops.config.write_text(tomli_w.dumps(data))
    result = ops.cli("config", "check")
    assert result.returncode == 2 and f"{ops.config}:owners: " in result.stderr and "'u0123abc'" in result.stderr
    data["owners"][1]["slack"] = "U0456DEF"
    ops.config.write_text(tomli_w.dumps(data))
    assert ops.cli("config", "check").returncode == 0
    data["slack"] = {"bot_token": "xoxb-1"}
    ops.config.write_text(tomli_w.dumps(data))
    result = ops.cli("config", "check")
    assert result.returncode == 2 and f"{ops.config}:slack: set channel" in result.stderr
