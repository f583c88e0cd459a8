"""One halt, answered at the same moment from every channel — a Slack button, a reply by email, a
signed link, the approvals page, the CLI and an MCP client: exactly one answer wins, every other one
is refused and recorded with its channel and who answered first, the plan runs once, and every
channel shows the winner (the Slack message loses its buttons, the email thread hears it, the
link's page and /approvals name who answered, via what)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
import tomli_w

from _helpers import csrf_of, db_events, wait_until
from _mcp import destructive_junk, listen, stdio_client
from conftest import Ops
from test_approvals_web import login
from test_email import (ALICE, IMAP_PASSWORD, SMTP_PASSWORD, Agent, Dovecot, Key, Outbox, agent_env,  # noqa: F401
                        configure, dovecot, keys, outbox, raw, reply, sign)
from test_slack import APP_TOKEN, BOT_TOKEN, OWNER, SIGNING_SECRET, FakeSlack, buttons_of, click, slack, text_of  # noqa: F401

CHANNELS = ("slack", "email", "link", "web", "cli", "mcp")
SLACK_ENV = {"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_APP_TOKEN": APP_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET}


@pytest.fixture
def agent(ops: Ops, tmp_path: Path, dovecot: Dovecot, outbox: Outbox, keys: dict[str, Key],
          slack: FakeSlack) -> Iterator[Agent]:
    """A daemon at medium autonomy whose first beat asks about a destructive cleanup; it mails the
    owners, posts to Slack, and its links point at its own control plane."""
    root, files = destructive_junk(ops, tmp_path)
    ops.write_pulse("junk", f'[[checks]]\nname = "junk"\nkind = "dir_size"\npath = "{root}"\nwarning = "10KB"\n')
    configure(ops, dovecot, outbox)
    data = ops.read_config()
    data["slack"] = {"bot_token": "${SLACK_BOT_TOKEN}", "app_token": "${SLACK_APP_TOKEN}",
                     "signing_secret": "${SLACK_SIGNING_SECRET}", "channel": "#ops", "api_url": slack.api_url}
    data["owners"] = [{"name": "alice", "email": ALICE, "slack": OWNER}]
    data["http"]["public_url"] = f"http://{listen(ops)}"
    ops.config.write_text(tomli_w.dumps(data))
    a = Agent(ops, dovecot, outbox, agent_env(tmp_path, keys, **SLACK_ENV), files)
    a.start()
    slack.wait_connections(1)
    try:
        yield a
    finally:
        if a.proc is not None and a.proc.poll() is None:
            a.proc.kill()
            print(a.proc.communicate()[1])


def at_once(answers: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Run every answer in its own thread, released together; what each returned or raised."""
    start = threading.Barrier(len(answers))
    results: dict[str, Any] = {}

    def run(name: str, answer: Callable[[], Any]) -> None:
        start.wait()
        try:
            results[name] = answer()
        except Exception as e:   # noqa: BLE001 - a channel that failed is the test's finding
            results[name] = e

    threads = [threading.Thread(target=run, args=item) for item in answers.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_the_same_halt_answered_at_once_from_every_channel_is_answered_once(
        agent: Agent, ops: Ops, keys: dict[str, Key], slack: FakeSlack) -> None:
    request = agent.request()   # the halt's email: the daemon asked
    post = wait_until("the halt's Slack message", lambda: next(iter(slack.calls_of("chat.postMessage")), None))
    [halt] = json.loads(ops.cli("halts", "list", "--json", env=agent.env).stdout)
    links = json.loads(ops.cli("halts", "show", str(halt["id"]), "--json", env=agent.env).stdout)["links"]
    base = f"http://{listen(ops)}"
    web = httpx.Client()
    token = ops.cli("tokens", "create", "phone", "--scope", "operate", env=agent.env).stdout.strip()
    assert login(web, ops, token).status_code == 303
    csrf = csrf_of(web.get(f"{base}/approvals"))
    signed_reply = sign(raw(reply(request, "approve\n")), keys["owner.test"])

    async def by_mcp() -> Any:
        async with stdio_client(ops, env={"IMAP_PASSWORD": IMAP_PASSWORD, "SMTP_PASSWORD": SMTP_PASSWORD,
                                          **SLACK_ENV}) as client:
            return await client.call_tool("fazt_halt_answer", {"halt_id": halt["id"], "option": "approve"})

    results = at_once({
        "slack": lambda: slack.send(click(halt["id"], "approve")),
        "email": lambda: agent.dovecot.deliver(signed_reply),
        "link": lambda: httpx.post(links["approve"], timeout=60),
        "web": lambda: web.post(f"{base}/approvals", data={"halt_id": str(halt["id"]), "option": "approve",
                                                           "csrf": csrf}, timeout=60),
        "cli": lambda: subprocess.run([sys.executable, "-m", "fazt_agent", "--config", str(ops.config),
                                       "approve", str(halt["id"])], capture_output=True, text=True, timeout=60,
                                      env=agent.env),
        "mcp": lambda: asyncio.run(by_mcp()),
    })
    assert not [r for r in results.values() if isinstance(r, Exception)], results

    # exactly one answer, five refusals naming it; each channel recorded
    refused = wait_until("five refusals", lambda: (r := db_events(ops, "halt.answer_refused")) and len(r) >= 5 and r)
    [answered] = db_events(ops, "halt.answered")
    winner = answered["channel"]
    assert winner in CHANNELS
    assert sorted(r["channel"] for r in refused) == sorted(c for c in CHANNELS if c != winner)
    assert all("already answered 'approve'" in r["reason"] or "already used" in r["reason"]
               for r in refused), refused
    assert len(db_events(ops, "halt.answer_refused")) == 5
    # the plan ran once
    assert len(db_events(ops, "action.started")) == 1
    assert not any(f.exists() for f in agent.files)
    row = json.loads(ops.cli("halts", "show", str(halt["id"]), "--json", env=agent.env).stdout)
    print(f"the winner: {winner}")
    assert (row["status"], row["answer"], row["answered_via"]) == ("answered", "approve", winner)
    who = f"{row['answered_by']} via {winner}" if row["answered_by"] != winner else winner

    # every channel shows the winner
    update = wait_until("the Slack message updated", lambda: next(
        (c for c in slack.calls_of("chat.update") if c.args["ts"] == post.result["ts"]), None))
    assert buttons_of(update.args["blocks"]) == [] and f"approved by {who}" in text_of(update.args["blocks"])
    thread = wait_until("the answered notice in the email thread", lambda: [
        m for m in agent.replies_to(str(request["Message-ID"])) if "answered" in str(m["Subject"])])
    assert who in thread[0].get_content()
    assert who in httpx.get(links["deny"]).text
    assert who in web.get(f"{base}/approvals").text
    web.close()
