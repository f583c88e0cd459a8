"""Slack answers: a halt opened -> its message posted to Slack, and a button click -> the approved
action started, against a fake Slack on loopback.

Makes an ops folder with `fazt-agent init` (medium autonomy, a cleanup root the policy asks about,
one owner with a Slack user ID), starts a fake Slack in this process — its Web API (aiohttp:
`apps.connections.open`, `chat.postMessage`, `chat.update`, `chat.postEphemeral`) and a Socket Mode
websocket server (the `websockets` package) — and `fazt-agent run` with `[slack]` pointing at it.
Each of `--runs` rounds refills the root and waits for the halt's message, then sends the Socket
Mode envelope of the owner's click on "approve" to the daemon. The halt is opened by the daemon's
own beat (`--via beat`, the default: a `dir_size` check on the root, a 1 s pulse, the policy's
cooldown shortened and flap control off so that every round asks again; the round ends when the
next beat resolves the incident) or by `fazt-agent actions run cleanup` (`--via cli`: that process
posts the message, and loads slack_sdk and aiohttp to do it). Timed: from the `halt.requested`
event to the fake's receipt of `chat.postMessage`, and from sending the envelope to the timestamp
of the `action.started` event (the daemon acknowledged it, recorded the envelope, answered the halt
and started the plan).
Target: click -> action started, median <= 250 ms. Exit 0 when met, 1 when missed or a round
failed, 2 for bad arguments.

    python bench/slack_latency.py [--runs 20] [--via beat|cli] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import tomli_w

from _common import clean_env, free_port, make_ops, print_json, stats, verdict

TARGET_MEDIAN_S = 0.25
BOT, APP, OWNER, CHANNEL = "xoxb-bench", "xapp-bench", "U0BENCH1", "C0BENCH1"


class BenchError(RuntimeError):
    pass


class FakeSlack:
    """Slack's Web API and Socket Mode on loopback, in a thread of its own; records the posts."""

    def __init__(self) -> None:
        self.api_port, self.ws_port = free_port(), free_port()
        self.posts: list[tuple[float, dict[str, Any]]] = []
        self.connections: list[Any] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _start(self) -> None:
        from aiohttp import web
        from websockets.asyncio.server import serve

        app = web.Application()
        app.router.add_post("/api/{method}", self._api)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.api_port).start()
        self.server = await serve(self._socket, "127.0.0.1", self.ws_port, compression=None)

    async def _stop(self) -> None:
        self.server.close()
        await self.runner.cleanup()

    async def _api(self, request: Any) -> Any:
        from aiohttp import web

        at = time.time()
        method = request.match_info["method"]
        body = await request.read()
        args = json.loads(body) if request.content_type == "application/json" else {}
        if method == "apps.connections.open":
            return web.json_response({"ok": True, "url": f"ws://127.0.0.1:{self.ws_port}/socket"})
        if method == "chat.postMessage":
            self.posts.append((at, args))
            return web.json_response({"ok": True, "channel": CHANNEL, "ts": f"{at:.6f}"})
        return web.json_response({"ok": True, "channel": args.get("channel"), "ts": args.get("ts", f"{at:.6f}")})

    async def _socket(self, connection: Any) -> None:
        self.connections.append(connection)
        await connection.send(json.dumps({"type": "hello"}))
        async for _ in connection:   # the acks
            pass

    def click(self, halt_id: int) -> float:
        """The owner clicks approve on halt `halt_id`; returns when the envelope was sent."""
        envelope = {"envelope_id": str(uuid.uuid4()), "type": "interactive", "payload": {
            "type": "block_actions", "user": {"id": OWNER}, "trigger_id": uuid.uuid4().hex,
            "channel": {"id": CHANNEL}, "actions": [{"action_id": "halt:approve", "value": f"{halt_id}:approve"}]}}

        async def send() -> float:
            at = time.time()
            await self.connections[-1].send(json.dumps(envelope))
            return at

        return asyncio.run_coroutine_threadsafe(send(), self.loop).result(10)


def event_time(db: Path, type_: str, where: str = "1", offset: int = 0) -> float | None:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            row = conn.execute(f"SELECT ts FROM events WHERE type = ? AND {where} ORDER BY id LIMIT 1 OFFSET ?",
                               (type_, offset)).fetchone()
    except sqlite3.OperationalError:
        return None
    return datetime.fromisoformat(row[0].replace("Z", "+00:00")).timestamp() if row else None


def wait(what: str, predicate: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.002)
    raise BenchError(f"timed out waiting for {what}")


