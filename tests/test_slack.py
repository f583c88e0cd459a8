"""Slack answers against a fake Slack on loopback: a Web API written here (aiohttp: apps.connections.open,
chat.postMessage, chat.update, chat.postEphemeral, recording every call) and a Socket Mode websocket
server (the `websockets` package) that says hello, sends envelopes and records the acks; and the HTTP
interactivity endpoint of a real daemon, with requests signed here.

A halt is posted with a button per option; an owner's click answers it once and the message loses
its buttons; everything else — a click from someone who is not an owner, a click on an answered
halt, an envelope delivered twice, a malformed envelope, a forged, stale or altered request —
answers nothing and is recorded, and the daemon keeps answering."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import subprocess
import threading
import time
import tomllib
import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import parse_qsl, urlencode

import _helpers
import httpx
import pytest
import tomli_w
from _helpers import db_events, halt_row, run_daemon, stop_daemon
from _mcp import destructive_junk, listen
from aiohttp import web
from conftest import Ops, base_env, free_port
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

BOT_TOKEN = "xoxb-test-bot-7f3a9"
APP_TOKEN = "xapp-test-app-2c8d1"
SIGNING_SECRET = "signing-secret-0b5e6d"
OWNER, STRANGER = "U0ALICE1", "U0MALLORY"
POSTED_CHANNEL = "C0AGENT01"


# -- the fake Slack ----------------------------------------------------------------------------

@dataclass
class Call:
    method: str
    auth: str
    args: dict[str, Any]
    at: float
    result: dict[str, Any] = field(default_factory=dict)   # what the fake answered


@dataclass
class FakeSlack:
    """Slack's Web API and Socket Mode on loopback, in a thread of their own."""

    api_port: int = field(default_factory=free_port)
    ws_port: int = field(default_factory=free_port)
    calls: list[Call] = field(default_factory=list)
    acks: list[tuple[str, float]] = field(default_factory=list)
    sent: dict[str, float] = field(default_factory=dict)     # envelope_id -> when it was (last) sent
    connections: list[ServerConnection] = field(default_factory=list)
    open_errors: list[str] = field(default_factory=list)     # apps.connections.open answers these first

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/api/"

    def start(self) -> None:
        self.thread.start()
        self.run(self._start())

    def stop(self) -> None:
        self.run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/{method}", self._api)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.api_port).start()
        self.server = await serve(self._socket, "127.0.0.1", self.ws_port, compression=None)

    async def _stop(self) -> None:
        self.server.close()
        await self.runner.cleanup()

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        body = await request.read()
        args = json.loads(body) if request.content_type == "application/json" else dict(parse_qsl(body.decode()))
        auth = request.headers.get("Authorization", "")
        call = Call(method, auth, args, time.time())
        call.result = self._answer(call)
        with self.lock:
            self.calls.append(call)
        return web.json_response(call.result)

    def _answer(self, call: Call) -> dict[str, Any]:
        if call.auth != f"Bearer {APP_TOKEN if call.method == 'apps.connections.open' else BOT_TOKEN}":
            return {"ok": False, "error": "invalid_auth"}
        if call.method == "apps.connections.open":
            if self.open_errors:
                return {"ok": False, "error": self.open_errors.pop(0)}
            ticket = uuid.uuid4().hex
            return {"ok": True, "url": f"ws://127.0.0.1:{self.ws_port}/socket?ticket=t{ticket}"}
        if call.method == "chat.postMessage":
            ts = f"{time.time():.6f}"
            return {"ok": True, "channel": POSTED_CHANNEL, "ts": ts,
                    "message": {"ts": ts, "text": call.args.get("text")}}
        if call.method == "chat.update":
            return {"ok": True, "channel": call.args["channel"], "ts": call.args["ts"]}
        if call.method == "chat.postEphemeral":
            return {"ok": True, "message_ts": f"{time.time():.6f}"}
        return {"ok": False, "error": "unknown_method"}

    async def _socket(self, connection: ServerConnection) -> None:
        with self.lock:
            self.connections.append(connection)
        await connection.send(json.dumps({"type": "hello", "num_connections": len(self.connections),
                                          "connection_info": {"app_id": "A0FAZT"}}))
        try:
            async for message in connection:
                data = json.loads(message)
                with self.lock:
                    self.acks.append((data["envelope_id"], time.time()))
        except ConnectionClosed:
            pass

    # -- what the tests do and read ----------------------------------------------------------

    def send(self, envelope: dict[str, Any] | str | bytes) -> None:
        """Send an envelope (or anything else) on the newest connection."""
        if isinstance(envelope, dict) and "envelope_id" in envelope:
            self.sent.setdefault(envelope["envelope_id"], time.time())
        text = json.dumps(envelope) if isinstance(envelope, dict) else envelope
        self.run(self.connections[-1].send(text))

    def drop_mid_envelope(self, envelope: dict[str, Any]) -> None:
        """Write the first half of an envelope's websocket frame, then cut the TCP connection."""
        data = json.dumps(envelope).encode()
        assert 126 <= len(data) < 65536
        frame = bytes([0x81, 126]) + len(data).to_bytes(2, "big") + data[: len(data) // 2]

        async def drop() -> None:
            transport = self.connections[-1].transport
            transport.write(frame)
            transport.abort()

        self.run(drop())

    def calls_of(self, method: str) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.method == method]

    def acked(self, envelope_id: str) -> list[float]:
        with self.lock:
            return [t for e, t in self.acks if e == envelope_id]

    def wait_connections(self, n: int) -> None:
        wait_until(f"{n} Socket Mode connection(s)", lambda: len(self.connections) >= n)


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    fake = FakeSlack()
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


