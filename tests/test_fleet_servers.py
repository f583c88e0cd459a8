"""`fazt-agent servers ...` against real daemons on loopback, each with its own data dir and token:
the client config's shape and modes, smart defaults, and `servers ping` (parallel, a stopped server,
a refused token)."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from _mcp import create_token, listen, start_daemon, stop_process
from conftest import Ops, base_env, cli, free_port


def fleet_cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`fazt-agent ARGS` with HOME (where ~/.fazt/config.json lives) set to `home`."""
    return cli(*args, env=base_env(HOME=str(home), **env), cwd=home)


def make_ops(root: Path, name: str) -> Ops:
    assert cli("init", str(root / name)).returncode == 0
    ops = Ops(root / name)
    ops.set_config("http", "listen", f"127.0.0.1:{free_port()}")
    return ops


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[dict[str, tuple[Ops, subprocess.Popen[str], str]]]:
    """Three daemons (a, b, c), each with a read token."""
    running: dict[str, tuple[Ops, subprocess.Popen[str], str]] = {}
    try:
        for name in ("a", "b", "c"):
            ops = make_ops(tmp_path, name)
            if name == "b":
                ops.set_config("agent", "autonomy", "medium")
            running[name] = (ops, start_daemon(ops), create_token(ops, f"laptop-{name}", "read"))
        yield running
    finally:
        for _, proc, _ in running.values():
            if proc.poll() is None:
                stop_process(proc)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def add(home: Path, name: str, ops: Ops, token: str) -> None:
    result = fleet_cli(home, "servers", "add", name, "--url", f"http://{listen(ops)}", "--token", token)
    assert result.returncode == 0, result.stderr


def test_the_config_file_has_the_fazt_shape_private_modes_and_never_shows_tokens(home: Path) -> None:
    assert fleet_cli(home, "servers", "add", "zyt", "--url", "https://zyt.app", "--token", "fzt_one").returncode == 0
    result = fleet_cli(home, "servers", "add", "home", "--url", "http://10.0.0.5:7070", "--token-env", "TOK",
                       TOK="fzt_two")
    assert result.returncode == 0, result.stderr
    path = home / ".fazt" / "config.json"
    assert json.loads(path.read_text()) == {
        "version": 1, "default_server": "zyt",
        "servers": {"zyt": {"url": "https://zyt.app", "token": "fzt_one"},
                    "home": {"url": "http://10.0.0.5:7070", "token": "fzt_two"}}}
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]   # no temporary file left behind
    listed = fleet_cli(home, "servers", "list", "--json")
    assert json.loads(listed.stdout) == [{"name": "zyt", "url": "https://zyt.app", "default": True},
                                         {"name": "home", "url": "http://10.0.0.5:7070", "default": False}]
    table = fleet_cli(home, "servers", "list").stdout
    assert "fzt_" not in table + listed.stdout
    assert [ln.split()[:2] for ln in table.splitlines()[1:]] == [["*", "zyt"], ["home", "http://10.0.0.5:7070"]]
    assert fleet_cli(home, "servers", "default", "home").returncode == 0
    assert json.loads(path.read_text())["default_server"] == "home"
    assert fleet_cli(home, "servers", "remove", "home").returncode == 0
    assert json.loads(path.read_text()) == {"version": 1, "servers": {"zyt": {"url": "https://zyt.app",
                                                                              "token": "fzt_one"}}}


