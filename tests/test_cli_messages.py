"""What the owner reads on the command line: help texts as written (no markup damage), --version,
shell completion, `halts show` listing each step once, notifications logged at their severity,
human units in messages, and `decisions list --planner` saying none by that planner."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import Ops, base_env, cli
from fazt_agent.testing import ScriptedLLM, message, text

DAY = 86400


# -- help, version, completion ----------------------------------------------------------------

def _flat(text: str) -> str:
    """Help text with click's line wrapping undone: a line broken after a hyphen is joined, other
    runs of whitespace are one space (`\\b` marks a paragraph click keeps as written)."""
    return " ".join(re.sub(r"-\n\s*", "-", text.replace("\b", "")).split())


def _commands(help_text: str) -> list[str]:
    """The subcommands listed under `Commands:` in a group's --help."""
    _, found, rest = help_text.partition("\nCommands:\n")
    if not found:
        return []
    names = []
    for line in rest.splitlines():
        if not line.startswith("  "):
            break
        if not line.startswith("   "):   # a wrapped description is indented further
            names.append(line.split()[0])
    return names


def _walk(path: list[str]) -> Iterator[tuple[list[str], str]]:
    """Every command path and its --help output, found the way a user would: from the listings."""
    result = cli(*path, "--help")
    assert result.returncode == 0, (path, result.stderr)
    yield path, result.stdout
    for name in _commands(result.stdout):
        yield from _walk([*path, name])


def _source_paths() -> set[str]:
    """Every command path the app defines (hidden ones aside)."""
    import typer.main

    from fazt_agent.cli import app

    def walk(command: Any, path: list[str]) -> Iterator[str]:
        yield " ".join(path)
        for name, sub in getattr(command, "commands", {}).items():
            if not sub.hidden:
                yield from walk(sub, [*path, name])

    return set(walk(typer.main.get_command(app), []))


def _written(path: list[str]) -> list[str]:
    """The texts the source gives a command (its docstring, each visible option's help)."""
    import typer.main

    from fazt_agent.cli import app

    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    texts = [command.help or ""]
    texts += [p.help for p in command.params if getattr(p, "help", None) and not getattr(p, "hidden", False)]
    return [t for t in texts if t]


def test_every_help_text_reads_as_written_without_markup_damage() -> None:
    helps = dict((" ".join(path), out) for path, out in _walk([]))
    assert set(helps) == _source_paths()   # every command is listed where a user looks for it
    assert {"", "config check", "mcp serve", "halts list", "approve", "certs renew", "pulse trend"} <= set(helps)
    for path, out in helps.items():
        written = _written(path.split() if path else [])
        for text in written:
            assert _flat(text) in _flat(out), (path, text, out)
        assert "<bool>" not in out, (path, out)
        foreign = {c for c in out if ord(c) > 127} - {c for t in written for c in t}
        assert not foreign, (path, foreign, out)   # no emoji, no box drawing
    assert "errors print as FILE:KEY: message" in _flat(helps["config check"])
    assert "control plane ([http] listen)" in _flat(helps["mcp serve"])
    assert "HTTP needs a bearer token (`fazt-agent tokens create`);" in helps["mcp serve"]
    assert "A [[certificates]] name from kernel/*.toml." in _flat(helps["certs renew"])
    assert "'disk[/].used_percent'" in _flat(helps["pulse trend"])
    assert "--arg KEY=VALUE" in helps["actions run"]


def test_version_prints_the_installed_package_version() -> None:
    result = cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"fazt-agent {version('fazt-agent')}\n"


def test_shell_completion_is_offered_and_completes_commands_in_bash(tmp_path: Path) -> None:
    shown = cli("--help").stdout
    assert "--install-completion" in shown and "--show-completion" in shown
    script = cli("--show-completion", "bash")
    assert script.returncode == 0, script.stderr
    assert "complete -o default -F _fazt_agent_completion fazt-agent" in script.stdout
    # the script calls `fazt-agent` back: put one on PATH that runs this checkout's CLI
    launcher = tmp_path / "bin" / "fazt-agent"
    launcher.parent.mkdir()
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m fazt_agent "$@"\n')
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "completion.bash").write_text(script.stdout)

    def complete(*words: str) -> list[str]:
        line = " ".join(words)
        program = (f'source "{tmp_path / "completion.bash"}"\n'
                   f'COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}\n'
                   '_fazt_agent_completion fazt-agent\nprintf "%s\\n" "${COMPREPLY[@]}"\n')
        env = base_env(PATH=f"{launcher.parent}{os.pathsep}{os.environ['PATH']}")
        done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert complete("fazt-agent", "hal") == ["halts"]
    assert complete("fazt-agent", "halts", "''") == ["list", "show", "answer"]