def click(halt_id: int, option: str, *, user: str = OWNER, envelope_id: str | None = None,
          action_id: str | None = None, value: str | None = None, **payload: Any) -> dict[str, Any]:
    """A Socket Mode envelope of a click on a halt's button, as Slack sends it."""
    return {"envelope_id": envelope_id or str(uuid.uuid4()), "type": "interactive", "accepts_response_payload": False,
            "payload": interaction(halt_id, option, user=user, action_id=action_id, value=value, **payload)}


def interaction(halt_id: int, option: str, *, user: str = OWNER, action_id: str | None = None,
                value: str | None = None, **extra: Any) -> dict[str, Any]:
    ts = f"{time.time():.6f}"
    return {"type": "block_actions", "token": "legacy-verification-token", "trigger_id": f"{uuid.uuid4().int}.1.x",
            "user": {"id": user, "username": "someone", "team_id": "T0TEAM"}, "api_app_id": "A0FAZT",
            "team": {"id": "T0TEAM"}, "channel": {"id": POSTED_CHANNEL, "name": "ops"},
            "container": {"type": "message", "message_ts": ts, "channel_id": POSTED_CHANNEL, "is_ephemeral": False},
            "actions": [{"type": "button", "block_id": f"halt-{halt_id}", "action_ts": ts,
                         "action_id": action_id or f"halt:{option}", "value": value or f"{halt_id}:{option}",
                         "text": {"type": "plain_text", "text": option}}], **extra}


# -- the agent ---------------------------------------------------------------------------------

wait_until = partial(_helpers.wait_until, interval=0.02)
answered = partial(_helpers.answered, interval=0.02)


@dataclass
class Agent:
    ops: Ops
    slack: FakeSlack
    env: dict[str, str]
    files: list[Path]
    proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = run_daemon(self.ops, self.env)

    def stop(self) -> str:
        assert self.proc is not None
        t0 = time.monotonic()
        err = stop_daemon(self.proc)
        assert time.monotonic() - t0 < 5.0, "the daemon took more than 5 s to stop"   # Slack never holds it
        for secret in (BOT_TOKEN, APP_TOKEN, SIGNING_SECRET, "ticket="):
            assert secret not in err   # neither the tokens nor the socket's ticket are logged
        return err

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def request(self) -> tuple[int, Call]:
        """The halt's message, as Slack received it, and the halt's id (from its buttons)."""
        post = wait_until("the halt's message", lambda: next(iter(self.slack.calls_of("chat.postMessage")), None))
        [actions] = [b for b in post.args["blocks"] if b["type"] == "actions"]
        return int(actions["elements"][0]["value"].partition(":")[0]), post

    def updates(self) -> list[Call]:
        return self.slack.calls_of("chat.update")

    def refusals(self) -> list[dict[str, Any]]:
        return db_events(self.ops, "halt.answer_refused")

    def interactivity(self) -> str:
        return f"http://{listen(self.ops)}/slack/interactivity"


