"""The `command` kind with real plugin scripts, and the Nagios perfdata parser."""

import math
import os
import time
from pathlib import Path

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from fazt_agent.clock import SystemClock
from fazt_agent.pulse import CHECKS
from fazt_agent.pulse.base import CheckContext
from fazt_agent.pulse.command import CommandConfig, metric_name, parse_perfdata, split_output
from fazt_agent.pulse.runner import run_check

CHECK_DUMMY = "/usr/lib/nagios/plugins/check_dummy"


async def run(config: dict, timeout: float = 10.0):
    kind = CHECKS["command"]
    check = kind(kind.Config.model_validate({"kind": "command", "name": "plugin", **config}))
    return await run_check(check, CheckContext(SystemClock()), timeout)


def script(tmp_path: Path, body: str, name: str = "plugin.sh") -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def gone(pid: int, within: float = 5.0) -> bool:
    """Whether `pid` is dead (or a zombie nobody reaps) within `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.01)
    return False


async def test_command_exit_0_is_ok_with_message_and_perfdata(tmp_path):
    plugin = script(tmp_path, "echo \"OK - load fine|load1=0.5;5;10;0; 'free space'=40%;20;10\"\nexit 0")
    [result] = await run({"command": [plugin]})
    assert result.status == "ok"
    assert result.target == "plugin"
    assert result.message == "OK - load fine"
    assert result.metrics == {"load1": 0.5, "free_space_percent": 40.0}
    assert result.details == {"exit_code": 0}


@pytest.mark.parametrize(("code", "status"), [(1, "warning"), (2, "critical"), (3, "unknown")])
async def test_command_exit_codes_follow_the_plugin_convention(tmp_path, code, status):
    plugin = script(tmp_path, f"echo 'SERVICE STATUS - it says so'\nexit {code}")
    [result] = await run({"command": [plugin]})
    assert (result.status, result.message) == (status, "SERVICE STATUS - it says so")


async def test_command_any_other_exit_code_is_unknown(tmp_path):
    plugin = script(tmp_path, "echo 'weird'\nexit 7")
    [result] = await run({"command": [plugin]})
    assert result.status == "unknown"
    assert result.message == "exit code 7 is not a plugin status: weird"


async def test_command_without_output_says_its_exit_code(tmp_path):
    [result] = await run({"command": [script(tmp_path, "exit 2")]})
    assert (result.status, result.message) == ("critical", "exit code 2, no output")


async def test_command_reads_long_output_and_perfdata_from_later_lines(tmp_path):
    plugin = script(tmp_path, """cat <<'EOF'