# -- halts show, notifications ------------------------------------------------------------------

def _junk(ops: Ops, tmp_path: Path, count: int, warning: str = "20KB") -> tuple[Path, list[Path]]:
    """A cleanup root the policy allows, watched by a dir_size check, holding `count` 30-day-old files."""
    root = tmp_path / "junk"
    root.mkdir()
    ops.write_pulse("junk", f'[[checks]]\nname = "junk"\nkind = "dir_size"\npath = "{root}"\nwarning = "{warning}"\n')
    (ops.dir / "policies" / "local.toml").write_text(f'[constraints]\ncleanup_roots = ["{root}"]\n')
    ops.set_config("agent", "autonomy", "medium")
    files = []
    then = time.time() - 30 * DAY   # the beat reads the real clock
    for i in range(count):
        path = root / f"old-{i:03}.log"
        path.write_bytes(b"x" * 4096)
        os.utime(path, (then, then))
        files.append(path)
    return root, files


def test_halts_show_lists_every_step_of_a_long_plan_once(ops: Ops, tmp_path: Path) -> None:
    _, files = _junk(ops, tmp_path, 30)
    (ops.dir / "kernel" / "actions.toml").write_text('[cleanup]\ndestructive_above = "16KB"\n')
    ops.cli("beat")
    [halt] = json.loads(ops.cli("halts", "list", "--json").stdout)
    assert len(halt["plan"]["steps"]) == 30
    shown = ops.cli("halts", "show", str(halt["id"]))
    assert shown.returncode == 0, shown.stderr
    assert "... and" not in shown.stdout
    for f in files:
        assert shown.stdout.count(str(f)) == 1, f
    assert f"fazt-agent approve {halt['id']}" in shown.stdout
    # the notification stays bounded, and points at the command with the halt's own id
    assert f"... and 15 more (fazt-agent halts show {halt['id']})" in halt["body"]


def test_an_info_notification_is_logged_at_info_and_beat_still_shows_it(ops: Ops, tmp_path: Path) -> None:
    _junk(ops, tmp_path, 10)
    beat = ops.cli("beat")   # medium autonomy: the small cleanup runs, an info notification says so
    lines = [line for line in beat.stderr.splitlines() if "fazt_agent.notify: notification (" in line]
    assert any(re.search(r" info +fazt_agent\.notify: notification \(info\): \[.+\] done: delete 10 files", line)
               for line in lines), beat.stderr
    assert not any(re.search(r" warning +fazt_agent\.notify: notification \(info\)", line) for line in lines)


# -- human units ---------------------------------------------------------------------------------

def test_policy_explain_says_durations_in_human_units(ops: Ops) -> None:
    (ops.dir / "policies" / "zz-quick.toml").write_text(
        '[[rules]]\nname = "quick"\nmatch = { kind = ["dir_size"] }\naction = "cleanup"\n'
        'args = { root = "{target}" }\ncooldown = "1s"\nwindow = "90m"\nhalt_expiry = "30h"\n')
    shown = ops.cli("policy", "explain")
    assert shown.returncode == 0, shown.stderr
    assert "limits cooldown 1 s, at most 5 actions per 1 h 30 min, halts expire after 30 h" in shown.stdout
    assert "limits cooldown 1 h, at most 5 actions per 24 h, halts expire after 24 h" in shown.stdout  # defaults