def configure(ops: Ops, slack: FakeSlack, *, socket: bool = True) -> None:
    data = tomllib.loads(ops.config.read_text())
    data["slack"] = {"bot_token": "${SLACK_BOT_TOKEN}", "signing_secret": "${SLACK_SIGNING_SECRET}",
                     "channel": "#ops", "api_url": slack.api_url}
    if socket:
        data["slack"]["app_token"] = "${SLACK_APP_TOKEN}"
    data["owners"] = [{"name": "alice", "slack": OWNER}]
    data.setdefault("pulse", {})["interval"] = "1h"   # the first beat opens the halt; nothing else is needed
    ops.config.write_text(tomli_w.dumps(data))


@pytest.fixture
def make_agent(ops: Ops, tmp_path: Path, slack: FakeSlack) -> Iterator[Callable[..., Agent]]:
    """A daemon at medium autonomy whose first beat asks, on Slack, about a destructive cleanup."""
    started: list[Agent] = []

    def make(*, socket: bool = True, files: int = 5, prepare: Callable[[Path], None] | None = None) -> Agent:
        root, paths = destructive_junk(ops, tmp_path, files)
        if prepare is not None:
            prepare(root)
        ops.write_pulse("junk", f'[[checks]]\nname = "junk"\nkind = "dir_size"\npath = "{root}"\nwarning = "10KB"\n')
        configure(ops, slack, socket=socket)
        env = base_env(SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_APP_TOKEN=APP_TOKEN, SLACK_SIGNING_SECRET=SIGNING_SECRET)
        agent = Agent(ops, slack, env, [p for p in root.iterdir()])
        agent.start()
        started.append(agent)
        if socket:
            slack.wait_connections(1)
        return agent

    yield make
    for agent in started:
        if agent.alive():
            assert agent.proc is not None
            agent.proc.kill()
            err = agent.proc.communicate()[1]
            print(err)   # the daemon's log, shown when the test failed
            for secret in (BOT_TOKEN, APP_TOKEN, SIGNING_SECRET, "ticket="):
                assert secret not in err


@pytest.fixture
def agent(make_agent: Callable[..., Agent]) -> Agent:
    return make_agent()


def buttons_of(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for b in blocks if b["type"] == "actions" for e in b["elements"]]


def text_of(blocks: list[dict[str, Any]]) -> str:
    parts = []
    for b in blocks:
        if isinstance(b.get("text"), dict):
            parts.append(b["text"]["text"])
        parts += [e["text"] for e in b.get("elements", []) if isinstance(e.get("text"), str)]
    return "\n".join(parts)


def update_saying(agent: Agent, ts: str, words: str) -> Call:
    return wait_until(f"chat.update of {ts} saying {words!r}", lambda: next(
        (c for c in agent.updates() if c.args["ts"] == ts and words in text_of(c.args["blocks"])), None))


def set_halt_expiry(ops: Ops, expiry: str) -> None:
    policy = ops.dir / "policies" / "default.toml"
    text, n = re.subn(r'(?m)^halt_expiry = "24h"', f'halt_expiry = "{expiry}"', policy.read_text())
    assert n == 1
    policy.write_text(text)


# -- Socket Mode -------------------------------------------------------------------------------

