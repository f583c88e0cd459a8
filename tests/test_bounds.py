"""Bad numbers and shapes never reach a traceback: ids and limits are bounded to SQLite's signed
64-bit range at the CLI and over MCP, durations and sizes are finite and at most 10 years / 1 EiB,
config floats are finite, TOML nesting is limited, and /mcp answers with each header once."""

from __future__ import annotations

import json
import math
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError

from _mcp import create_token, mcp_url, start_daemon, stdio_params, stop_process
from conftest import Ops, base_env, cli
from fazt_agent._toml import MAX_DEPTH, read_toml
from fazt_agent.cli._common import bounded
from fazt_agent.config import load_config
from fazt_agent.errors import ConfigError
from fazt_agent.units import INT64_MAX, INT64_MIN, MAX_DURATION, MAX_SIZE, parse_duration, parse_size

HUGE = str(10**20 - 1)   # 99999999999999999999: beyond 2**63 - 1
TOO_DEEP = f"too deeply nested (more than {MAX_DEPTH} levels)"


def one_error_line(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """The single `error: ...` line a refused command prints (and no traceback)."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# -- CLI: ids and limits ------------------------------------------------------------------------

@pytest.mark.parametrize("args, what", [
    (["approve", HUGE], "halt id"),
    (["deny", HUGE], "halt id"),
    (["halts", "show", HUGE], "halt id"),
    (["halts", "answer", HUGE, "approve"], "halt id"),
    (["incidents", "show", HUGE], "incident id"),
    (["decisions", "show", HUGE], "event id"),
    (["events", "list", "--limit", HUGE], "--limit"),
    (["incidents", "list", "--limit", HUGE], "--limit"),
    (["decisions", "list", "--limit", HUGE], "--limit"),
    (["events", "tail", "-n", HUGE], "--lines"),
])
def test_an_id_or_limit_beyond_64_bits_is_one_error_line(ops: Ops, args: list[str], what: str) -> None:
    line = one_error_line(ops.cli(*args))
    assert line == f"error: {what} must be at most 9,223,372,036,854,775,807, got {HUGE}"


@pytest.mark.parametrize("args, what, value", [
    (["approve", "0"], "halt id", "0"),
    (["deny", "--", "-5"], "halt id", "-5"),
    (["halts", "show", "--", "-1"], "halt id", "-1"),
    (["incidents", "show", "0"], "incident id", "0"),
    (["decisions", "show", "--", "-7"], "event id", "-7"),
])
def test_a_zero_or_negative_id_is_refused(ops: Ops, args: list[str], what: str, value: str) -> None:
    assert one_error_line(ops.cli(*args)) == f"error: {what} must be at least 1, got {value}"


@pytest.mark.parametrize("args, message", [
    (["pulse", "history", "--hours", "inf"], "--hours must be at most 87,600, got inf"),
    (["pulse", "history", "--hours", "1e308"], "--hours must be at most 87,600"),
    (["pulse", "trend", "disk.used_percent", "--hours", "inf"], "--hours must be at most 87,600, got inf"),
    (["events", "tail", "--poll", "inf"], "--poll must be at most 3,600, got inf"),   # waited forever
])
def test_an_infinite_number_of_hours_or_seconds_is_refused(ops: Ops, args: list[str], message: str) -> None:
    assert message in one_error_line(ops.cli(*args, timeout=30))


def test_a_since_beyond_ten_years_is_refused(ops: Ops) -> None:
    result = ops.cli("events", "list", "--since", "99999999999999999999d")
    assert "Traceback" not in result.stderr and result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: a duration must be at most 10 years (3650 d), got '99999999999999999999d'")


def test_an_action_argument_nested_too_deeply_is_refused(ops: Ops) -> None:
    deep = "[" * 5000 + "]" * 5000
    line = one_error_line(ops.cli("actions", "plan", "cleanup", "--arg", f"root={deep}"))
    assert line == "error: --arg root: the value is nested too deeply"


@pytest.mark.parametrize("args", [["events", "export"], ["events", "list"], ["status"]])
def test_output_to_a_full_disk_is_one_error_line(ops: Ops, args: list[str]) -> None:
    ops.cli("beat")   # a few events to write
    assert len(ops.cli("events", "export").stdout) > 100
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "fazt_agent", "--config", str(ops.config), *args],
                                stdout=full, stderr=subprocess.PIPE, text=True, timeout=60, env=base_env())
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    assert result.returncode == 1
    assert result.stderr.strip() == "error: No space left on device"


def test_init_into_a_path_under_a_file_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    line = one_error_line(cli("init", str(tmp_path / "a-file" / "ops")), code=1)
    assert line == f"error: Not a directory: {tmp_path / 'a-file' / 'ops'}"


# fuzz: every integer, far beyond 64 bits both ways. `bounded` is what every id and limit argument
# goes through; what it lets pass must fit SQLite, what it refuses is one line and exit 2.

@given(st.integers() | st.integers(min_value=INT64_MAX - 2, max_value=INT64_MAX + 2)
       | st.integers(min_value=-2, max_value=2) | st.integers(min_value=2**63, max_value=2**4000))
@settings(max_examples=500)
def test_fuzz_the_id_bound_lets_through_exactly_what_sqlite_stores(value: int) -> None:
    db = sqlite3.connect(":memory:")
    try:
        accepted = bounded(value, "halt id") == value
    except SystemExit as e:
        assert e.code == 2
        assert not 1 <= value <= INT64_MAX
        return
    assert accepted and 1 <= value <= INT64_MAX
    assert db.execute("SELECT ?", (value,)).fetchone() == (value,)   # no OverflowError


@given(value=st.integers(min_value=2**63) | st.integers(max_value=0),
       command=st.sampled_from([["approve"], ["deny"], ["halts", "show"], ["incidents", "show"],
                                ["decisions", "show"]]))
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fuzz_out_of_range_ids_through_the_real_cli(ops: Ops, value: int, command: list[str]) -> None:
    result = ops.cli(*command, "--", str(value))
    if len(str(value)) > 4300:   # Python refuses to parse it; typer says so (exit 2)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        return
    line = one_error_line(result)
    assert re.fullmatch(r"error: (halt|incident|event) id must be at (least 1|most 9,223,372,036,854,775,807), "
                        r"got (-?\d+|a number of about \d+ digits)", line), line


# -- MCP ------------------------------------------------------------------------------------------

INTEGER_INPUTS = [("fazt_events_list", "after_id", 0, {}), ("fazt_events_list", "incident_id", 1, {}),
                  ("fazt_decisions_list", "incident_id", 1, {}),
                  ("fazt_halt_answer", "halt_id", INT64_MIN, {"option": "deny"})]
PROBES = [-(2**64), INT64_MIN - 1, INT64_MIN, -1, 0, 1, INT64_MAX, INT64_MAX + 1, 2**64, 10**30]


async def test_mcp_integer_inputs_beyond_64_bits_are_invalid_input_without_a_traceback(
        ops: Ops, tmp_path: Path) -> None:
    errlog = tmp_path / "server-stderr.txt"
    with errlog.open("w") as err:
        async with Client(stdio_client(stdio_params(ops), errlog=err)) as client:
            schemas = {t.name: t.input_schema for t in (await client.list_tools()).tools}
            for tool, key, minimum, extra in INTEGER_INPUTS:
                schema = json.dumps(schemas[tool]["properties"][key])
                assert '"maximum": 9223372036854775807' in schema, (tool, schema)   # the client can see it
                for value in PROBES:
                    result = await client.call_tool(tool, {**extra, key: value})
                    text = " ".join(c.text for c in result.content)
                    if minimum <= value <= INT64_MAX:
                        # in range: answered normally, or "no such halt" for the halt
                        assert not result.is_error or "halt" in text, (tool, value, text)
                    else:
                        assert result.is_error and key in text and "validation error" in text, (tool, value, text)
            hours = await client.call_tool("fazt_events_list", {"since_hours": 1e300})
            assert hours.is_error and "since_hours" in " ".join(c.text for c in hours.content)
    stderr = errlog.read_text()
    assert "Traceback" not in stderr and "OverflowError" not in stderr, stderr


async def test_mcp_prompts_get_of_an_unknown_prompt_is_an_error_without_a_traceback(
        ops: Ops, tmp_path: Path) -> None:
    errlog = tmp_path / "server-stderr.txt"
    with errlog.open("w") as err:
        async with Client(stdio_client(stdio_params(ops), errlog=err)) as client:
            with pytest.raises(MCPError) as unknown:
                await client.get_prompt("nope")
            with pytest.raises(MCPError) as missing:
                await client.get_prompt("explain_decision")
            with pytest.raises(MCPError) as huge:
                await client.get_prompt("explain_decision", {"event_id": "9" * 5000})
            assert (await client.get_prompt("diagnose")).messages   # the known ones still work
    assert "unknown prompt 'nope' (the prompts: diagnose, explain_decision, weekly_report)" in str(unknown.value)
    assert unknown.value.error.code == -32602   # INVALID_PARAMS: the client's mistake, not ours
    assert "needs the argument(s): event_id" in str(missing.value)
    assert "event ids are at most 9,223,372,036,854,775,807" in str(huge.value)
    stderr = errlog.read_text()
    assert "Traceback" not in stderr, stderr


async def test_the_daemons_mcp_sends_each_header_once(ops: Ops) -> None:
    token = create_token(ops, "laptop", "read")
    daemon = start_daemon(ops)
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.post(mcp_url(ops), content=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}),
                                       headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                                                "Accept": "application/json, text/event-stream"})
        assert response.status_code < 500, response.text
        names = [k.decode().lower() for k, _ in response.headers.raw]
        assert names.count("date") == 1 and names.count("server") == 1, response.headers.raw
        assert len(names) == len(set(names)), response.headers.raw
    finally:
        code, _, err = stop_process(daemon)
        assert code == 0, err


@pytest.mark.parametrize("body", ["[" * 100_000, "[" * 5000 + "]" * 5000, '{"version": "4", "x": ' + "9" * 5000 + "}"])
def test_the_alertmanager_webhook_refuses_deep_or_huge_json_without_a_traceback(ops: Ops, body: str) -> None:
    token = create_token(ops, "alertmanager", "operate")
    daemon = start_daemon(ops)
    try:
        response = httpx.post(f"{mcp_url(ops).removesuffix('/mcp')}/webhooks/alertmanager", content=body,
                              headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                              timeout=30)
        assert response.status_code == 400, response.text
        assert response.json()["error"].startswith("the body is not JSON"), response.text
    finally:
        code, _, err = stop_process(daemon)
    assert code == 0 and "Traceback" not in err, err


# -- config: finite durations and floats, 64-bit integers, bounded nesting --------------------------

def test_an_infinite_interval_fails_config_check_and_run_with_file_and_key(ops: Ops) -> None:
    ops.set_config("pulse", "interval", math.inf)
    check = ops.cli("config", "check")
    assert check.returncode == 2 and "Traceback" not in check.stderr, check.stderr
    assert f"{ops.config}:pulse.interval: must be a finite number, got inf" in check.stderr
    run = ops.cli("run", timeout=30)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert f"{ops.config}:pulse.interval: must be a finite number, got inf" in run.stderr


def test_a_nan_halt_expiry_and_a_nan_threshold_fail_config_check(ops: Ops) -> None:
    policy = ops.dir / "policies" / "default.toml"
    text = policy.read_text()
    assert 'halt_expiry = "24h"' in text
    policy.write_text(text.replace('halt_expiry = "24h"', "halt_expiry = nan"))
    pulse = ops.write_pulse("disk", '[[checks]]\nname = "disk"\nkind = "disk"\nwarning = nan\n')
    result = ops.cli("config", "check")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"{policy}:defaults.halt_expiry: must be a finite number, got nan" in result.stderr
    assert f"{pulse}:checks[0].warning: must be a finite number, got nan" in result.stderr


def test_a_duration_beyond_ten_years_and_an_integer_beyond_64_bits_fail_config_check(ops: Ops) -> None:
    ops.set_config("pulse", "retention", "99999999999999999999w")
    result = ops.cli("config", "check")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert (f"{ops.config}:pulse.retention: a duration must be at most 10 years (3650 d), "
            "got '99999999999999999999w'") in result.stderr
    data = ops.read_config()
    data["pulse"]["retention"] = "7d"
    data["llm"]["budget"]["calls_per_hour"] = 10**20 - 1
    ops.config.write_text(tomli_w.dumps(data))
    result = ops.cli("config", "check")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"{ops.config}:llm.budget.calls_per_hour: integer out of range: TOML integers are 64-bit" in result.stderr


def test_a_toml_array_nested_5000_deep_is_one_config_error(ops: Ops) -> None:
    pulse = ops.write_pulse("deep", "x = " + "[" * 5000 + "]" * 5000 + "\n")
    result = ops.cli("config", "check")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "RecursionError" not in result.stderr, result.stderr
    assert f"{pulse}: {TOO_DEEP}" in result.stderr.splitlines()


# fuzz: durations and sizes of every shape either parse to a finite number in bounds or are a
# ValueError with a short message; never nan, inf, OverflowError or a message of 400 digits

DURATION_TEXT = st.from_regex(r"\A\s?[0-9]{1,400}(\.[0-9]{1,6})?\s?(ms|s|m|h|d|w)?\s?\Z")
NUMBERS = st.floats() | st.integers() | st.integers(min_value=2**1000, max_value=2**5000)


@given(DURATION_TEXT | NUMBERS | st.text(max_size=30) | st.booleans() | st.none())
@settings(max_examples=400)
def test_fuzz_durations_are_finite_and_at_most_ten_years(value: Any) -> None:
    try:
        seconds = parse_duration(value)
    except ValueError as e:
        assert len(str(e)) < 300 and "\n" not in str(e)
        return
    assert isinstance(seconds, float) and math.isfinite(seconds) and 0 <= seconds <= MAX_DURATION


@given(st.from_regex(r"\A[0-9]{1,400}(\.[0-9]{1,6})?\s?(k|m|g|t|p|ki|mi|gi|ti|pi)?b?\Z") | NUMBERS
       | st.text(max_size=30))
@settings(max_examples=400)
def test_fuzz_sizes_are_finite_and_at_most_one_eib(value: Any) -> None:
    try:
        size = parse_size(value)
    except ValueError as e:
        assert len(str(e)) < 300 and "\n" not in str(e)
        return
    assert isinstance(size, int) and 0 <= size <= MAX_SIZE


@given(st.floats() | st.integers() | st.integers(min_value=2**63 - 3, max_value=2**70)
       | DURATION_TEXT)
@settings(max_examples=150, deadline=None)
def test_fuzz_the_pulse_interval_through_the_config_loader(value: Any) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.toml"
        path.write_text(tomli_w.dumps({"pulse": {"interval": value}}))
        try:
            config = load_config(path, env={}, cwd=Path(folder))
        except ConfigError as e:
            assert e.issues and all(i.file == str(path) and i.key == "pulse.interval" for i in e.issues), e.issues
            return
        assert math.isfinite(config.file.pulse.interval) and 1 <= config.file.pulse.interval <= MAX_DURATION


# fuzz: nesting of every TOML form; at most MAX_DEPTH levels parse, deeper is the one issue

def nested(form: str, n: int) -> tuple[str, int]:
    """A TOML text nesting `n` levels by `form`, and the depth of its deepest table or array."""
    if form == "array":
        return "x = " + "[" * n + "]" * n + "\n", n
    if form == "inline":
        return "x = " + "{a = " * n + "1" + "}" * n + "\n", n
    if form == "dotted":
        return ".".join(["a"] * n) + " = 1\n", n - 1
    return "[" + ".".join(["a"] * n) + "]\nx = 1\n", n   # a table header


@given(form=st.sampled_from(["array", "inline", "dotted", "header"]),
       n=st.integers(min_value=1, max_value=5000) | st.integers(min_value=MAX_DEPTH - 2, max_value=MAX_DEPTH + 3))
@settings(max_examples=120, deadline=None)
def test_fuzz_toml_nesting_parses_up_to_the_limit_and_is_refused_beyond(form: str, n: int) -> None:
    import tempfile

    if form == "dotted":
        n = min(n, 1500)   # tomllib takes quadratic time over one long dotted key
    text, depth = nested(form, n)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "deep.toml"
        path.write_text(text)
        try:
            read_toml(path)
        except ConfigError as e:
            assert depth > MAX_DEPTH, (form, n, e)
            assert [str(i) for i in e.issues] == [f"{path}: {TOO_DEEP}"]
            return
        assert depth <= MAX_DEPTH, (form, n)
