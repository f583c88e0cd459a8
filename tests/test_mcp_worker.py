"""The daemon's /mcp runs in a worker process: started at the first request, stopped when idle,
replaced when it dies, never outliving the daemon."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import httpx
import psutil
import pytest

from _mcp import create_token, events, http_client, listen, mcp_url, start_daemon, stop_process, wait_until
from conftest import Ops, base_env
from fazt_agent.mcp.bridge import request_frame


@pytest.fixture
def daemon(ops: Ops) -> Iterator[subprocess.Popen[str]]:
    ops.set_config("http", "mcp_idle", "2s")
    proc = start_daemon(ops)
    yield proc
    if proc.poll() is None:
        code, _, err = stop_process(proc)
        assert code == 0, err


def worker_pid(ops: Ops) -> int | None:
    return httpx.get(f"http://{listen(ops)}/healthz", timeout=5).json()["mcp_worker_pid"]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def status(ops: Ops, token: str) -> dict[str, Any]:
    async with http_client(mcp_url(ops), token) as client:
        result = await client.call_tool("fazt_pulse_status", {})
    assert not result.is_error, result.content
    return result.structured_content


async def test_the_worker_starts_at_the_first_request_and_stops_when_idle(ops: Ops, daemon: Any) -> None:
    token = create_token(ops, "laptop", "read")
    assert worker_pid(ops) is None            # nothing started before /mcp is used
    await status(ops, token)
    pid = worker_pid(ops)
    assert pid is not None and psutil.Process(pid).ppid() == daemon.pid
    assert "mcp" in psutil.Process(pid).cmdline() and "--worker" in psutil.Process(pid).cmdline()
    wait_until("the idle worker to stop", lambda: gone(pid) and worker_pid(ops) is None, timeout=20)
    await status(ops, token)                  # a new session on a new worker
    again = worker_pid(ops)
    assert again is not None and again != pid
    calls = events(ops, "mcp.call")
    assert [c["data"]["tool"] for c in calls] == ["fazt_pulse_status", "fazt_pulse_status"]


async def test_a_worker_that_dies_is_replaced_at_the_next_request(ops: Ops, daemon: Any) -> None:
    token = create_token(ops, "laptop", "read")
    await status(ops, token)
    pid = worker_pid(ops)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until("the worker to die", lambda: gone(pid))
    await status(ops, token)
    assert worker_pid(ops) not in (None, pid)
    assert daemon.poll() is None


async def test_the_worker_keeps_the_checks_a_request_passes_through(ops: Ops, daemon: Any) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"})
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    refused = httpx.post(mcp_url(ops), headers=headers, content=body, timeout=10)
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    rebinding = httpx.post(mcp_url(ops), headers={**headers, "Host": "evil.example:80"}, content=body, timeout=10)
    assert rebinding.status_code == 421
    token = create_token(ops, "laptop", "read")
    big = httpx.post(mcp_url(ops), headers={**headers, "Authorization": f"Bearer {token}"},
                     content=b"x" * (1024 * 1024 + 10), timeout=10)
    assert big.status_code == 413


def test_the_worker_does_not_outlive_the_daemon_even_after_sigkill(ops: Ops) -> None:
    ops.set_config("http", "mcp_idle", "0s")  # never idle: only the daemon's end can stop it
    proc = start_daemon(ops)
    try:
        token = create_token(ops, "laptop", "read")
        response = httpx.post(mcp_url(ops), headers={
            "Content-Type": "application/json", "Accept": "application/json, text/event-stream",
            "Authorization": f"Bearer {token}"}, content=json.dumps({
                "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                    "protocolVersion": "2025-11-25", "capabilities": {},
                    "clientInfo": {"name": "raw", "version": "1"}}}), timeout=30)
        assert response.status_code == 200, response.text
        pid = worker_pid(ops)
        assert pid is not None
        proc.kill()
        proc.wait()
        wait_until("the orphaned worker to exit", lambda: gone(pid), timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_stopping_the_daemon_stops_its_worker(ops: Ops, daemon: Any) -> None:
    token = create_token(ops, "laptop", "read")
    response = httpx.post(mcp_url(ops), headers={
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream",
        "Authorization": f"Bearer {token}"}, content=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}),
        timeout=30)
    assert response.status_code in (200, 400), response.text   # any answer means the worker runs
    pid = worker_pid(ops)
    assert pid is not None
    code, elapsed, err = stop_process(daemon)
    assert code == 0 and elapsed < 5, err
    assert gone(pid)


def test_many_open_streams_do_not_starve_other_requests(ops: Ops, daemon: Any) -> None:
    token = create_token(ops, "laptop", "read")
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "Authorization": f"Bearer {token}"}
    init = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}})
    with httpx.Client(timeout=20) as client:
        streams = []
        try:
            for _ in range(16):   # each open GET stream holds a connection to the worker
                session = client.post(mcp_url(ops), headers=headers, content=init).headers["mcp-session-id"]
                stream = client.stream("GET", mcp_url(ops), headers={
                    **headers, "Accept": "text/event-stream", "Mcp-Session-Id": session,
                    "Mcp-Protocol-Version": "2025-11-25"})
                response = stream.__enter__()
                streams.append(stream)
                assert response.status_code == 200
            answer = client.post(mcp_url(ops), headers=headers, content=init)
            assert answer.status_code == 200 and answer.headers["mcp-session-id"]
        finally:
            for stream in streams:
                stream.__exit__(None, None, None)


def test_a_client_that_leaves_mid_stream_frees_its_connection_to_the_worker(ops: Ops) -> None:
    """The daemon watches a response's client once the response has run a while (`bridge.WATCH_AFTER`):
    a client gone from an open stream still closes the stream's connection, and so ends it in the worker."""
    ops.set_config("http", "mcp_idle", "60s")   # the worker stays for the whole test
    proc = start_daemon(ops)
    try:
        token = create_token(ops, "laptop", "read")
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
                   "Authorization": f"Bearer {token}"}
        init = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}})
        with httpx.Client(timeout=20) as client:
            session = client.post(mcp_url(ops), headers=headers, content=init).headers["mcp-session-id"]
            pid = worker_pid(ops)
            assert pid is not None
            with client.stream("GET", mcp_url(ops), headers={
                    **headers, "Accept": "text/event-stream", "Mcp-Session-Id": session,
                    "Mcp-Protocol-Version": "2025-11-25"}) as response:
                assert response.status_code == 200
                open_streams = worker_connections(pid)   # the stream holds one (the daemon keeps no other idle)
                assert open_streams == 1
            wait_until("the worker to see the client leave", lambda: worker_connections(pid) == 0, timeout=10)
            assert client.post(mcp_url(ops), headers=headers, content=init).status_code == 200   # still serving
    finally:
        code, _, err = stop_process(proc)
    assert code == 0, err