def test_a_halt_is_posted_with_a_button_per_option_and_an_owners_click_runs_the_plan_once(agent: Agent) -> None:
    halt_id, post = agent.request()
    assert post.auth == f"Bearer {BOT_TOKEN}" and post.args["channel"] == "#ops"
    blocks = post.args["blocks"]
    assert blocks[0]["type"] == "header" and "approval needed" in blocks[0]["text"]["text"]
    assert [(b["action_id"], b["value"], b.get("style")) for b in buttons_of(blocks)] == [
        ("halt:approve", f"{halt_id}:approve", "primary"), ("halt:deny", f"{halt_id}:deny", "danger")]
    shown = text_of(blocks)
    assert "*Plan:* delete 5 files" in shown and "*Risk:*" in shown
    assert "old-000.log" in shown and "old-004.log" in shown    # every step of the plan
    assert f"Halt {halt_id}: 'deny' applies if no one answers by" in shown

    # the owner clicks approve; Slack delivers the envelope twice (at least once): one answer
    envelope = click(halt_id, "approve")
    agent.slack.send(envelope)
    agent.slack.send({**envelope, "retry_attempt": 1, "retry_reason": "timeout"})
    halt = answered(agent.ops, halt_id)
    assert (halt["status"], halt["answer"], halt["answered_by"], halt["answered_via"]) == \
        ("answered", "approve", "alice", "slack")
    wait_until("the cleanup", lambda: not any(f.exists() for f in agent.files))
    acks = wait_until("both deliveries acknowledged", lambda: len(a := agent.slack.acked(envelope["envelope_id"])) == 2
                      and a)
    assert acks[0] - agent.slack.sent[envelope["envelope_id"]] < 3.0

    # the message loses its buttons and says who answered, via what, when
    update = update_saying(agent, post.result["ts"], "approved by alice via slack at")
    assert update.args["channel"] == POSTED_CHANNEL and buttons_of(update.args["blocks"]) == []
    assert "old-000.log" in text_of(update.args["blocks"])   # the plan stays
    time.sleep(0.5)   # room for a second answer, had the redelivery been taken
    assert [(e["by"], e["channel"]) for e in db_events(agent.ops, "halt.answered")] == [("alice", "slack")]
    assert len(db_events(agent.ops, "action.started")) == 1
    assert agent.refusals() == [] and agent.slack.calls_of("chat.postEphemeral") == []
    agent.stop()


def test_a_long_plan_is_cut_to_slacks_limits_and_a_file_name_pings_no_one(
        make_agent: Callable[..., Agent]) -> None:
    agent = make_agent(files=400, prepare=lambda root: (root / "old-000.log").rename(root / "<!channel> & co.log"))
    halt_id, post = agent.request()
    blocks = post.args["blocks"]
    assert len(blocks) <= 50 and len(buttons_of(blocks)) == 2
    sections = [b["text"]["text"] for b in blocks if b["type"] == "section"]
    assert all(len(t) <= 3000 for t in sections) and sum(map(len, sections)) > 9000   # cut, not dropped
    shown = text_of(blocks)
    assert f"more lines: `fazt-agent halts show {halt_id}`" in shown
    assert "&lt;!channel&gt; &amp; co.log" in shown and "<!channel>" not in shown   # shown, never a mention
    agent.stop()


def test_a_click_from_someone_who_is_not_an_owner_is_refused_recorded_and_told(agent: Agent) -> None:
    halt_id, post = agent.request()
    agent.slack.send(click(halt_id, "approve", user=STRANGER))
    told = wait_until("the stranger told why", lambda: agent.slack.calls_of("chat.postEphemeral"))
    assert told[0].args["user"] == STRANGER and told[0].args["channel"] == POSTED_CHANNEL
    assert f"{STRANGER} is not an owner on slack" in told[0].args["text"]
    [refused] = agent.refusals()
    assert (refused["halt_id"], refused["option"], refused["by"], refused["channel"]) == \
        (halt_id, "approve", f"slack:{STRANGER}", "slack")
    assert "is not an owner on slack" in refused["reason"]
    assert halt_row(agent.ops, halt_id)["status"] == "pending" and all(f.exists() for f in agent.files)

    # the owner denies; a late click on the answered halt is refused with who answered first
    agent.slack.send(click(halt_id, "deny"))
    assert answered(agent.ops, halt_id)["answer"] == "deny"
    update = update_saying(agent, post.result["ts"], "denied by alice via slack at")
    assert buttons_of(update.args["blocks"]) == []
    agent.slack.send(click(halt_id, "approve"))
    late = wait_until("the owner told", lambda: len(t := agent.slack.calls_of("chat.postEphemeral")) == 2 and t[1])
    assert late.args["user"] == OWNER
    assert f"halt #{halt_id} was already answered 'deny' by alice via slack at" in late.args["text"]
    assert [(r["by"], r["channel"]) for r in agent.refusals()] == [(f"slack:{STRANGER}", "slack"), ("alice", "slack")]
    assert all(f.exists() for f in agent.files) and db_events(agent.ops, "action.started") == []
    agent.stop()


