"""Nothing lost across a crash: the daemon, a CLI command or the MCP worker killed with SIGKILL at a
chosen point (the fault hook, `FAZT_AGENT_CRASH_AT`), then restarted. Afterwards the owner was asked
exactly once per halt, an approved plan ran exactly once, no action has two terminal events, and
the event chain verifies (`_crash.check`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, Iterator

import anyio
import httpx
import psutil
import pytest

from _crash import Scene, check, mcp_approve, mcp_session
from _helpers import wait_until
from conftest import Ops, base_env

from fazt_agent.store import Store


@pytest.fixture
def scene(ops: Ops, tmp_path: Path) -> Iterator[Scene]:
    s = Scene.create(ops.dir, tmp_path / "scene", base_env())
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield s
    s.hold.unlink(missing_ok=True)
    for p in psutil.Process().children(recursive=True):   # a daemon or CLI a failed test left behind
        if p.pid not in before:
            p.kill()


def asked(scene: Scene) -> sqlite3.Row:
    """The one pending halt, once its request notification went out."""
    def ready() -> Any:
        halts = scene.rows("SELECT h.* FROM halts h JOIN notifications n ON n.halt_id = h.id AND n.title = h.title"
                           " WHERE h.status = 'pending' AND n.status = 'sent'")
        return halts[0] if halts else None

    return wait_until("the owner to be asked", ready)


def assert_promises_kept(scene: Scene, *, halts: int = 1, runs: int | None = None) -> None:
    inv = check(scene)
    assert inv.problems == []
    assert inv.halts == inv.asked_once == halts and inv.resent_after_kill == 0
    assert inv.ran_once == inv.approved
    if runs is not None:
        assert scene.runs() == runs


def resumed_once(scene: Scene, daemon: subprocess.Popen[str], halt_id: int) -> None:
    """The daemon runs the plan of a halt approved on the command line, claimed and left unrun; then stops."""
    wait_until("the approved plan to run", lambda: scene.rows("SELECT 1 FROM actions WHERE halt_id = ? AND "
                                                              "state = 'succeeded'", (halt_id,)))
    wait_until("everything to settle", scene.settled)
    scene.stop(daemon)
    [resumed] = [e["data"] for e in scene.events("halt.resumed")]
    assert resumed["halt_id"] == halt_id and resumed["outcome"] == "run" and resumed["answered_by"] == "cli"


def files_edited(scene: Scene) -> None:
    """Edit config.toml (a comment) after the daemon started: `approve` then answers in its own process,
    not through the daemon's local socket (`answer/local.py`: the daemon read other bytes)."""
    with scene.config.open("a") as f:
        f.write("# edited after the daemon started\n")


def start_reports(scene: Scene) -> list[dict[str, Any]]:
    return [e["data"] for e in scene.events("agent.reconciled") if e["data"]["at_start"]]


# -- between an incident and the question to its owner ---------------------------------------

@pytest.mark.parametrize("point", ["incident.opened", "decision.made", "halt.row", "halt.requested"])
def test_a_daemon_killed_before_its_decision_committed_decides_once_after_restart(scene: Scene, point: str) -> None:
    scene.flag.touch()
    scene.killed(scene.daemon(crash_at=point))
    [incident] = scene.rows("SELECT * FROM incidents")
    assert incident["status"] == "open" and incident["due_trigger"] == "opened"
    assert scene.halts() == [] and scene.events("decision.made") == []   # nothing of the decision committed
    daemon = scene.daemon()
    halt = asked(scene)
    wait_until("everything to settle", scene.settled)
    scene.stop(daemon)
    decisions = [e["data"] for e in scene.events("decision.made")]
    assert [(d["trigger"], d["verdict"]) for d in decisions] == [("opened", "ask")]
    assert [e["data"]["halt_id"] for e in scene.events("halt.requested")] == [halt["id"]]
    [report] = start_reports(scene)
    assert report["decided"] == [incident["id"]]
    assert_promises_kept(scene)


def test_a_daemon_killed_after_the_decision_committed_sends_the_question_once_after_restart(scene: Scene) -> None:
    scene.flag.touch()
    scene.killed(scene.daemon(crash_at="decision.committed"))
    [halt] = scene.halts()
    [notification] = scene.rows("SELECT * FROM notifications WHERE halt_id = ?", (halt["id"],))
    assert halt["status"] == "pending" and notification["status"] == "pending"   # written, never sent
    assert [e["type"] for e in scene.events("halt.*")] == ["halt.requested"]
    daemon = scene.daemon()
    asked(scene)
    wait_until("everything to settle", scene.settled)
    scene.stop(daemon)
    assert len(scene.events("decision.made")) == 1 and len(scene.halts()) == 1
    [report] = start_reports(scene)
    assert report["resent"] == [notification["id"]]
    assert_promises_kept(scene)