def worker_connections(pid: int) -> int:
    """The worker's connections from the daemon: one per request or stream in flight, or kept idle by the
    daemon (its socket's name is theirs too; the listening socket is not counted)."""
    return sum(c.laddr.startswith("@fazt-mcp-") for c in psutil.Process(pid).net_connections(kind="unix")) - 1


def test_a_worker_never_serves_another_data_dir_than_the_daemons(ops: Ops, daemon: Any, tmp_path: Path) -> None:
    token = create_token(ops, "laptop", "read")
    ops.set_config("agent", "data_dir", str(tmp_path / "elsewhere"))   # edited after the daemon started
    refused = httpx.post(mcp_url(ops), headers={"Authorization": f"Bearer {token}"}, content=b"{}", timeout=30)
    assert refused.status_code == 503
    message = refused.json()["error"]
    assert message.startswith("the MCP worker did not start") and "restart the daemon" in message
    assert str(tmp_path / "elsewhere") in message and not (tmp_path / "elsewhere").exists()
    assert worker_pid(ops) is None and daemon.poll() is None


def worker_socket(pid: int) -> str:
    """The unix socket a worker serves the daemon on, as /proc/net/unix names it (its listening
    socket and its connections all carry the same name)."""
    names = {c.laddr for c in psutil.Process(pid).net_connections(kind="unix") if c.laddr}
    assert len(names) == 1, names
    return names.pop()


async def test_the_worker_answers_the_daemon_alone_on_an_abstract_socket_and_no_port(ops: Ops, daemon: Any) -> None:
    token = create_token(ops, "laptop", "read")
    await status(ops, token)
    pid = worker_pid(ops)
    assert pid is not None
    listening = [c for c in psutil.Process(pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert listening == []                       # nothing on the network but the daemon's own port
    name = worker_socket(pid)
    assert name.startswith("@fazt-mcp-")         # Linux's abstract namespace: no file to protect or leave behind
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:   # any process but the daemon ...
        other.settimeout(10)
        other.connect("\0" + name[1:])
        request = request_frame({"method": "POST", "path": "/mcp"}, [(b"authorization", f"Bearer {token}".encode())],
                                b"{}")   # a well-formed request, as the daemon would send it
        try:
            other.sendall(request)
            answer = other.recv(100)
        except (BrokenPipeError, ConnectionResetError):   # hung up on before the request was all sent
            answer = b""
        assert answer == b""                     # ... is hung up on, unanswered
    await status(ops, token)                     # the daemon still is not
    assert worker_pid(ops) == pid
    code, _, err = stop_process(daemon)
    assert code == 0 and "refused a connection to the MCP worker" in err, err


# the daemon as `python -m fazt_agent ... run`, writing the modules it imported to argv[1] at exit
RECORD = ("import atexit, json, sys, runpy; out = sys.argv.pop(1); "
          "atexit.register(lambda: open(out, 'w').write(json.dumps(sorted(sys.modules)))); "
          "sys.argv[0] = 'fazt-agent'; runpy.run_module('fazt_agent', run_name='__main__')")


async def test_serving_mcp_loads_neither_the_sdk_nor_an_http_client_into_the_daemon(ops: Ops, tmp_path: Path) -> None:
    """The worker does the MCP work; the daemon passes ASGI messages to it over its socket."""
    out = tmp_path / "daemon-modules.json"
    proc = subprocess.Popen([sys.executable, "-c", RECORD, str(out), "--config", str(ops.config), "run"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=base_env())
    try:
        def healthy() -> bool:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                return httpx.get(f"http://{listen(ops)}/healthz", timeout=1).status_code in (200, 503)
            except httpx.HTTPError:
                return False

        wait_until("the daemon's /healthz", healthy)
        token = create_token(ops, "laptop", "read")
        await status(ops, token)
        assert worker_pid(ops) is not None
    finally:
        code, _, err = stop_process(proc)
    assert code == 0, err
    packages = {m.split(".")[0] for m in json.loads(out.read_text())}
    assert not packages & {"mcp", "mcp_types", "httpcore", "httpx", "h2", "sse_starlette"}, sorted(packages)
    assert [c["data"]["tool"] for c in events(ops, "mcp.call")] == ["fazt_pulse_status"]