def test_a_halt_answered_from_the_cli_updates_the_slack_message(agent: Agent) -> None:
    halt_id, post = agent.request()
    approved = agent.ops.cli("approve", str(halt_id), env=agent.env)
    assert approved.returncode == 0, approved.stderr
    wait_until("the cleanup", lambda: not any(f.exists() for f in agent.files))
    update = update_saying(agent, post.result["ts"], "approved by cli at")
    assert update.args["channel"] == POSTED_CHANNEL and buttons_of(update.args["blocks"]) == []
    assert "approved by cli at" in update.args["text"]   # the notification's text too
    # a click on the stale message (before Slack showed the update) is refused with the winner
    agent.slack.send(click(halt_id, "deny"))
    told = wait_until("the owner told", lambda: agent.slack.calls_of("chat.postEphemeral"))
    assert f"halt #{halt_id} was already answered 'approve' by cli at" in told[0].args["text"]
    agent.stop()


def test_a_socket_dropped_mid_envelope_reconnects_and_the_redelivered_click_answers(agent: Agent) -> None:
    halt_id, _ = agent.request()
    envelope = click(halt_id, "approve")
    agent.slack.drop_mid_envelope(envelope)
    agent.slack.wait_connections(2)
    [dropped] = wait_until("slack.disconnected", lambda: db_events(agent.ops, "slack.disconnected"))
    assert dropped["retry_in_s"] == 0 and dropped["error"]
    assert halt_row(agent.ops, halt_id)["status"] == "pending"   # half an envelope answers nothing
    assert len(agent.slack.calls_of("apps.connections.open")) == 2   # a fresh URL for the new socket
    agent.slack.send(envelope)   # Slack delivers it again on the new connection
    assert answered(agent.ops, halt_id)["answered_via"] == "slack"
    wait_until("the cleanup", lambda: not any(f.exists() for f in agent.files))
    assert len(agent.slack.acked(envelope["envelope_id"])) == 1

    # Slack asks for a refresh: a new connection at once, nothing recorded
    time.sleep(1.0)
    agent.slack.send({"type": "disconnect", "reason": "refresh_requested"})
    agent.slack.wait_connections(3)
    assert len(db_events(agent.ops, "slack.disconnected")) == 1
    agent.stop()


def test_a_refused_socket_mode_token_is_retried_with_backoff(make_agent: Callable[..., Agent],
                                                             slack: FakeSlack) -> None:
    slack.open_errors[:] = ["invalid_auth", "invalid_auth"]
    agent = make_agent()   # waits for the connection that the third attempt makes
    opens = slack.calls_of("apps.connections.open")
    assert len(opens) == 3 and opens[2].at - opens[1].at >= 0.9   # 1 s, then 1 s more at least
    [down] = db_events(agent.ops, "slack.disconnected")   # once for the outage
    assert "invalid_auth" in down["error"] and "[slack] app_token" in down["error"]
    agent.stop()


MALFORMED: list[tuple[Any, str]] = [
    ("{not json", "an envelope that is not JSON"),
    ("[1, 2]", "an envelope that is not a JSON object"),
    ({"type": "interactive", "payload": {}}, "without an envelope_id"),
    ({"envelope_id": "e-text", "type": "interactive", "payload": "approve"}, "the payload is a JSON str"),
    ({"envelope_id": "e-none", "type": "interactive"}, "an interactive envelope without a payload"),
    ({"envelope_id": "e-view", "type": "interactive", "payload": {"type": "view_submission", "user": {"id": OWNER}}},
     "a payload of type 'view_submission'"),
]