# -- after an answer --------------------------------------------------------------------------

@pytest.mark.parametrize("restart", [False, True], ids=["daemon-alive", "daemon-killed-too"])
def test_an_approval_whose_cli_died_right_after_the_answer_runs_exactly_once(scene: Scene, restart: bool) -> None:
    scene.flag.touch()
    daemon = scene.daemon()
    halt = asked(scene)
    approve = scene.cli("approve", str(halt["id"]), crash_at="halt.answered", check=False)
    assert approve.returncode == -signal.SIGKILL
    answered = scene.halts()[0]
    assert answered["status"] == "answered" and answered["execution"] == "claimed" and answered["action_id"] is None
    if restart:
        scene.kill(daemon)
        daemon = scene.daemon()
    resumed_once(scene, daemon, halt["id"])
    [action] = scene.rows("SELECT * FROM actions")
    assert action["requested_by"] == "cli" and action["state"] == "succeeded"
    assert_promises_kept(scene, runs=1)


def test_an_approval_through_the_daemon_whose_command_was_killed_while_the_plan_ran_runs_once(scene: Scene) -> None:
    """`approve` answered by the daemon (its local socket): killing the waiting command stops
    nothing; the plan runs to its end in the daemon, which survives the reply it cannot send."""
    scene.flag.touch()
    scene.hold.touch()   # the fix waits while this exists
    daemon = scene.daemon()
    halt = asked(scene)
    command = scene.popen_cli("approve", str(halt["id"]))
    wait_until("the plan to start", lambda: scene.runs() == 1)
    command.kill()
    command.communicate()
    scene.hold.unlink()
    wait_until("the approved plan to finish", lambda: scene.rows("SELECT 1 FROM actions WHERE halt_id = ? AND "
                                                                 "state = 'succeeded'", (halt["id"],)))
    wait_until("everything to settle", scene.settled)
    scene.stop(daemon)
    assert scene.events("halt.resumed") == [] and scene.events("action.interrupted") == []   # the daemon ran it
    [action] = scene.rows("SELECT * FROM actions")
    assert action["requested_by"] == "cli" and action["state"] == "succeeded"
    assert_promises_kept(scene, runs=1)


def test_a_daemon_killed_after_answering_for_the_command_runs_the_plan_once_after_restart(scene: Scene) -> None:
    """The daemon dies between the answer and the plan while `approve` waits on its socket: the command
    says so (exit 1) and does not answer again; the restarted daemon runs the approved plan once."""
    scene.flag.touch()
    daemon = scene.daemon(crash_at="halt.answered")
    halt = asked(scene)
    approve = scene.cli("approve", str(halt["id"]), check=False)
    assert approve.returncode == 1 and "the daemon stopped before it answered" in approve.stderr, approve.stderr
    scene.killed(daemon)
    answered = scene.halts()[0]
    assert answered["answered_by"] == "cli" and answered["execution"] == "claimed" and answered["action_id"] is None
    daemon = scene.daemon()
    resumed_once(scene, daemon, halt["id"])
    assert_promises_kept(scene, runs=1)


def _listen(scene: Scene) -> str:
    return tomllib.loads(scene.config.read_text())["http"]["listen"]


def worker_of(scene: Scene) -> int:
    """The pid of the daemon's MCP worker (started by the first /mcp request)."""
    listen = _listen(scene)
    return wait_until("the MCP worker", lambda: httpx.get(f"http://{listen}/healthz", timeout=5).json()["mcp_worker_pid"])


