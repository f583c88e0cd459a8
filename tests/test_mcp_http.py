"""/mcp over streamable HTTP on a real daemon (and `mcp serve --http`), with the `mcp` Python client:
bearer tokens and scopes, 401s, DNS-rebinding and size limits, elicitation, exactly-once halts."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import httpx
import pytest
from mcp_types import ElicitRequestParams, ElicitResult

from _mcp import (cleanup_args, create_token, destructive_junk, events, http_client, listen, mcp_url,
                  start_daemon, stdio_client, stop_process, wait_until)
from conftest import Ops, base_env, free_port

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}
HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


@pytest.fixture
def daemon(ops: Ops) -> Iterator[subprocess.Popen[str]]:
    proc = start_daemon(ops)
    yield proc
    if proc.poll() is None:
        code, _, err = stop_process(proc)
        assert code == 0, err


def post(ops: Ops, token: str | None = None, *, host: str | None = None, origin: str | None = None,
         body: bytes | None = None) -> httpx.Response:
    headers = dict(HEADERS)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if host is not None:
        headers["Host"] = host
    if origin is not None:
        headers["Origin"] = origin
    return httpx.post(mcp_url(ops), headers=headers, content=body or json.dumps(INIT).encode(), timeout=10)


def test_no_token_a_bad_token_or_a_revoked_token_gets_401_with_a_bearer_challenge(ops: Ops, daemon: Any) -> None:
    token = create_token(ops, "laptop", "read")
    assert post(ops, token).status_code == 200
    for bad in (None, "fzt_not-a-real-token", "Basic dXNlcjpwYXNz"):
        r = post(ops, bad)
        assert r.status_code == 401, bad
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert "tokens create" in post(ops).json()["error_description"]
    assert ops.cli("tokens", "revoke", "laptop").returncode == 0
    revoked = post(ops, token)
    assert revoked.status_code == 401 and 'error="invalid_token"' in revoked.headers["www-authenticate"]
    assert token not in daemon_log(daemon)


def daemon_log(proc: subprocess.Popen[str]) -> str:
    code, _, err = stop_process(proc)
    assert code == 0, err
    return err


def test_a_foreign_host_or_origin_is_refused_before_authentication(ops: Ops, daemon: Any) -> None:
    token = create_token(ops, "laptop", "read")
    port = listen(ops).rpartition(":")[2]
    assert post(ops, token, host="evil.example").status_code == 421
    assert post(ops, None, host=f"evil.example:{port}").status_code == 421
    assert post(ops, token, origin="http://evil.example").status_code == 403
    assert post(ops, token, host=f"localhost:{port}", origin=f"http://localhost:{port}").status_code == 200


def test_a_request_body_over_1_mib_is_413(ops: Ops, daemon: Any) -> None:
    token = create_token(ops, "laptop", "read")
    big = json.dumps({**INIT, "params": {**INIT["params"], "pad": "x" * (1024 * 1024)}}).encode()
    assert post(ops, token, body=big).status_code == 413
    assert post(ops, token).status_code == 200


async def test_scopes_read_operate_admin_and_each_refusal_names_the_scope_needed(ops: Ops, daemon: Any) -> None:
    tokens = {scope: create_token(ops, f"t-{scope}", scope) for scope in ("read", "operate", "admin")}
    async with http_client(mcp_url(ops), tokens["read"]) as client:
        status = await client.call_tool("fazt_system_status", {})
        refused = await client.call_tool("fazt_autonomy_set", {"level": "high"})
        run = await client.call_tool("fazt_action_run", {"name": "notify", "args": {"message": "hi"}})
    assert not status.is_error and status.structured_content["daemon"]["running"] is True
    assert refused.is_error and "'admin' scope" in refused.content[0].text and "t-read" in refused.content[0].text
    assert run.is_error and "'operate' scope" in run.content[0].text
    async with http_client(mcp_url(ops), tokens["operate"]) as client:
        plan = await client.call_tool("fazt_action_plan", {"name": "notify", "args": {"message": "hi"}})
        pause = await client.call_tool("fazt_agent_pause", {})
    assert not plan.is_error and plan.structured_content["verdict"] == "notify"   # low autonomy
    assert pause.is_error and "'admin' scope" in pause.content[0].text
    async with http_client(mcp_url(ops), tokens["admin"]) as client:
        changed = await client.call_tool("fazt_autonomy_set", {"level": "medium"})
    assert {k: changed.structured_content[k] for k in ("old", "new", "changed")} == {"old": "low", "new": "medium",
                                                                                    "changed": True}
    assert changed.structured_content["detail"]["by"] == "mcp:t-admin"
    calls = [c["data"] for c in events(ops, "mcp.call")]
    assert [(c["token"], c["tool"], c["outcome"]) for c in calls] == [
        ("t-read", "fazt_system_status", "ok"), ("t-read", "fazt_autonomy_set", "refused"),
        ("t-read", "fazt_action_run", "refused"), ("t-operate", "fazt_action_plan", "ok"),
        ("t-operate", "fazt_agent_pause", "refused"), ("t-admin", "fazt_autonomy_set", "ok")]
    assert {c["transport"] for c in calls} == {"http"}
    assert [e["data"]["by"] for e in events(ops, "autonomy.changed")] == ["mcp:t-admin"]
    listed = json.loads(ops.cli("tokens", "list", "--json").stdout)
    assert all(t["last_used_at"] for t in listed)


async def test_over_http_a_destructive_run_elicits_approval_and_runs_once(ops: Ops, tmp_path: Path) -> None:
    root, files = destructive_junk(ops, tmp_path)
    proc = start_daemon(ops)
    try:
        token = create_token(ops, "laptop", "operate")

        async def approve(context: Any, params: ElicitRequestParams) -> ElicitResult:
            return ElicitResult(action="accept", content={"decision": "approve", "note": "old logs"})

        async with http_client(mcp_url(ops), token, elicitation_callback=approve) as client:
            result = await client.call_tool("fazt_action_run", cleanup_args(root))
    finally:
        code, _, err = stop_process(proc)
    assert code == 0, err
    out = result.structured_content
    assert out["approval"] == "approved" and out["answer"]["ok"] is True, result.content
    assert not any(f.exists() for f in files)
    answered = [e["data"] for e in events(ops, "halt.answered")]
    assert answered == [{"halt_id": out["halt_id"], "option": "approve", "by": "mcp:laptop", "note": "old logs",
                        "channel": "mcp"}]


async def test_stdio_and_the_daemons_mcp_share_the_data_dir_and_a_halt_runs_exactly_once(
        ops: Ops, tmp_path: Path) -> None:
    root, files = destructive_junk(ops, tmp_path)
    proc = start_daemon(ops)
    try:
        token = create_token(ops, "laptop", "operate")
        async with stdio_client(ops) as local, http_client(mcp_url(ops), token) as remote:
            asked = (await local.call_tool("fazt_action_run", cleanup_args(root))).structured_content
            halt_id = asked["halt_id"]
            seen = (await remote.call_tool("fazt_halts_list", {})).structured_content["halts"]
            assert [h["id"] for h in seen] == [halt_id]
            answers = await asyncio.gather(
                local.call_tool("fazt_halt_answer", {"halt_id": halt_id, "option": "approve"}),
                remote.call_tool("fazt_halt_answer", {"halt_id": halt_id, "option": "approve"}))
    finally:
        code, _, err = stop_process(proc)
    assert code == 0, err
    won = [a for a in answers if not a.is_error]
    lost = [a for a in answers if a.is_error]
    assert len(won) == 1 and len(lost) == 1
    assert won[0].structured_content["executed"] is True and won[0].structured_content["ok"] is True
    assert f"halt #{halt_id} was already answered 'approve'" in lost[0].content[0].text
    assert not any(f.exists() for f in files)
    assert len(events(ops, "action.started")) == 1 and len(events(ops, "halt.answered")) == 1


@pytest.fixture
async def standalone(ops: Ops) -> AsyncIterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fazt_agent", "--config", str(ops.config), "mcp", "serve",
                             "--http", "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=base_env())

    def up() -> bool:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until("mcp serve --http", up)
    yield proc, f"http://127.0.0.1:{port}/mcp"
    if proc.poll() is None:
        stop_process(proc)


async def test_mcp_serve_http_runs_standalone_with_tokens_and_stops_promptly(ops: Ops, standalone: Any) -> None:
    proc, url = standalone
    token = create_token(ops, "laptop", "read")
    assert httpx.post(url, headers=HEADERS, content=json.dumps(INIT), timeout=10).status_code == 401
    async with http_client(url, token) as client:
        result = await client.call_tool("fazt_pulse_status", {})
        assert result.structured_content == {"results": []}
        code, elapsed, err = stop_process(proc)   # with the session (and its stream) still open
    assert code == 0 and elapsed < 5, err
    assert [c["data"]["token"] for c in events(ops, "mcp.call")] == ["laptop"]