def test_malformed_envelopes_answer_nothing_are_recorded_and_the_daemon_keeps_answering(agent: Agent) -> None:
    halt_id, _ = agent.request()
    bad_clicks = [
        (click(halt_id, "approve", action_id="other:approve"), "unknown action 'other:approve'"),
        (click(halt_id, "approve", value="abc:approve"), "the value 'abc:approve' of action 'halt:approve' is not"),
        (click(halt_id, "approve", value=f"{halt_id}"), "is not HALT_ID:OPTION"),
        (click(halt_id, "deny", value=f"{halt_id}:approve"), "carries the value"),
        (click(halt_id, "approve", user="not-a-user-id"), "names no Slack user"),
        (click(halt_id, "approve", actions=[]), "the payload has no actions"),
        (click(halt_id, "approve", actions=["approve"]), "an action is not an object"),
    ]
    cases = MALFORMED + bad_clicks
    for envelope, _ in cases:
        agent.slack.send(envelope)
    refused = wait_until("every envelope refused", lambda: len(r := db_events(agent.ops, "slack.refused")) >= len(cases)
                         and r)
    assert len(refused) == len(cases)
    reasons = [r["reason"] for r in refused]
    for _, words in cases:
        assert any(words in r for r in reasons), (words, reasons)
    assert all(r["via"] == "socket" for r in refused)
    by_envelope = {r["envelope_id"]: r for r in refused if r["envelope_id"]}
    assert by_envelope["e-view"]["user"] == OWNER
    # those with an envelope_id were acknowledged (Slack would resend them otherwise)
    for envelope, _ in cases:
        if isinstance(envelope, dict) and "envelope_id" in envelope:
            assert agent.slack.acked(envelope["envelope_id"]), envelope
    assert halt_row(agent.ops, halt_id)["status"] == "pending" and agent.refusals() == []

    agent.slack.send(click(halt_id, "deny"))   # the daemon still answers
    assert answered(agent.ops, halt_id)["answer"] == "deny"
    assert agent.alive()
    agent.stop()


# -- the HTTP interactivity endpoint ---------------------------------------------------------------

def signed(payload: dict[str, Any] | str, *, secret: str = SIGNING_SECRET, at: float | None = None,
           body: bytes | None = None) -> tuple[bytes, dict[str, str]]:
    """A request body as Slack posts it (form field `payload`) and its signature headers."""
    form = urlencode({"payload": payload if isinstance(payload, str) else json.dumps(payload)}).encode()
    ts = str(int(time.time() if at is None else at))
    signature = "v0=" + hmac.new(secret.encode(), f"v0:{ts}:".encode() + form, hashlib.sha256).hexdigest()
    return body if body is not None else form, {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": signature,
                                                "Content-Type": "application/x-www-form-urlencoded"}