def test_an_approval_over_mcp_whose_worker_and_daemon_died_runs_exactly_once_after_restart(scene: Scene) -> None:
    scene.flag.touch()
    daemon = scene.daemon(crash_at="halt.answered")   # the worker inherits it; the daemon answers nothing itself
    halt = asked(scene)
    token = scene.cli("tokens", "create", "laptop", "--scope", "operate").stdout.strip()
    url = f"http://{_listen(scene)}/mcp"
    headers = mcp_session(url, token)
    worker = worker_of(scene)
    reply = mcp_approve(url, headers, halt["id"])
    assert '"isError":false' not in reply.replace(" ", "")
    wait_until("the worker to be gone", lambda: not psutil.pid_exists(worker)
               or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE)
    answered = scene.halts()[0]
    assert answered["answered_by"] == "mcp:laptop" and answered["execution"] == "claimed"
    assert scene.rows("SELECT 1 FROM actions") == []   # killed before the plan ran
    scene.kill(daemon)
    daemon = scene.daemon()
    wait_until("the approved plan to run", lambda: scene.rows("SELECT 1 FROM actions WHERE state = 'succeeded'"))
    wait_until("everything to settle", scene.settled)
    scene.stop(daemon)
    [action] = scene.rows("SELECT * FROM actions")
    assert action["halt_id"] == halt["id"] and action["requested_by"] == "mcp:laptop"
    [report] = start_reports(scene)
    assert report["halts_run"] == [halt["id"]]
    assert_promises_kept(scene, runs=1)


def test_an_approval_over_mcp_outlives_the_daemon_and_its_worker_runs_it_once(scene: Scene) -> None:
    """Loss 1 of issue 10: the daemon dies right after an approval over MCP. Its worker, frozen at
    that point, is not robbed by the restarted daemon; let go, it runs the plan once and records it,
    though the daemon that started it is gone and its stdin closed."""
    scene.flag.touch()
    daemon = scene.daemon(pause_at="halt.answered")
    halt = asked(scene)
    token = scene.cli("tokens", "create", "laptop", "--scope", "operate").stdout.strip()
    url = f"http://{_listen(scene)}/mcp"
    headers = mcp_session(url, token)
    worker = worker_of(scene)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        reply = pool.submit(mcp_approve, url, headers, halt["id"])
        wait_until("the worker frozen right after the answer",
                   lambda: psutil.Process(worker).status() == psutil.STATUS_STOPPED)
        scene.kill(daemon)
        assert not reply.result(timeout=60).startswith("200")   # the client lost its answer with the daemon
    daemon = scene.daemon()
    [report] = wait_until("the restarted daemon's reconciliation", lambda: start_reports(scene))
    claimed = scene.halts()[0]
    assert report["left_to_owners"] == [f"approved halt #{halt['id']} being carried out by pid {worker}"]
    assert claimed["execution"] == "claimed" and claimed["owner"].startswith(f"{worker}/")
    assert scene.rows("SELECT 1 FROM actions") == [] and scene.events("halt.resumed") == []   # not stolen
    os.kill(worker, signal.SIGCONT)
    wait_until("the worker to finish and exit", lambda: not psutil.pid_exists(worker)
               or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE)
    wait_until("everything to settle", scene.settled)
    scene.stop(daemon)
    [action] = scene.rows("SELECT * FROM actions")
    assert action["state"] == "succeeded" and action["requested_by"] == "mcp:laptop"
    assert action["owner"].startswith(f"{worker}/")
    assert scene.events("halt.resumed") == [] and scene.events("action.interrupted") == []
    assert_promises_kept(scene, runs=1)


# -- during an apply owned by another process -------------------------------------------------

def test_a_restarting_daemon_leaves_the_cli_apply_running_alone(scene: Scene) -> None:
    scene.flag.touch()
    scene.hold.touch()   # the fix waits while it exists
    daemon = scene.daemon()
    halt = asked(scene)
    files_edited(scene)   # the command applies the plan in its own process
    approve = scene.popen_cli("approve", str(halt["id"]))
    wait_until("the CLI's apply to start", lambda: scene.runs() == 1)
    scene.kill(daemon)
    daemon = scene.daemon()
    [report] = wait_until("the restarted daemon's reconciliation", lambda: start_reports(scene))
    [action] = scene.rows("SELECT * FROM actions")
    assert report["interrupted"] == [] and report["left_to_owners"] == [
        f"action #{action['id']} (command) run by pid {approve.pid}"]
    scene.hold.unlink()
    out, err = approve.communicate(timeout=60)
    assert approve.returncode == 0, err
    assert "succeeded" in out
    wait_until("everything to settle", scene.settled)
    scene.stop(daemon)
    assert scene.events("action.interrupted") == []
    assert [e["type"] for e in scene.events("action.*") if e["type"] != "action.verified"] == [
        "action.started", "action.succeeded"]
    assert len(scene.events("decision.made")) == 1   # no fresh decision: nothing was interrupted
    assert_promises_kept(scene, runs=1)


