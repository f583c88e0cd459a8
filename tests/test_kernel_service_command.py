"""`service.restart`, `command` and `notify` with real scripts, and the kernel/*.toml settings."""

from __future__ import annotations

import json
import os
import select
import shlex
import signal
import sys
import tomllib
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from _helpers import FakeClock
from fazt_agent.errors import ActionError
from fazt_agent.kernel import ACTIONS, ActionContext, Constraints, Plan
from fazt_agent.kernel.settings import CommandSpec, KernelFile, load_kernel

REPO = Path(__file__).resolve().parent.parent


class RecordingNotifier:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []

    async def notify(self, title: str, body: str, *, severity: str = "info",
                     halt_id: int | None = None, incident_id: int | None = None) -> None:
        self.sent.append((title, body, severity))


def context(settings: dict | None = None, units: tuple[str, ...] = (), notifier=None) -> ActionContext:
    return ActionContext(clock=FakeClock(datetime(2026, 5, 1, tzinfo=timezone.utc), mono=0.0),
                         constraints=Constraints(service_units=units),
                         settings=settings or {}, notifier=notifier)


def script(tmp_path: Path, body: str, name: str = "tool") -> str:
    path = tmp_path / name
    path.write_text(body)
    path.chmod(0o755)
    return str(path)


def argv_recorder(tmp_path: Path, exit_code: int = 0) -> str:
    """A program that prints its arguments as JSON, also into argv.json, and exits `exit_code`."""
    return script(tmp_path, f"#!{sys.executable}\nimport json, sys\ntext = json.dumps(sys.argv[1:])\n"
                            f"open({str(tmp_path / 'argv.json')!r}, 'w').write(text)\nprint(text)\n"
                            f"print('it went wrong', file=sys.stderr)\nsys.exit({exit_code})\n", f"exit{exit_code}")


def hanging(tmp_path: Path) -> str:
    """A program that records its pid and a child's pid, then waits for the child forever."""
    return script(tmp_path, f"#!/bin/sh\necho $$ > {tmp_path}/pid\nsleep 1000 &\necho $! > {tmp_path}/child\nwait\n")