def test_the_interactivity_endpoint_answers_a_signed_click_and_refuses_forged_stale_and_altered_ones(
        make_agent: Callable[..., Agent]) -> None:
    agent = make_agent(socket=False)   # no app token: HTTP only
    halt_id, post = agent.request()
    url = agent.interactivity()
    approve = interaction(halt_id, "approve")
    forged = signed(approve, secret="someone-elses-secret")
    stale = signed(approve, at=time.time() - 600)
    body, headers = signed(interaction(halt_id, "deny"))
    altered = (body.replace(b"deny", b"approve"), headers)   # signed for deny, sent as approve
    unsigned = (signed(approve)[0], {"Content-Type": "application/x-www-form-urlencoded"})
    for body, headers in (forged, stale, altered, unsigned):
        response = httpx.post(url, content=body, headers=headers)
        assert response.status_code == 401, response.text
    refused = db_events(agent.ops, "slack.refused")
    assert [(r["via"], r["status"]) for r in refused] == [("http", 401)] * 4
    assert "does not verify" in refused[0]["reason"]
    assert re.search(r"signed 10 min( \d+ s)? ago; more than 5 min is refused", refused[1]["reason"])
    assert "does not verify" in refused[2]["reason"]
    assert "no X-Slack-Signature" in refused[3]["reason"]
    assert all(r["peer"].startswith("127.0.0.1:") for r in refused)
    assert halt_row(agent.ops, halt_id)["status"] == "pending" and all(f.exists() for f in agent.files)

    # signed but not a payload this agent can read: 400, recorded, nothing answered
    for payload, words in (("{oops", "the payload is not JSON"),
                           (interaction(halt_id, "approve", action_id="halt:approve", value="7:deny"),
                            "carries the value")):
        response = httpx.post(url, content=signed(payload)[0], headers=signed(payload)[1])
        assert response.status_code == 400 and words in response.text
    assert [r["status"] for r in db_events(agent.ops, "slack.refused")][4:] == [400, 400]
    assert httpx.get(url).status_code == 405

    # a signed click from the owner answers (200 at once), the plan runs, the message loses its buttons
    t0 = time.monotonic()
    response = httpx.post(url, content=signed(approve)[0], headers=signed(approve)[1])
    assert response.status_code == 200 and time.monotonic() - t0 < 3.0
    halt = answered(agent.ops, halt_id)
    assert (halt["answer"], halt["answered_by"], halt["answered_via"]) == ("approve", "alice", "slack")
    wait_until("the cleanup", lambda: not any(f.exists() for f in agent.files))
    update = update_saying(agent, post.result["ts"], "approved by alice via slack at")
    assert buttons_of(update.args["blocks"]) == []
    # the same request again (a replay within the 5 min): answered once, nothing more
    response = httpx.post(url, content=signed(approve)[0], headers=signed(approve)[1])
    assert response.status_code == 200
    time.sleep(0.5)
    assert len(db_events(agent.ops, "halt.answered")) == 1 and agent.refusals() == []
    assert agent.alive()
    agent.stop()


# -- reminders, expiry, withdrawal: every message says how it ended ---------------------------------

def test_a_reminder_is_a_thread_reply_with_the_buttons_and_the_answer_updates_both(
        ops: Ops, make_agent: Callable[..., Agent]) -> None:
    set_halt_expiry(ops, "64s")   # the reminder falls 60 s before expiry: 4 s after the request
    agent = make_agent()
    halt_id, post = agent.request()
    reminder = wait_until("the reminder", lambda: next(
        (c for c in agent.slack.calls_of("chat.postMessage") if c.args.get("thread_ts")), None), timeout=20)
    assert reminder.args["thread_ts"] == post.result["ts"] and reminder.args["channel"] == POSTED_CHANNEL
    assert f"Reminder: halt {halt_id} expires at" in text_of(reminder.args["blocks"])
    assert [b["value"] for b in buttons_of(reminder.args["blocks"])] == [f"{halt_id}:approve", f"{halt_id}:deny"]

    envelope = click(halt_id, "deny", container={"type": "message", "channel_id": POSTED_CHANNEL,
                                                 "message_ts": reminder.result["ts"], "thread_ts": post.result["ts"]})
    agent.slack.send(envelope)
    assert answered(agent.ops, halt_id)["answer"] == "deny"
    for ts in (post.result["ts"], reminder.result["ts"]):   # both lose their buttons
        update = update_saying(agent, ts, "denied by alice via slack at")
        assert buttons_of(update.args["blocks"]) == []
    agent.stop()


def test_an_expired_halt_says_the_default_applied(ops: Ops, make_agent: Callable[..., Agent]) -> None:
    set_halt_expiry(ops, "3s")
    agent = make_agent()
    halt_id, post = agent.request()
    update = update_saying(agent, post.result["ts"], "expired: default deny applied (no answer by")
    assert buttons_of(update.args["blocks"]) == [] and halt_row(agent.ops, halt_id)["status"] == "expired"
    assert all(f.exists() for f in agent.files)
    agent.stop()


def test_a_withdrawn_halt_says_why(agent: Agent) -> None:
    halt_id, post = agent.request()
    for f in agent.files:   # the problem went away by itself: the next beat resolves the incident
        f.unlink()
    assert agent.ops.cli("beat", env=agent.env).returncode == 0
    update = update_saying(agent, post.result["ts"], "withdrawn: ")
    assert buttons_of(update.args["blocks"]) == [] and halt_row(agent.ops, halt_id)["status"] == "cancelled"
    agent.stop()