def test_an_apply_whose_cli_was_killed_is_interrupted_by_the_running_daemon_and_decided_afresh(scene: Scene) -> None:
    scene.flag.touch()
    scene.hold.touch()
    daemon = scene.daemon()
    halt = asked(scene)
    files_edited(scene)   # the command applies the plan in its own process
    approve = scene.popen_cli("approve", str(halt["id"]))
    wait_until("the CLI's apply to start", lambda: scene.runs() == 1)
    approve.kill()   # its fix script, in a process group of its own, waits on (until the fixture lets it go)
    approve.communicate(timeout=30)
    wait_until("the action to be interrupted", lambda: scene.events("action.interrupted"))
    wait_until("a fresh question", lambda: len(scene.halts()) == 2 and scene.settled())
    scene.stop(daemon)
    [interrupted] = scene.events("action.interrupted")
    assert f"pid {approve.pid}) is gone" in interrupted["data"]["message"]
    decisions = [e["data"] for e in scene.events("decision.made")]
    assert [(d["trigger"], d["verdict"]) for d in decisions] == [("opened", "ask"), ("interrupted", "ask")]
    first, second = scene.halts()
    assert first["execution"] == "done" and second["status"] == "pending"
    assert_promises_kept(scene, halts=2, runs=1)


# -- concurrency --------------------------------------------------------------------------------

async def test_a_transaction_cancelled_again_and_again_leaves_the_connection_usable(tmp_path: Path) -> None:
    """anyio (the MCP SDK's task groups) cancels a task again at every await: a BEGIN caught by it
    must still be rolled back, or every later write fails with 'cannot start a transaction within a
    transaction' (the MCP worker's 'Task exception was never retrieved')."""
    store = await Store.open(tmp_path / "x.db")
    loop = asyncio.get_running_loop()
    unretrieved: list[Any] = []
    loop.set_exception_handler(lambda _, context: unretrieved.append(context))
    try:
        for delay in [0, 0.0001, 0.0003, 0.001, 0.003] * 6:
            async def write() -> None:
                while True:
                    await store.execute("INSERT INTO settings(key, value) VALUES('k', 'v') "
                                        "ON CONFLICT(key) DO UPDATE SET value = excluded.value")
            async with anyio.create_task_group() as tg:
                tg.start_soon(write)
                await anyio.sleep(delay)
                tg.cancel_scope.cancel()
            await store.execute("INSERT INTO settings(key, value) VALUES('k', 'after') "
                                "ON CONFLICT(key) DO UPDATE SET value = excluded.value")
            assert await store.get_setting("k") == "after"
    finally:
        await store.close()
    assert unretrieved == []


def test_a_failure_inside_an_mcp_tool_is_an_error_result_and_an_event_without_a_traceback(ops: Ops) -> None:
    assert ops.cli("beat").returncode in (0, 1)
    db = sqlite3.connect(ops.data_dir / "fazt-agent.db")
    with db:   # a damaged row: a halt whose plan is not JSON
        db.execute("INSERT INTO halts(title, body, plan, options, default_option, status, created_at, expires_at)"
                   " VALUES ('t', 'b', '{not json', '[\"approve\",\"deny\"]', 'deny', 'pending',"
                   " '2000-01-01T00:00:00Z', '2999-01-01T00:00:00Z')")
    db.close()
    server = subprocess.Popen([sys.executable, "-m", "fazt_agent", "--config", str(ops.config), "mcp", "serve",
                               "--stdio"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=base_env(), cwd=ops.dir)
    assert server.stdin is not None and server.stdout is not None

    def send(message: dict[str, Any]) -> None:
        server.stdin.write(json.dumps(message) + "\n")
        server.stdin.flush()

    def reply(id_: int) -> dict[str, Any]:
        while True:
            message = json.loads(server.stdout.readline())
            if message.get("id") == id_:
                return message

    try:
        send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
        reply(1)
        send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        send({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "fazt_halts_list", "arguments": {}}})
        result = reply(2)["result"]
    finally:
        server.stdin.close()
        server.stdin = None   # closed: the server ends at its EOF
        _, err = server.communicate(timeout=30)
    assert result["isError"] is True
    text = result["content"][0]["text"]
    assert "fazt_halts_list failed" in text and "JSONDecodeError" in text
    assert "Traceback" not in err and "Task exception was never retrieved" not in err
    calls = json.loads(ops.cli("events", "list", "--type", "mcp.call", "--json").stdout)
    assert [(c["data"]["tool"], c["data"]["outcome"]) for c in calls] == [("fazt_halts_list", "error")]