def exited(pid: int, within: float = 5.0) -> bool:
    """Whether process `pid` has ended (or ends within `within` seconds)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], within)[0])
    finally:
        os.close(fd)


async def run(name: str, args: dict, ctx: ActionContext):
    action = ACTIONS[name]()
    plan = await action.plan(action.validate(args, ctx), ctx)
    return plan, await action.apply(Plan.from_json(json.loads(json.dumps(plan.to_json()))), ctx)


# --- service.restart ---

async def test_restart_runs_the_configured_argv_with_the_unit_in_place_of_the_placeholder(tmp_path):
    tool = argv_recorder(tmp_path)
    ctx = context({"restart_command": [tool, "restart", "{unit}", "app@{unit}"]}, units=("nginx.*", "app-*"))
    plan, outcome = await run("service.restart", {"unit": "nginx.service"}, ctx)
    assert plan.summary == "restart nginx.service"
    assert plan.steps == [shlex.join([tool, "restart", "nginx.service", "app@nginx.service"])]
    assert (plan.risk, plan.reversible, plan.deletes) == ("safe", True, False)
    assert outcome.ok and outcome.message == "restarted nginx.service"
    assert json.loads((tmp_path / "argv.json").read_text()) == ["restart", "nginx.service", "app@nginx.service"]
    assert outcome.details["exit_code"] == 0 and "nginx.service" in outcome.details["stdout_tail"]


@pytest.mark.parametrize(("units", "message"), [
    ((), "no service units are allowed; add them to \\[constraints\\] service_units"),
    (("nginx.service", "app-*.service"), "unit 'sshd.service' is not allowed \\(allowed units: nginx.service, "
                                         "app-\\*.service\\)"),
])
def test_a_unit_no_allowed_glob_matches_is_refused(units, message):
    with pytest.raises(ActionError, match=message) as e:
        ACTIONS["service.restart"]().validate({"unit": "sshd.service"}, context(units=units))
    assert e.value.permanent


@pytest.mark.parametrize("unit", ["-x", "a b", "", "x;reboot", "a" * 129, "$(id)"])
def test_unit_names_that_could_be_options_or_shell_fail_the_schema(unit):
    with pytest.raises(ValidationError):
        ACTIONS["service.restart"]().validate({"unit": unit}, context(units=("*",)))


async def test_a_failing_restart_is_not_ok_and_names_the_exit_code_and_last_stderr_line(tmp_path):
    ctx = context({"restart_command": [argv_recorder(tmp_path, exit_code=5), "{unit}"]}, units=("web",))
    _, outcome = await run("service.restart", {"unit": "web"}, ctx)
    assert not outcome.ok
    assert outcome.message == "restart of web failed with exit code 5: it went wrong"


async def test_a_restart_that_hangs_is_killed_with_its_children_at_the_timeout(tmp_path):
    ctx = context({"restart_command": [hanging(tmp_path), "{unit}"], "timeout": "0.5s"}, units=("web",))
    _, outcome = await run("service.restart", {"unit": "web"}, ctx)
    assert not outcome.ok and "did not finish within 0.5s and was killed" in outcome.message
    assert exited(int((tmp_path / "pid").read_text())) and exited(int((tmp_path / "child").read_text()))


async def test_a_missing_restart_program_is_a_clear_failure(tmp_path):
    ctx = context({"restart_command": [str(tmp_path / "nope"), "{unit}"]}, units=("web",))
    _, outcome = await run("service.restart", {"unit": "web"}, ctx)
    assert not outcome.ok and outcome.message == f"cannot run {str(tmp_path / 'nope')!r}: No such file or directory"


async def test_a_failing_status_command_marks_the_restart_failed(tmp_path):
    status = script(tmp_path, "#!/bin/sh\necho inactive >&2\nexit 3\n", "status")
    ctx = context({"restart_command": ["true", "{unit}"], "status_command": [status, "{unit}"]}, units=("web",))
    plan, outcome = await run("service.restart", {"unit": "web"}, ctx)
    assert plan.steps == ["true web", f"{status} web"]
    assert not outcome.ok
    assert outcome.message == "restarted web, but the status command failed with exit code 3: inactive"


async def test_apply_refuses_a_restart_plan_made_under_other_settings(tmp_path):
    action = ACTIONS["service.restart"]()
    planned_under = context({"restart_command": ["true", "{unit}"]}, units=("web",))
    plan = await action.plan(action.validate({"unit": "web"}, planned_under), planned_under)
    with pytest.raises(ActionError, match="settings changed since this plan"):
        await action.apply(plan, context({"restart_command": [argv_recorder(tmp_path), "{unit}"]}, units=("web",)))
    assert not (tmp_path / "argv.json").exists()


# --- command ---

def commands(tmp_path: Path, **overrides) -> dict:
    spec = {"name": "tool", "description": "a test tool", "argv": [argv_recorder(tmp_path), "--config", "{config}",
                                                                  "{note}", "n={count}"],
            "risk": "destructive", "reversible": False, "deletes": True, "timeout": "10s",
            "args": {"config": {"type": "path", "pattern": r"^/etc/app/[a-z]+\.conf$"},
                     "note": {"type": "string", "default": "none"},
                     "count": {"type": "int", "min": 1, "max": 5, "default": 1}}}
    spec.update(overrides)
    return {"commands": {spec["name"]: CommandSpec.model_validate(spec)}}


async def test_arguments_fill_placeholders_and_each_value_stays_one_argv_element(tmp_path):
    ctx = context(commands(tmp_path))
    note = "a b; rm -rf / && $(reboot) {config}"
    plan, outcome = await run("command", {"name": "tool", "args": {"config": "/etc/app/x.conf", "note": note,
                                                                     "count": "3"}}, ctx)
    expected = ["--config", "/etc/app/x.conf", note, "n=3"]
    assert json.loads(outcome.details["stdout_tail"]) == expected
    assert json.loads((tmp_path / "argv.json").read_text()) == expected
    assert plan.summary == "run tool: " + shlex.join([argv_recorder(tmp_path), *expected])
    assert (plan.risk, plan.reversible, plan.deletes) == ("destructive", False, True)
    assert outcome.ok and outcome.details["exit_code"] == 0 and outcome.details["stderr_tail"] == "it went wrong\n"


async def test_defaults_fill_arguments_that_are_not_given(tmp_path):
    ctx = context(commands(tmp_path))
    _, outcome = await run("command", {"name": "tool", "args": {"config": "/etc/app/x.conf"}}, ctx)
    assert json.loads(outcome.details["stdout_tail"]) == ["--config", "/etc/app/x.conf", "none", "n=1"]


@pytest.mark.parametrize(("args", "message"), [
    ({"config": "/etc/passwd"}, r"argument 'config' = '/etc/passwd' does not match \^/etc/app/"),
    ({"config": "/etc/app/../../etc/shadow"}, "expected an absolute path without '..'"),
    ({"config": "/etc/app/x.conf", "extra": 1}, r"command 'tool' has no argument 'extra' \(its arguments: config, "),
    ({}, "command 'tool' needs argument 'config'"),
    ({"config": "/etc/app/x.conf", "note": "-rf"}, "argument 'note' = '-rf': values starting with '-' are refused"),
    ({"config": "/etc/app/x.conf", "count": 9}, r"argument 'count' = 9 is outside \[1.0, 5.0\]"),
    ({"config": "/etc/app/x.conf", "count": True}, "argument 'count' = True: expected an integer"),
    ({"config": "/etc/app/x.conf", "note": 5}, "argument 'note' = 5: expected text"),
])
def test_arguments_that_break_their_schema_are_refused(tmp_path, args, message):
    with pytest.raises(ActionError, match=message) as e:
        ACTIONS["command"]().validate({"name": "tool", "args": args}, context(commands(tmp_path)))
    assert e.value.permanent


def test_allow_dash_lets_a_string_start_with_a_dash(tmp_path):
    ctx = context(commands(tmp_path, args={"config": {"type": "string", "allow_dash": True},
                                            "note": {"default": "x"}, "count": {"type": "int", "default": 1}}))
    ACTIONS["command"]().validate({"name": "tool", "args": {"config": "-v"}}, ctx)


def test_an_unknown_command_lists_the_declared_ones(tmp_path):
    with pytest.raises(ActionError, match=r"unknown command 'rm' \(declared: tool\)"):
        ACTIONS["command"]().validate({"name": "rm"}, context(commands(tmp_path)))
    with pytest.raises(ActionError, match="no commands are declared"):
        ACTIONS["command"]().validate({"name": "rm"}, context())


async def test_a_non_zero_exit_is_a_failed_outcome_with_its_code(tmp_path):
    ctx = context(commands(tmp_path, argv=[argv_recorder(tmp_path, exit_code=3), "{config}", "{note}", "{count}"]))
    _, outcome = await run("command", {"name": "tool", "args": {"config": "/etc/app/x.conf"}}, ctx)
    assert not outcome.ok and outcome.details["exit_code"] == 3
    assert outcome.message == "tool failed with exit code 3: it went wrong"


async def test_a_command_past_its_timeout_is_killed_with_its_children(tmp_path):
    ctx = context({"commands": {"hang": CommandSpec(name="hang", argv=[hanging(tmp_path)], timeout=0.5)}})
    _, outcome = await run("command", {"name": "hang"}, ctx)
    assert not outcome.ok and outcome.message == "hang did not finish within 0.5s and was killed"
    assert outcome.details["exit_code"] is None
    assert exited(int((tmp_path / "pid").read_text())) and exited(int((tmp_path / "child").read_text()))


async def test_a_daemon_left_holding_the_output_does_not_delay_the_outcome(tmp_path):
    tool = script(tmp_path, f"#!/bin/sh\nsetsid sleep 1000 &\necho $! > {tmp_path}/daemon\necho started\n")
    ctx = context({"commands": {"start": CommandSpec(name="start", argv=[tool], timeout=30)}})
    try:
        _, outcome = await run("command", {"name": "start"}, ctx)
        assert outcome.ok and outcome.details["stdout_tail"] == "started\n"
    finally:
        os.kill(int((tmp_path / "daemon").read_text()), signal.SIGKILL)


async def test_output_tails_keep_the_last_2000_characters(tmp_path):
    tool = script(tmp_path, "#!/bin/sh\nhead -c 5000 /dev/zero | tr '\\0' a\necho END\n")
    ctx = context({"commands": {"loud": CommandSpec(name="loud", argv=[tool])}})
    _, outcome = await run("command", {"name": "loud"}, ctx)
    tail = outcome.details["stdout_tail"]
    assert len(tail) == 2000 and tail.endswith("aaaEND\n")


async def test_apply_refuses_a_command_plan_when_the_declaration_changed(tmp_path):
    action = ACTIONS["command"]()
    ctx = context(commands(tmp_path))
    plan = await action.plan(action.validate({"name": "tool", "args": {"config": "/etc/app/x.conf"}}, ctx), ctx)
    with pytest.raises(ActionError, match="declaration of command 'tool' changed"):
        await action.apply(plan, context(commands(tmp_path, argv=["/bin/echo", "{config}", "{note}", "{count}"])))
    assert not (tmp_path / "argv.json").exists()


# --- notify ---

async def test_notify_plans_a_safe_message_and_sends_it_to_the_owner():
    notifier = RecordingNotifier()
    message = "disk /srv is 93% full;\nI deleted 2 GiB of old logs " + "and more " * 20
    plan, outcome = await run("notify", {"message": message, "title": "Disk", "severity": "warning"},
                              context(notifier=notifier))
    assert plan.summary == "tell the owner: " + " ".join(message.split())[:80]
    assert plan.risk == "safe" and not plan.deletes
    assert outcome.ok and notifier.sent == [("Disk", message, "warning")]


async def test_notify_without_a_notifier_fails():
    _, outcome = await run("notify", {"message": "hello"}, context())
    assert not outcome.ok and outcome.message == "no notifier"


def test_notify_refuses_messages_over_2000_characters():
    with pytest.raises(ValidationError):
        ACTIONS["notify"]().validate({"message": "x" * 2001}, context())


# --- kernel/*.toml ---

def test_the_shipped_kernel_actions_file_loads_without_issues():
    settings, issues = load_kernel(REPO / "kernel")
    assert issues == []
    assert settings.for_action("cleanup") == {"destructive_above": 100_000_000, "destructive_files": 1000}
    assert settings.for_action("service.restart")["restart_command"] == ["systemctl", "restart", "{unit}"]
    assert settings.for_action("command") == {"commands": {}}


def test_the_commented_example_command_in_the_shipped_file_is_valid():
    text = (REPO / "kernel" / "actions.toml").read_text()
    block = text[text.index("# [[commands]]"):]
    uncommented = "\n".join(line[2:] if line.startswith("# ") else line for line in block.splitlines())
    [spec] = KernelFile.model_validate(tomllib.loads(uncommented)).commands
    assert spec.name == "rotate-logs" and spec.argv == ["/usr/sbin/logrotate", "-f", "{config}"]


def test_settings_merge_across_files_in_name_order(tmp_path):
    (tmp_path / "a.toml").write_text('[cleanup]\ndestructive_files = 5\n[[commands]]\nname = "one"\nargv = ["true"]\n')
    (tmp_path / "b.toml").write_text('[cleanup]\ndestructive_above = "1GB"\n[service]\ntimeout = "2m"\n'
                                     '[[commands]]\nname = "two"\nargv = ["true"]\n')
    settings, issues = load_kernel(tmp_path)
    assert issues == []
    assert settings.for_action("cleanup") == {"destructive_above": 10**9, "destructive_files": 5}
    assert settings.for_action("service.restart")["timeout"] == 120
    assert list(settings.for_action("command")["commands"]) == ["one", "two"]


def test_bad_kernel_files_give_file_and_key_issues(tmp_path):
    files = {
        "a.toml": '[cleanup]\ndestructive_above = "lots"\n',
        "b.toml": '[[commands]]\nname = "x"\nargv = ["echo", "{v}"]\n[commands.args.v]\npattern = "(["\n',
        "c.toml": '[[commands]]\nname = "ok"\nargv = ["true"]\n[[commands]]\nname = "ok"\nargv = ["false"]\n',
        "d.toml": '[servce]\ntimeout = "1m"\n',
        "e.toml": '[service]\nrestart_command = "systemctl restart {unit}"\n',
        "f.toml": '[[commands]]\nname = "y"\nargv = ["echo", "{v}"]\n',
        "g.toml": '[cleanup]\ndestructive_files = 1\n[[commands]]\nname = "ok"\nargv = ["true"]\n',
        "h.toml": '[cleanup]\ndestructive_files = 2\n',
        "i.toml": 'not toml =',
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    _, issues = load_kernel(tmp_path)
    found = {(Path(i.file).name, i.key): i.message for i in issues}
    assert found.keys() == {("a.toml", "cleanup.destructive_above"), ("b.toml", "commands[0].args.v.pattern"),
                            ("c.toml", "commands[1].name"), ("d.toml", "servce"), ("e.toml", "service.restart_command"),
                            ("f.toml", "commands[0].argv"), ("g.toml", "commands[0].name"),
                            ("h.toml", "cleanup.destructive_files"), ("i.toml", "")}
    assert found[("b.toml", "commands[0].args.v.pattern")].startswith("not a valid regular expression")
    assert "duplicate command name 'ok'" in found[("g.toml", "commands[0].name")]
    assert found[("f.toml", "commands[0].argv")].startswith("placeholders ['v'] are not declared")
    assert "not a shell string" in found[("e.toml", "service.restart_command")]
    assert found[("h.toml", "cleanup.destructive_files")].startswith("also set in ")