def test_bad_input_is_refused_clearly_and_changes_nothing(home: Path) -> None:
    assert fleet_cli(home, "servers", "add", "zyt", "--url", "https://zyt.app", "--token", "fzt_one").returncode == 0
    path = home / ".fazt" / "config.json"
    before = path.read_text()
    cases = {
        ("add", "x", "--url", "ftp://zyt.app", "--token", "t"): "expected http(s)://HOST",
        ("add", "bad name", "--url", "https://a.b", "--token", "t"): "server name 'bad name'",
        ("add", "x", "--url", "https://a.b"): "--token TOKEN or --token-env VAR",
        ("add", "x", "--url", "https://a.b", "--token-env", "FAZT_UNSET_VAR"): "FAZT_UNSET_VAR",
        ("default", "nope"): "no server named 'nope'",
        ("remove", "nope"): "configured: zyt",
        ("ping", "nope"): "no server named 'nope'",
    }
    for args, message in cases.items():
        result = fleet_cli(home, "servers", *args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert path.read_text() == before
    path.write_text('{"version": 1, "servers": {"zyt": {"url": 5}}}')
    broken = fleet_cli(home, "servers", "list")
    assert broken.returncode == 2 and f"{path}:servers.zyt" in broken.stderr


def test_smart_defaults_none_one_several_with_and_without_a_default(home: Path) -> None:
    none = fleet_cli(home, "servers", "default")
    assert none.returncode == 2 and "run `fazt-agent servers add" in none.stderr
    assert fleet_cli(home, "servers", "add", "a", "--url", "http://127.0.0.1:7070", "--token", "t").returncode == 0
    assert fleet_cli(home, "servers", "default").stdout.split()[0] == "a"
    assert fleet_cli(home, "servers", "add", "b", "--url", "http://127.0.0.1:7071", "--token", "t").returncode == 0
    assert fleet_cli(home, "servers", "default").stdout.split()[0] == "a"          # the first one added
    assert fleet_cli(home, "servers", "remove", "a").returncode == 0
    only = fleet_cli(home, "servers", "default")
    assert only.stdout.split()[0] == "b" and "the only server" in only.stdout
    assert fleet_cli(home, "servers", "add", "c", "--url", "http://127.0.0.1:7072", "--token", "t").returncode == 0
    several = fleet_cli(home, "servers", "default")
    assert several.returncode == 2 and "specify --server NAME or set a default" in several.stderr
    assert fleet_cli(home, "servers", "default", "c").returncode == 0
    assert fleet_cli(home, "servers", "default").stdout.split()[0] == "c"


def test_ping_reports_version_autonomy_and_latency_and_a_stopped_server_by_name(
        home: Path, fleet: dict[str, Any]) -> None:
    for name, (ops, _, token) in fleet.items():
        add(home, name, ops, token)
    result = fleet_cli(home, "servers", "ping", "--json")
    assert result.returncode == 0, result.stderr
    pongs = {p["name"]: p for p in json.loads(result.stdout)}
    version = cli("--version").stdout.split()[-1]
    assert {n: (p["ok"], p["version"], p["autonomy"]) for n, p in pongs.items()} == {
        "a": (True, version, "low"), "b": (True, version, "medium"), "c": (True, version, "low")}
    assert all(0 < p["latency_ms"] < 5000 for p in pongs.values())
    text = fleet_cli(home, "servers", "ping", "b")
    assert text.returncode == 0 and text.stdout.startswith(f"b: ok  fazt-agent {version}, autonomy medium, ")
    assert " ms" in text.stdout and "e+" not in text.stdout

    ops_c, proc_c, _ = fleet["c"]
    assert stop_process(proc_c)[0] == 0
    result = fleet_cli(home, "servers", "ping")
    assert result.returncode == 1
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert lines["a"].startswith("ok") and lines["b"].startswith("ok")
    assert lines["c"] == f"error  unreachable at http://{listen(ops_c)}: connection refused (is the daemon " \
                         "running, with [http] enabled?)"


def test_a_refused_token_and_a_silent_server_are_clear_errors(home: Path, fleet: dict[str, Any]) -> None:
    ops, _, token = fleet["a"]
    add(home, "a", ops, "fzt_" + "x" * 43)
    refused = fleet_cli(home, "servers", "ping", "a")
    assert refused.returncode == 1 and "refused the token (401" in refused.stdout
    assert "fzt_xxx" not in refused.stdout + refused.stderr
    assert ops.cli("tokens", "revoke", "laptop-a").returncode == 0
    add(home, "a", ops, token)
    assert "refused the token (401" in fleet_cli(home, "servers", "ping", "a").stdout

    # a listener that accepts and never answers: each server waits its timeout once, in parallel
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        for name in ("s1", "s2", "s3"):
            assert fleet_cli(home, "servers", "add", name, "--url", f"http://127.0.0.1:{silent.getsockname()[1]}",
                             "--token", "t").returncode == 0
        t0 = time.monotonic()
        result = fleet_cli(home, "servers", "ping", "--timeout", "1.5")
        elapsed = time.monotonic() - t0
    finally:
        silent.close()
    assert result.returncode == 1
    assert result.stdout.count("no answer from") + result.stdout.count("timed out") == 3, result.stdout
    assert elapsed < 1.5 * 3, f"{elapsed:.1f} s: the servers were not asked in parallel"


def test_servers_commands_need_no_config_toml_or_data_dir(home: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run([sys.executable, "-m", "fazt_agent", "servers", "list"], capture_output=True, text=True,
                            cwd=empty, env=base_env(HOME=str(home), XDG_DATA_HOME=str(tmp_path / "xdg")), timeout=60)
    assert result.returncode == 0 and "no servers" in result.stdout
    assert not (tmp_path / "xdg").exists()
