"""`fazt-agent mcp serve --stdio --fleet`, driven by the `mcp` Python client: every agent tool with
an optional `server`, `fazt_servers_list`, calls routed to each agent's /mcp, an approval passed
through to the client, and an unreachable server as a tool error naming it."""

from __future__ import annotations

import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp_types import ElicitRequestParams, ElicitResult

from _mcp import cleanup_args, create_token, destructive_junk, events, listen, start_daemon, stop_process
from conftest import Ops, base_env, cli, free_port
from test_fleet_remote import laptop

Fleet = dict[str, tuple[Ops, subprocess.Popen[str]]]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def fleet(tmp_path: Path, home: Path) -> Iterator[Fleet]:
    """Agents a and b (b at medium autonomy, asking before a destructive cleanup)."""
    running: Fleet = {}
    try:
        for name in ("a", "b"):
            assert cli("init", str(tmp_path / name)).returncode == 0
            ops = Ops(tmp_path / name)
            ops.set_config("http", "listen", f"127.0.0.1:{free_port()}")
            if name == "b":
                destructive_junk(ops, tmp_path)
            running[name] = (ops, start_daemon(ops))
            token = create_token(ops, f"laptop-{name}", "operate")
            assert laptop(home, "servers", "add", name, "--url", f"http://{listen(ops)}",
                          "--token", token).returncode == 0
        yield running
    finally:
        for _, proc in running.values():
            if proc.poll() is None:
                stop_process(proc)


@asynccontextmanager
async def fleet_client(home: Path, **kwargs: Any) -> AsyncIterator[Client]:
    params = StdioServerParameters(command=sys.executable, cwd=str(home),
                                   env=base_env(HOME=str(home), XDG_DATA_HOME=str(home / "xdg")),
                                   args=["-m", "fazt_agent", "mcp", "serve", "--stdio", "--fleet"])
    async with Client(params, **kwargs) as client:
        yield client


async def test_the_fleet_lists_its_servers_and_routes_each_call(home: Path, fleet: Fleet) -> None:
    ops_b, _ = fleet["b"]
    async with fleet_client(home) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        listed = await client.call_tool("fazt_servers_list", {})
        status_a = await client.call_tool("fazt_system_status", {"server": "a"})
        status_b = await client.call_tool("fazt_system_status", {"server": "b"})
        default = await client.call_tool("fazt_autonomy_get", {})
        unknown = await client.call_tool("fazt_system_status", {"server": "nope"})
    assert "fazt_servers_list" in tools and "fazt_halt_answer" in tools
    assert all("server" in t.input_schema["properties"] for n, t in tools.items() if n != "fazt_servers_list")
    assert tools["fazt_halt_answer"].input_schema["required"] == ["halt_id", "option"]
    assert listed.structured_content["default"] == "a"
    assert [(s["name"], s["default"]) for s in listed.structured_content["servers"]] == [("a", True), ("b", False)]
    assert status_a.structured_content["autonomy"] == "low" and status_b.structured_content["autonomy"] == "medium"
    assert status_b.structured_content["data_dir"] == str(ops_b.data_dir)
    assert default.structured_content["autonomy"] == "low"           # the default server, a
    assert unknown.is_error and "no server named 'nope'" in unknown.content[0].text
    calls = [(e["data"]["tool"], e["data"]["token"]) for e in events(ops_b, "mcp.call")]
    assert calls == [("fazt_system_status", "laptop-b")]


async def test_an_approval_the_agent_asks_for_is_passed_through_and_runs_once(
        home: Path, fleet: Fleet, tmp_path: Path) -> None:
    ops_b, _ = fleet["b"]
    root = tmp_path / "junk"
    asked: list[str] = []

    async def approve(context: Any, params: ElicitRequestParams) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(action="accept", content={"decision": "approve", "note": "via the fleet"})

    async with fleet_client(home, elicitation_callback=approve, mode="legacy") as client:
        run = await client.call_tool("fazt_action_run", {**cleanup_args(root), "server": "b"})
    assert not run.is_error, run.content
    assert run.structured_content["verdict"] == "ask" and run.structured_content["approval"] == "approved"
    assert len(asked) == 1 and asked[0].startswith("Run this now? delete 5 files")
    assert list(root.iterdir()) == []
    assert [e["data"]["action"] for e in events(ops_b, "action.started")] == ["cleanup"]
    assert [(e["data"]["option"], e["data"]["note"]) for e in events(ops_b, "halt.answered")] == [
        ("approve", "via the fleet")]
    assert events(fleet["a"][0], "action.*") == []


async def test_an_unreachable_server_is_a_tool_error_naming_it(home: Path, fleet: Fleet) -> None:
    ops_a, proc_a = fleet["a"]
    assert stop_process(proc_a)[0] == 0
    async with fleet_client(home) as client:
        up = await client.call_tool("fazt_system_status", {"server": "b"})
        down = await client.call_tool("fazt_system_status", {"server": "a"})
        assert down.is_error and f"server 'a' is unreachable at http://{listen(ops_a)}" in down.content[0].text
        assert stop_process(fleet["b"][1])[0] == 0        # b's kept session breaks ...
        fleet["b"] = (fleet["b"][0], start_daemon(fleet["b"][0]))
        again = await client.call_tool("fazt_system_status", {"server": "b"})   # ... and is opened again
    assert not up.is_error and not again.is_error and again.structured_content["autonomy"] == "medium"


async def test_a_read_token_is_refused_with_the_scope_named(home: Path, fleet: Fleet) -> None:
    ops_b, _ = fleet["b"]
    assert laptop(home, "servers", "add", "b-read", "--url", f"http://{listen(ops_b)}",
                  "--token", create_token(ops_b, "laptop-read", "read")).returncode == 0
    async with fleet_client(home) as client:
        refused = await client.call_tool("fazt_halt_answer", {"halt_id": 1, "option": "approve",
                                                              "server": "b-read"})
    assert refused.is_error
    assert "server 'b-read': fazt_halt_answer needs the 'operate' scope; the token 'laptop-read' has 'read'" \
        in refused.content[0].text