def test_a_size_threshold_error_says_sizes_in_human_units(ops: Ops, tmp_path: Path) -> None:
    path = ops.write_pulse("big", f'[[checks]]\nname = "big"\nkind = "dir_size"\npath = "{tmp_path}"\n'
                                  'critical = "1GB"\nwarning = "5GB"\n')
    checked = ops.cli("config", "check")
    assert checked.returncode == 2
    assert f"{path}:checks[0].warning: warning threshold 4.7 GiB is beyond critical 953.7 MiB" in checked.stderr


def test_pulse_trend_and_history_say_sizes_and_durations_in_human_units(ops: Ops, tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    with open(root / "disk.img", "wb") as f:   # sparse: 5 GB of size, no space used
        f.truncate(5 * 10**9)
    ops.write_pulse("images", f'[[checks]]\nname = "images"\nkind = "dir_size"\npath = "{root}"\n')
    assert ops.cli("beat").returncode == 0
    trend = ops.cli("pulse", "trend", "images.size_bytes")
    assert trend.returncode == 0, trend.stderr
    assert "min 4.7 GiB  max 4.7 GiB  last 4.7 GiB" in trend.stdout and "e+" not in trend.stdout
    assert "last 24 h, 1 points" in trend.stdout
    history = ops.cli("pulse", "history", "--hours", "0.25")
    assert history.returncode == 0 and "1 beats in the last 15 min" in history.stdout


KEY = "sk-ant-messages-test-0123456789"


def test_the_llm_budget_message_says_plain_numbers(ops: Ops, tmp_path: Path) -> None:
    (tmp_path / "scratch").mkdir()
    ops.write_pulse("calm", f'[[checks]]\nname = "scratch"\nkind = "dir_size"\npath = "{tmp_path / "scratch"}"\n')
    with ScriptedLLM() as llm:
        ops.set_config("llm", "base_url", llm.url)
        ops.set_config("llm", "ask_interval", "0s")
        ops.set_config("llm", "budget", {"calls_per_hour": 100, "tokens_per_day": 1_000_000, "usd_per_day": 1000})
        llm.add(message(text("All is well."), usage={"input_tokens": 2_500_000, "output_tokens": 10}))
        env = base_env(ANTHROPIC_API_KEY=KEY)
        first = ops.cli("pulse", "ask", "how is it?", env=env)
        assert first.returncode == 0, first.stderr
        second = ops.cli("pulse", "ask", "and now?", env=env)
    assert second.returncode == 1
    assert ("LLM budget reached: 2,500,010 tokens in the last 24 h (at most 1,000,000, [llm.budget] tokens_per_day)"
            in second.stderr), second.stderr


def test_the_ask_interval_message_says_durations_in_human_units(ops: Ops, tmp_path: Path) -> None:
    (tmp_path / "scratch").mkdir()
    ops.write_pulse("calm", f'[[checks]]\nname = "scratch"\nkind = "dir_size"\npath = "{tmp_path / "scratch"}"\n')
    with ScriptedLLM() as llm:
        ops.set_config("llm", "base_url", llm.url)
        ops.set_config("llm", "ask_interval", "2h")
        llm.add(message(text("All is well.")))
        env = base_env(ANTHROPIC_API_KEY=KEY)
        assert ops.cli("pulse", "ask", "how is it?", env=env).returncode == 0
        again = ops.cli("pulse", "ask", "and now?", env=env)
    assert again.returncode == 1
    assert re.search(r"the last question was [\d.]+ m?s ago; at most one every 2 h \(\[llm\] ask_interval\): "
                     r"try again in (2 h|1 h 59 min)\n", again.stderr), again.stderr


# -- decisions ----------------------------------------------------------------------------------------

def test_decisions_list_by_a_planner_with_none_says_none_by_that_planner(ops: Ops, tmp_path: Path) -> None:
    _junk(ops, tmp_path, 10)
    ops.set_config("agent", "autonomy", "low")
    ops.cli("beat")   # the rules planner decides (no LLM configured)
    everything = json.loads(ops.cli("decisions", "list", "--json").stdout)
    assert [e["data"]["planner"] for e in everything] == ["rules"]
    by_llm = ops.cli("decisions", "list", "--planner", "llm")
    assert by_llm.returncode == 0 and by_llm.stdout.strip() == "no decisions by the llm planner"
    assert "rules" in ops.cli("decisions", "list", "--planner", "rules").stdout