def fill(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    old = time.time() - 30 * 86400
    for i in range(3):
        path = root / f"old-{i}.log"
        path.write_bytes(b"x" * 4096)
        os.utime(path, (old, old))


def run(runs: int, tmp: Path, via: str) -> dict[str, Any]:
    ops = make_ops(tmp, pulse_interval="1s" if via == "beat" else "1h")
    root = tmp / "junk"
    (ops.dir / "policies" / "local.toml").write_text(f'[constraints]\ncleanup_roots = ["{root}"]\n')
    (ops.dir / "kernel" / "actions.toml").write_text('[cleanup]\ndestructive_above = "1KB"\n')
    for p in (ops.dir / "pulse").glob("*.toml"):
        p.unlink()   # only the root's check (--via beat), or none: the halts come from `actions run`
    if via == "beat":
        (ops.dir / "pulse" / "junk.toml").write_text(
            f'[[checks]]\nname = "junk"\nkind = "dir_size"\npath = "{root}"\nwarning = "10KB"\nflap_count = 0\n')
        policy = ops.dir / "policies" / "default.toml"
        text = policy.read_text().replace('cooldown = "1h"', 'cooldown = "1s"')
        policy.write_text(text.replace("max_actions = 5", "max_actions = 1000"))
    slack = FakeSlack()
    data = tomllib.loads(ops.config.read_text())
    data["agent"]["autonomy"] = "medium"
    data["slack"] = {"bot_token": "${SLACK_BOT_TOKEN}", "app_token": "${SLACK_APP_TOKEN}", "channel": CHANNEL,
                     "api_url": f"http://127.0.0.1:{slack.api_port}/api/"}
    data["owners"] = [{"name": "alice", "slack": OWNER}]
    ops.config.write_text(tomli_w.dumps(data))
    env = {**clean_env(), "SLACK_BOT_TOKEN": BOT, "SLACK_APP_TOKEN": APP}
    cli = [sys.executable, "-m", "fazt_agent", "--config", str(ops.config)]
    slack.start()
    daemon = subprocess.Popen([*cli, "run"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    posted, clicked, failures = [], [], []
    try:
        wait("the daemon's Socket Mode connection", lambda: slack.connections)
        for i in range(runs):
            fill(root)
            if via == "beat":
                halt_id = i + 1
            else:
                done = subprocess.run([*cli, "actions", "run", "cleanup", "--arg", f"root={root}", "--arg",
                                       "older_than=7d", "--json"], capture_output=True, text=True, env=env)
                try:
                    halt_id = int(json.loads(done.stdout)["halt_id"])
                except (ValueError, KeyError, TypeError):
                    failures.append(f"round {i + 1}: no halt ({done.stdout[-200:]} {done.stderr[-200:]})")
                    continue
            at = wait(f"the message of halt #{halt_id}", lambda: next(
                (t for t, args in slack.posts if f'"{halt_id}:approve"' in json.dumps(args.get("blocks"))), None))
            requested = event_time(ops.db, "halt.requested", f"json_extract(data, '$.halt_id') = {halt_id}")
            if requested is not None:
                posted.append(at - requested)
            sent = slack.click(halt_id)
            try:   # the only actions are the approved cleanups: this round's is the (n+1)-th
                started = wait(f"the action of halt #{halt_id}",
                               lambda: event_time(ops.db, "action.started", offset=len(clicked)))
            except BenchError as e:
                failures.append(f"round {i + 1}: {e}")
                continue
            clicked.append(started - sent)
            if via == "beat":   # the next round's files open a new incident only once this one resolved
                wait(f"incident {i + 1} resolved", lambda: event_time(ops.db, "incident.resolved", offset=i))
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            _, err = daemon.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            daemon.kill()
            _, err = daemon.communicate()
        slack.stop()
    if daemon.returncode != 0:
        failures.append(f"the daemon exited with {daemon.returncode}: {err[-500:]}")
    return {"runs": runs, "via": via, "halt_to_post_s": stats(posted), "click_to_action_s": stats(clicked),
            "failures": failures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Slack: halt -> message posted, click -> action started.")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--via", choices=("beat", "cli"), default="beat",
                        help="what opens the halts: the daemon's beat (default) or `fazt-agent actions run`")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
        return 2
    with tempfile.TemporaryDirectory(prefix="fazt-bench-slack-") as tmp:
        try:
            report = run(args.runs, Path(tmp), args.via)
        except BenchError as e:
            print(f"slack_latency: {e}", file=sys.stderr)
            return 1
    median = report["click_to_action_s"]["median"]
    ok = not report["failures"] and median <= TARGET_MEDIAN_S
    report["target_median_s"] = TARGET_MEDIAN_S
    report["verdict"] = verdict(ok)
    if args.json:
        print_json(report)
    else:
        c, p = report["click_to_action_s"], report["halt_to_post_s"]
        print(f"button click (Socket Mode envelope) -> action started, {c['n']} runs: "
              f"median {c['median'] * 1000:.0f} ms, p95 {c['p95'] * 1000:.0f} ms, min {c['min'] * 1000:.0f} ms, "
              f"max {c['max'] * 1000:.0f} ms (target median <= {TARGET_MEDIAN_S * 1000:.0f} ms: {verdict(ok)})")
        opener = "daemon" if args.via == "beat" else "CLI"
        print(f"halt opened (by the {opener}) -> chat.postMessage at Slack, {p['n']} runs: "
              f"median {p['median'] * 1000:.0f} ms, p95 {p['p95'] * 1000:.0f} ms, max {p['max'] * 1000:.0f} ms")
        for failure in report["failures"]:
            print(f"  failed: {failure}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
