"""`fazt-agent approve` and `deny` answered by the running daemon over its local socket
(`answer/local.py`): the command imports neither pydantic nor asyncio, the plan runs once in the
daemon, the output is what the command prints when it answers by itself; a daemon that read other
files, no daemon, or a daemon gone leaves the answer to the command; a malformed request is refused
and recorded, and the daemon serves the next one."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from _mcp import cleanup_args, destructive_junk, events, fill, listen
from conftest import Ops, base_env
from test_import_budget import LIGHT_NEVER, imports, packages


def ask(ops: Ops, root: Path) -> int:
    """A pending halt: `actions run cleanup` on `root` (refilled), which the policy asks about."""
    if not any(root.iterdir()):
        fill(root, 5)
    args = cleanup_args(root)["args"]
    result = ops.cli("actions", "run", "cleanup", "--arg", f"root={args['root']}", "--arg",
                     f"older_than={args['older_than']}", "--json")
    halt = json.loads(result.stdout).get("halt_id")
    assert halt, (result.stdout, result.stderr)
    return int(halt)


@pytest.fixture
def daemon(ops: Ops) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "fazt_agent", "--config", str(ops.config), "run"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=base_env(), cwd=ops.dir)
    sock = ops.dir / "data" / "agent.sock"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            if httpx.get(f"http://{listen(ops)}/healthz", timeout=1).status_code == 200 and sock.exists():
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    else:
        raise AssertionError("the daemon did not start")
    yield proc
    if proc.poll() is None:
        proc.terminate()
        proc.communicate(timeout=20)


def answered(ops: Ops, halt: int) -> dict[str, object]:
    rows = json.loads(ops.cli("halts", "list", "--all", "--json").stdout)
    return next(h for h in rows if h["id"] == halt)


def test_the_daemon_answers_and_the_command_stays_light(ops: Ops, tmp_path: Path) -> None:
    root, files = destructive_junk(ops, tmp_path)
    first = ask(ops, root)   # before the daemon: it starts under these files
    proc = None
    try:
        proc = subprocess.Popen([sys.executable, "-m", "fazt_agent", "--config", str(ops.config), "run"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=base_env(),
                                cwd=ops.dir)
        sock = ops.dir / "data" / "agent.sock"
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        result, modules = imports(ops, "approve", str(first))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"halt {first}: approve; done: ")
        never = LIGHT_NEVER | {"logging", "socket", "selectors", "sqlite3"}   # the daemon ran it
        assert not packages(modules) & never, sorted(packages(modules) & never)
        assert not any(p.exists() for p in files)
        halt = answered(ops, first)
        assert (halt["status"], halt["answer"], halt["answered_by"], halt["answered_via"]) == (
            "answered", "approve", "cli", "cli")
        # the same halt again: refused by the daemon, as the command refuses it by itself
        again = ops.cli("approve", str(first))
        assert again.returncode == 1 and "already answered" in again.stderr
        second = ask(ops, root)
        denied = ops.cli("deny", str(second), "--note", "not now", "--json")
        assert denied.returncode == 0, denied.stderr
        assert json.loads(denied.stdout)["halt"]["status"] == "answered"
        assert answered(ops, second)["note"] == "not now"
        missing = ops.cli("approve", "999999")
        assert missing.returncode == 1 and "999999" in missing.stderr
    finally:
        if proc is not None:
            proc.terminate()
            _, err = proc.communicate(timeout=20)
            assert proc.returncode == 0, err
    assert not (ops.dir / "data" / "agent.sock").exists()   # removed at stop
    ran = [e for e in events(ops, "action.*") if e["data"].get("action") == "cleanup"]
    assert len([e for e in ran if e["type"] == "action.succeeded"]) == 1, ran   # once
    # no daemon: the command answers by itself, alike
    third = ask(ops, root)
    result, modules = imports(ops, "deny", str(third))
    assert result.returncode == 0 and result.stdout == f"halt {third}: deny\n", result.stderr
    assert "pydantic" in packages(modules)


def test_a_daemon_that_read_other_files_leaves_the_answer_to_the_command(
        ops: Ops, tmp_path: Path, daemon: subprocess.Popen[str]) -> None:
    root, _ = destructive_junk(ops, tmp_path)   # edits the policy and kernel files after the daemon started
    halt = ask(ops, root)
    result, modules = imports(ops, "approve", str(halt))
    assert result.returncode == 0, result.stderr
    assert "pydantic" in packages(modules)   # validated here, under the files as they are now
    assert answered(ops, halt)["answer"] == "approve"
    assert daemon.poll() is None


def test_a_malformed_request_is_refused_and_recorded(ops: Ops, daemon: subprocess.Popen[str]) -> None:
    path = str(ops.dir / "data" / "agent.sock")
    requests = [b"not json\n", b'{"op": "answer"}\n', b'{"op": "drop", "halt": 1, "option": "approve", '
                b'"note": null, "stamp": ""}\n', b'{"op": "answer", "halt": true, "option": "approve", '
                b'"note": null, "stamp": ""}\n', b"x" * 70000 + b"\n"]
    replies = []
    for request in requests:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(path)
            conn.sendall(request)
            reply = b""
            while chunk := conn.recv(65536):
                reply += chunk
            replies.append(json.loads(reply))
    assert all(r["ok"] is False and r["error"].startswith("refused: ") for r in replies), replies
    refused = events(ops, "local.refused")
    assert len(refused) == len(requests)
    assert all(e["data"]["peer_pid"] == os.getpid() and e["data"]["peer_uid"] == os.getuid() for e in refused)
    assert "not JSON" in refused[0]["data"]["reason"]
    # a stale stamp is not a refusal: the command answers by itself
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(path)
        conn.sendall(b'{"op": "answer", "halt": 1, "option": "approve", "note": null, "stamp": "old"}\n')
        assert json.loads(conn.recv(65536)) == {"ok": False, "stale": True}
    assert daemon.poll() is None
    assert httpx.get(f"http://{listen(ops)}/healthz", timeout=5).status_code == 200