DISK OK - free space: / 3326 MB (56%); | /=2643MB;5948;5958;0;5968
/ 15272 MB (77%);
/boot 68 MB (69%); | /boot=68MB;88;93;0;98
/home=69357MB;253404;253409;0;253414
'var log'=818MB;970;975;0;980 time=12ms
EOF
exit 0""")
    [result] = await run({"command": [plugin, "-w", "5"], "target": "disks"})
    assert result.target == "disks"
    assert result.message == "DISK OK - free space: / 3326 MB (56%);"
    assert result.details["long_output"] == "/ 15272 MB (77%);\n/boot 68 MB (69%);"
    mib = 1024 * 1024
    assert result.metrics == {"root_bytes": 2643 * mib, "boot_bytes": 68 * mib, "home_bytes": 69357 * mib,
                              "var_log_bytes": 818 * mib, "time_seconds": pytest.approx(0.012)}


async def test_command_with_only_stderr_takes_its_message_from_stderr(tmp_path):
    plugin = script(tmp_path, "echo 'CRITICAL - socket gone' >&2\nexit 2")
    [result] = await run({"command": [plugin]})
    assert (result.status, result.message) == ("critical", "CRITICAL - socket gone")


async def test_command_keeps_stderr_in_details_when_stdout_speaks(tmp_path):
    plugin = script(tmp_path, "echo 'OK'\necho 'deprecated flag' >&2\nexit 0")
    [result] = await run({"command": [plugin]})
    assert result.details["stderr"] == "deprecated flag"


async def test_command_notes_unreadable_perfdata_without_failing(tmp_path):
    plugin = script(tmp_path, "echo 'OK | temp=45C good=1 rate=U;1;2 junk'\nexit 0")
    [result] = await run({"command": [plugin]})
    assert result.status == "ok"
    assert result.metrics == {"good": 1.0}
    assert result.details["perfdata_ignored"] == ["temp=45C", "rate=U;1;2", "junk"]


async def test_command_gets_its_env_and_cwd(tmp_path):
    plugin = script(tmp_path, 'echo "OK - $FAZT_TEST_VAR in $(pwd) with ${PATH:+path}"')
    [result] = await run({"command": [plugin], "env": {"FAZT_TEST_VAR": "hello"}, "cwd": "/tmp"})
    assert result.message == "OK - hello in /tmp with path"


async def test_command_argv_is_passed_without_a_shell(tmp_path):
    plugin = script(tmp_path, 'echo "OK - $1"')
    [result] = await run({"command": [plugin, "$(touch pwned); *"]})
    assert result.message == "OK - $(touch pwned); *"
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


async def test_command_timeout_is_unknown_and_kills_the_plugin_and_its_children(tmp_path):
    pids = tmp_path / "pids"
    plugin = script(tmp_path, f"sleep 30 &\necho $! > {pids}.child\necho $$ > {pids}\nwait")
    start = time.monotonic()
    [result] = await run({"command": [plugin]}, timeout=0.5)
    assert time.monotonic() - start < 5, "the check waited for the plugin instead of killing it"
    assert result.status == "unknown"
    assert result.message == "timed out after 0.5s"
    plugin_pid = int(Path(f"{pids}").read_text())
    child_pid = int(Path(f"{pids}.child").read_text())
    assert not psutil.pid_exists(plugin_pid), "the plugin was not killed and reaped"
    assert gone(child_pid), "the plugin's child survived the timeout"


async def test_a_plugin_that_leaves_a_child_holding_its_output_is_not_waited_for(tmp_path):
    pids = tmp_path / "pids"
    plugin = script(tmp_path, f"sleep 30 &\necho $! > {pids}\necho 'OK - served|latency=12ms'\nexit 0")
    start = time.monotonic()
    try:
        [result] = await run({"command": [plugin]}, timeout=10)
        assert time.monotonic() - start < 5, "the check waited for the plugin's background child"
        assert (result.status, result.message, result.metrics) == ("ok", "OK - served", {"latency_seconds": 0.012})
    finally:
        os.kill(int(pids.read_text()), 9)


async def test_command_missing_executable_is_unknown_with_a_clear_message(tmp_path):
    missing = str(tmp_path / "check_nothing")
    [result] = await run({"command": [missing, "-w", "1"]})
    assert result.status == "unknown"
    assert result.message == f"cannot run {missing!r}: No such file or directory"


async def test_command_not_executable_is_unknown(tmp_path):
    path = tmp_path / "plain.sh"
    path.write_text("#!/bin/sh\necho OK\n")
    [result] = await run({"command": [str(path)]})
    assert result.status == "unknown"
    assert "Permission denied" in result.message


async def test_command_missing_cwd_is_unknown_and_names_it(tmp_path):
    missing = str(tmp_path / "nowhere")
    [result] = await run({"command": [script(tmp_path, "echo OK")], "cwd": missing})
    assert result.status == "unknown"
    assert repr(missing) in result.message


async def test_monitoring_plugins_check_dummy_warns():
    assert os.access(CHECK_DUMMY, os.X_OK), (
        f"{CHECK_DUMMY} is missing: install Debian's monitoring-plugins-basic (`make test` does)")
    [result] = await run({"command": [CHECK_DUMMY, "1", "hello"]})
    assert (result.status, result.message) == ("warning", "WARNING: hello")


@pytest.mark.parametrize("config", [
    {"command": "/usr/lib/nagios/plugins/check_load -w 5"}, {"command": []}, {"command": ["x"], "shell": True},
])
def test_command_config_refuses_shell_strings_empty_argv_and_unknown_keys(config):
    with pytest.raises(ValidationError):
        CommandConfig.model_validate({"kind": "command", "name": "c", **config})


def test_command_config_explains_that_a_shell_string_is_not_an_argv():
    with pytest.raises(ValidationError, match="argv list"):
        CommandConfig.model_validate({"kind": "command", "name": "c", "command": "check_load -w 5"})


@pytest.mark.parametrize(("text", "metrics", "ignored"), [
    ("", {}, []),
    ("load1=0.5;5;10;0; 'free space'=40%;20;10", {"load1": 0.5, "free_space_percent": 40.0}, []),
    ("time=12ms;;;0 t2=5us t3=2s", {"time_seconds": 0.012, "t2_seconds": 5e-6, "t3_seconds": 2.0}, []),
    ("/=2643MB;5948 size=123B big=1TB low=2kb", {"root_bytes": 2643 * 1024**2, "size_bytes": 123.0,
                                                  "big_bytes": 1024.0**4, "low_bytes": 2048.0}, []),
    ("used_percent=5% rx=100c", {"used_percent": 5.0, "rx_total": 100.0}, []),
    ("'it''s here'=1 x=-1.5 y=.5 z=1e3", {"it_s_here": 1.0, "x": -1.5, "y": 0.5, "z": 1000.0}, []),
    ("a=U;1;2 temp=45C inf=1e999 nan=nan =3 '!!'=1", {}, ["a=U;1;2", "temp=45C", "inf=1e999", "nan=nan",
                                                          "=3", "'!!'=1"]),
    ("garbage 'unterminated=3 ok=1", {"ok": 1.0}, ["garbage", "'unterminated=3"]),
    ("  spaced=1   \n  lines=2  ", {"spaced": 1.0, "lines": 2.0}, []),
    ("a=@10:20 b=1;~:5;@0:3", {"b": 1.0}, ["a=@10:20"]),
])
def test_perfdata_parser_handles_edge_cases(text, metrics, ignored):
    assert parse_perfdata(text) == (pytest.approx(metrics), ignored)


def test_metric_names_are_snake_case():
    assert metric_name("Free Space") == "free_space"
    assert metric_name("/var/log") == "var_log"
    assert metric_name("/") == "root"
    assert metric_name("...") == ""


def test_split_output_follows_the_plugin_api():
    assert split_output("OK - fine") == ("OK - fine", "", "")
    assert split_output("OK|a=1\nline 2\nline 3|b=2\nc=3") == ("OK", "line 2\nline 3", "a=1 b=2\nc=3")


@given(st.text())
def test_perfdata_parser_never_raises_and_returns_finite_named_metrics(text):
    metrics, ignored = parse_perfdata(text)
    assert all(name and math.isfinite(value) for name, value in metrics.items())
    assert all(item.strip() == item and item for item in ignored)


@given(st.text())
def test_split_output_never_raises(text):
    message, long_output, perfdata = split_output(text)
    assert "\n" not in message and "|" not in message


_LABELS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz ", min_size=1, max_size=12).filter(str.strip)
_UNIT_FACTORS = {"": ("", 1), "%": ("_percent", 1), "ms": ("_seconds", 1e-3), "KB": ("_bytes", 1024)}


@given(label=_LABELS, value=st.floats(-1e12, 1e12, allow_nan=False), unit=st.sampled_from(sorted(_UNIT_FACTORS)))
def test_perfdata_parser_reads_back_what_a_plugin_writes(label, value, unit):
    suffix, factor = _UNIT_FACTORS[unit]
    name = metric_name(label)
    expected = name if name.endswith(suffix) else name + suffix
    metrics, ignored = parse_perfdata(f"'{label}'={value!r}{unit};1;2;0;100")
    assert ignored == []
    assert metrics == {expected: pytest.approx(value * factor)}
