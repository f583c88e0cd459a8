"""What the crash tests and scripts/crash-campaign share: a scene whose incident asks the owner, a
daemon (or a CLI command, or the MCP worker) killed at a named point by the fault hook
(`FAZT_AGENT_CRASH_AT`, fazt_agent/_faults.py), and the invariants that must hold afterwards.

The scene: a `command` check that is critical while a flag file exists; a rule proposes the
declared command `fix` (destructive, so the policy asks at medium autonomy); `fix` appends a line
to a runs file (so a test counts how often an approved plan ran), waits while a hold file exists
(so an apply can be held open as long as a test needs), then removes the flag.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import tomli_w

from _helpers import wait_until  # noqa: F401 (scripts/crash-campaign imports it from here)

TERMINAL = ("action.succeeded", "action.failed", "action.ineffective", "action.interrupted")


def env(base: dict[str, str], crash_at: str | None = None, pause_at: str | None = None) -> dict[str, str]:
    out = {k: v for k, v in base.items() if not k.startswith("FAZT_AGENT_")}
    if crash_at:
        out["FAZT_AGENT_CRASH_AT"] = crash_at
    if pause_at:
        out["FAZT_AGENT_PAUSE_AT"] = pause_at
    return out


@dataclass
class Scene:
    """An ops folder (from `fazt-agent init`) set up for halts that can be approved and counted."""

    dir: Path            # the ops folder
    work: Path           # the scene's own files
    base_env: dict[str, str]
    runs_started: int = 0   # daemons started (each logs to work/daemon-N.log, its MCP worker too)

    @property
    def config(self) -> Path:
        return self.dir / "config.toml"

    @property
    def db_path(self) -> Path:
        return self.dir / "data" / "fazt-agent.db"

    @property
    def flag(self) -> Path:
        return self.work / "broken"

    @property
    def runs_file(self) -> Path:
        return self.work / "runs"

    @property
    def hold(self) -> Path:
        return self.work / "hold"

    @classmethod
    def create(cls, ops_dir: Path, work: Path, base_env: dict[str, str]) -> Scene:
        work.mkdir(parents=True, exist_ok=True)
        scene = cls(ops_dir, work, base_env)
        fix = work / "fix.sh"
        fix.write_text(f"#!/bin/sh\necho run >> '{scene.runs_file}'\n"
                       f"while [ -f '{scene.hold}' ]; do sleep 0.05; done\nrm -f '{scene.flag}'\n")
        fix.chmod(0o755)
        (ops_dir / "kernel" / "actions.toml").write_text(
            f'[[commands]]\nname = "fix"\nargv = ["{fix}"]\nrisk = "destructive"\nreversible = false\n'
            'timeout = "120s"\n')
        (ops_dir / "policies" / "local.toml").write_text(
            '[[rules]]\nname = "fix-app"\nmatch = { check = ["app"] }\naction = "command"\nargs = { name = "fix" }\n'
            'cooldown = "0s"\nmax_actions = 1000\n')   # a scene asks again and again
        for p in (ops_dir / "pulse").glob("*.toml"):
            p.unlink()
        (ops_dir / "pulse" / "app.toml").write_text(
            '[[checks]]\nname = "app"\nkind = "command"\nflap_count = 0\n'   # a scene breaks it again and again
            f'command = ["/bin/sh", "-c", "if [ -f \'{scene.flag}\' ]; then echo CRITICAL - broken; exit 2; fi; '
            'echo OK - fine"]\n')
        config = tomllib.loads(scene.config.read_text())
        config["agent"]["autonomy"] = "medium"     # destructive plans ask
        config["pulse"]["interval"] = "1s"
        scene.config.write_text(tomli_w.dumps(config))
        return scene

    # -- processes ------------------------------------------------------------------------

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "fazt_agent", "--config", str(self.config), *args]

    def cli(self, *args: str, crash_at: str | None = None, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout,
                              env=env(self.base_env, crash_at), cwd=self.dir)
        if check and done.returncode != 0:
            raise AssertionError(f"fazt-agent {' '.join(args)} exited {done.returncode}: {done.stderr}")
        return done

    def popen_cli(self, *args: str, crash_at: str | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env(self.base_env, crash_at), cwd=self.dir)

    def daemon(self, crash_at: str | None = None, pause_at: str | None = None) -> subprocess.Popen[str]:
        """`fazt-agent run`; its log (the notification channel) goes to a file of its own, which its
        MCP worker shares (a pipe would stay open while a frozen worker holds it)."""
        self.runs_started += 1
        with open(self.work / f"daemon-{self.runs_started}.log", "w") as log:
            return subprocess.Popen(self.argv("run"), stdout=subprocess.DEVNULL, stderr=log, text=True,
                                    env=env(self.base_env, crash_at, pause_at), cwd=self.dir)

    @property
    def logs(self) -> str:
        """Everything the daemons (and their MCP workers) logged."""
        return "".join(p.read_text(errors="replace") for p in sorted(self.work.glob("daemon-*.log")))

    def killed(self, proc: subprocess.Popen[str], timeout: float = 60) -> None:
        """Wait for a process the fault hook kills."""
        try:
            proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise AssertionError(f"the process never reached its crash point; log:\n{self.logs[-3000:]}") from None
        if proc.returncode != -signal.SIGKILL:
            raise AssertionError(f"expected death by SIGKILL, got exit {proc.returncode}; log:\n{self.logs[-3000:]}")

    def kill(self, proc: subprocess.Popen[str]) -> None:
        """SIGKILL a process now."""
        proc.send_signal(signal.SIGKILL)
        self.killed(proc)

    def stop(self, proc: subprocess.Popen[str], timeout: float = 15) -> None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise AssertionError(f"the daemon did not stop on SIGTERM; log:\n{self.logs[-3000:]}") from None
        if proc.returncode != 0:
            raise AssertionError(f"the daemon exited {proc.returncode}; log:\n{self.logs[-3000:]}")

    # -- the database -------------------------------------------------------------------------

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        if not self.db_path.exists():
            return []
        with sqlite3.connect(self.db_path, timeout=30) as db:
            db.row_factory = sqlite3.Row
            try:
                return list(db.execute(sql, params))
            except sqlite3.OperationalError as e:
                if "no such table" in str(e):
                    return []
                raise

    def events(self, type_glob: str = "*") -> list[dict[str, Any]]:
        return [{**dict(r), "data": json.loads(r["data"])}
                for r in self.rows("SELECT * FROM events WHERE type GLOB ? ORDER BY id", (type_glob,))]

    def halts(self) -> list[sqlite3.Row]:
        return self.rows("SELECT * FROM halts ORDER BY id")

    def runs(self) -> int:
        return len(self.runs_file.read_text().splitlines()) if self.runs_file.exists() else 0

    def beats_since_start(self) -> int:
        """Beats of the daemon started last (its reconciler ran before its first beat)."""
        started = self.rows("SELECT MAX(id) FROM events WHERE type = 'agent.started'")[0][0] or 0
        return self.rows("SELECT COUNT(*) FROM events WHERE type = 'pulse.beat' AND id > ?", (started,))[0][0]

    def settled(self) -> bool:
        """Nothing left to do: no decision due, no action running, no approved halt unfinished,
        no notification waiting for an attempt."""
        return not (self.rows("SELECT 1 FROM incidents WHERE status = 'open' AND due_trigger IS NOT NULL")
                    or self.rows("SELECT 1 FROM actions WHERE state = 'running'")
                    or self.rows("SELECT 1 FROM halts WHERE execution = 'claimed' OR (execution IS NULL AND "
                                 "status = 'answered' AND answer = 'approve')")
                    or self.rows("SELECT 1 FROM notifications WHERE status = 'pending'"))


@dataclass
class Invariants:
    halts: int = 0
    asked_once: int = 0
    approved: int = 0
    ran_once: int = 0
    actions: int = 0
    problems: list[str] = field(default_factory=list)
    resent_after_kill: int = 0   # a kill between sending and recording it: the log channel shows it twice


def check(scene: Scene, *, logs: bool = True) -> Invariants:
    """The promises after any crash: every halt asked exactly once (one notification row, sent; in
    the log channel), every approved plan started exactly once (one action row: never two; none only
    when it was re-planned and asked again, or closed), every action with exactly one terminal
    event, and the event chain intact."""
    inv = Invariants()
    text = scene.logs
    for h in scene.halts():
        inv.halts += 1
        asked = [r["status"] for r in scene.rows("SELECT status FROM notifications WHERE halt_id = ? AND title = ?",
                                                 (h["id"], h["title"]))]
        seen = text.count(f"Answer: fazt-agent approve {h['id']}  |")
        if asked == ["sent"] and (not logs or seen >= 1):
            inv.asked_once += 1
            if logs and seen > 1:
                inv.resent_after_kill += 1
        else:
            inv.problems.append(f"halt {h['id']}: request notifications {asked}, {seen} in the log channel")
        approved = (h["status"] == "answered" and h["answer"] == "approve") or (
            h["status"] == "expired" and h["answer"] != "deny")
        if not approved:
            continue
        inv.approved += 1
        actions = scene.rows("SELECT id FROM actions WHERE halt_id = ?", (h["id"],))
        if len(actions) == 1 or (not actions and h["execution"] in ("replanned", "done")):
            inv.ran_once += 1
        else:
            inv.problems.append(f"approved halt {h['id']}: {len(actions)} actions, execution {h['execution']}")
    ends = Counter(e["data"]["action_id"] for e in scene.events("action.*") if e["type"] in TERMINAL)
    for a in scene.rows("SELECT id, state FROM actions"):
        inv.actions += 1
        expected = 0 if a["state"] == "running" else 1
        if ends.get(a["id"], 0) != expected:
            inv.problems.append(f"action {a['id']} ({a['state']}): {ends.get(a['id'], 0)} terminal events")
    verify = scene.cli("events", "verify", check=False)
    if verify.returncode != 0:
        inv.problems.append(f"events verify: {verify.stdout} {verify.stderr}")
    return inv


# -- MCP over the daemon's /mcp (raw JSON-RPC: a broken exchange is just an error) -----------------

def mcp_session(url: str, token: str) -> dict[str, str]:
    """A new MCP session over streamable HTTP (raw JSON-RPC); returns the headers that carry it."""
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "Authorization": f"Bearer {token}"}
    init = httpx.post(url, headers=headers, timeout=60, json={
        "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "crash", "version": "1"}}})
    assert init.status_code == 200, init.text
    headers = {**headers, "mcp-session-id": init.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    httpx.post(url, headers=headers, timeout=30, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    return headers


def mcp_approve(url: str, headers: dict[str, str], halt_id: int, option: str = "approve") -> str:
    """`fazt_halt_answer` over MCP; what came back (an error when the worker died under it)."""
    try:
        r = httpx.post(url, headers=headers, timeout=120, json={
            "jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "fazt_halt_answer", "arguments": {"halt_id": halt_id, "option": option}}})
        return f"{r.status_code} {r.text}"
    except httpx.HTTPError as e:
        return f"{type(e).__name__}: {e}"
