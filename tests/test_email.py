"""Email answers against real servers: a halt mailed by SMTP (aiosmtpd), replies read by a real
daemon over IMAP IDLE from Debian's Dovecot (started here, unprivileged), DKIM-signed by the test
with its own keys (the daemon reads them from FAZT_AGENT_TEST_DKIM_KEYS instead of DNS).

A reply answers only when it names the halt, comes from an owner and is authenticated (DKIM of
the From domain, or the Authentication-Results of the configured server); every other reply is
refused and recorded, answers nothing, and the owner hears why."""

from __future__ import annotations

import base64
import datetime as dt
import getpass
import grp
import hashlib
import hmac
import imaplib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
import tomllib
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any, Callable, Iterator

import dkim
import pytest
import tomli_w
from _helpers import answered, db_events, halt_row, run_daemon, stop_daemon, wait_until
from _mcp import destructive_junk
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from conftest import Ops, base_env, free_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # loopback, on purpose

AGENT = "agent@agent.test"
ALICE = "alice@owner.test"
IMAP_PASSWORD = "imap-secret-Zq9"
SMTP_PASSWORD = "smtp-secret-Xw7"
SELECTOR = "sel"
DOVECOT = "/usr/sbin/dovecot"


# -- Dovecot -----------------------------------------------------------------------------------

def _run_as() -> tuple[str, str, int, int]:
    """Dovecot's login process refuses root: as root it runs as nobody, else as the caller."""
    if os.geteuid() == 0:
        import pwd

        nobody = pwd.getpwnam("nobody")
        return "nobody", grp.getgrgid(nobody.pw_gid).gr_name, nobody.pw_uid, nobody.pw_gid
    return getpass.getuser(), grp.getgrgid(os.getgid()).gr_name, os.getuid(), os.getgid()


@dataclass
class Dovecot:
    """Dovecot 2.3 in the foreground from a temp dir: static passdb/userdb, Maildir, IMAP on loopback."""

    dir: Path
    port: int
    tls: tuple[Path, Path, Path] | None = None   # (cert, key, CA): IMAPS only
    proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> Path:
        user, group, uid, gid = _run_as()
        ssl = (f"ssl = required\nssl_cert = <{self.tls[0]}\nssl_key = <{self.tls[1]}\n" if self.tls else "ssl = no\n")
        listener = ("inet_listener imap {\n    port = 0\n  }\n  inet_listener imaps {\n"
                    f"    address = 127.0.0.1\n    port = {self.port}\n  }}" if self.tls else
                    f"inet_listener imap {{\n    address = 127.0.0.1\n    port = {self.port}\n  }}\n"
                    "  inet_listener imaps {\n    port = 0\n  }")
        conf = self.dir / "dovecot.conf"
        conf.write_text(f"""\
base_dir = {self.dir}/run
state_dir = {self.dir}/state
log_path = {self.dir}/dovecot.log
{ssl}disable_plaintext_auth = no
auth_mechanisms = plain login
protocols = imap
listen = 127.0.0.1
default_login_user = {user}
default_internal_user = {user}
default_internal_group = {group}
mail_location = maildir:~/Maildir
passdb {{
  driver = static
  args = password={IMAP_PASSWORD}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={self.dir}/home/%u
}}
service imap-login {{
  chroot =
  {listener}
}}
service anvil {{
  chroot =
}}
""")
        return conf

    def start(self) -> None:
        user, group, uid, gid = _run_as()
        conf = self.write_config()
        for path in [self.dir, *self.dir.rglob("*")]:
            os.chown(path, uid, gid)
        self.proc = subprocess.Popen([DOVECOT, "-F", "-c", str(conf)], user=uid, group=gid, start_new_session=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"dovecot exited: {self.proc.stderr.read().decode() if self.proc.stderr else ''}"
                                     f"\n{self.log()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError(f"dovecot did not listen on {self.port}:\n{self.log()}")

    def kill(self) -> None:
        """Dovecot and every process of it, at once (a crash: connections drop without a goodbye)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)

    def log(self) -> str:
        path = self.dir / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logins(self) -> int:
        return self.log().count("imap-login: Info: Login: user=<")

    def imap(self) -> imaplib.IMAP4:
        if self.tls:
            import ssl

            client: imaplib.IMAP4 = imaplib.IMAP4_SSL("127.0.0.1", self.port,
                                                      ssl_context=ssl.create_default_context(cafile=str(self.tls[2])))
        else:
            client = imaplib.IMAP4("127.0.0.1", self.port)
        client.login(AGENT, IMAP_PASSWORD)
        client.select("INBOX")
        return client

    def deliver(self, raw: bytes) -> None:
        """Put a message in the agent's INBOX, unseen (IMAP APPEND, as a mail server's delivery does)."""
        client = self.imap()
        try:
            typ, data = client.append("INBOX", None, None, raw)
            assert typ == "OK", data
        finally:
            client.logout()

    def flags(self) -> list[str]:
        client = self.imap()
        try:
            typ, data = client.fetch("1:*", "(FLAGS)")
            return [d.decode() for d in data if isinstance(d, bytes)]
        finally:
            client.logout()

    def mark_all_unseen(self) -> None:
        client = self.imap()
        try:
            client.store("1:*", "-FLAGS", "(\\Seen $FaztProcessed)")
        finally:
            client.logout()


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    # not under pytest's tmp_path: Dovecot runs as nobody, which cannot reach root's 0700 temp dirs
    directory = Path(tempfile.mkdtemp(prefix="fazt-dovecot-"))
    server = Dovecot(directory, free_port())
    try:
        server.start()
        yield server
    finally:
        server.kill()
        shutil.rmtree(directory, ignore_errors=True)


# -- the outbound SMTP server ------------------------------------------------------------------

@dataclass
class Outbox:
    """What the agent sent, as aiosmtpd received it."""

    port: int
    mails: list[tuple[list[str], bytes]] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append((list(envelope.rcpt_tos), bytes(envelope.content)))
        return "250 OK"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        if isinstance(data, LoginPassword):
            self.logins.append((data.login.decode(), data.password.decode()))
            ok = data.login == b"agent" and data.password == SMTP_PASSWORD.encode()
            return AuthResult(success=ok, handled=False)   # handled=False: aiosmtpd answers 535 itself
        return AuthResult(success=False, handled=False)

    def messages(self) -> list[EmailMessage]:
        return [message_from_bytes(raw, policy=policy.default) for _, raw in self.mails]  # type: ignore[misc]

    def wait(self, what: str, predicate: Callable[[list[EmailMessage]], Any], timeout: float = 30) -> Any:
        return wait_until(what, lambda: predicate(self.messages()), timeout)


def start_smtp(outbox: Outbox, tls: Any = None, *, implicit: bool = False) -> Controller:
    """aiosmtpd requiring a login; with `tls`, over STARTTLS, or with `implicit`, TLS from the first byte."""
    kwargs: dict[str, Any] = {"auth_require_tls": tls is not None, "authenticator": outbox.authenticate,
                              "auth_required": True}
    if tls is not None and implicit:   # a plain-text client fails the handshake; aiosmtpd cannot tell
        kwargs.update(ssl_context=tls, auth_require_tls=False)   # this TLS from none, so AUTH must not wait for it
    elif tls is not None:
        kwargs.update(tls_context=tls, require_starttls=True)
    controller = Controller(outbox, hostname="127.0.0.1", port=outbox.port, **kwargs)
    controller.start()
    return controller


@pytest.fixture
def outbox() -> Iterator[Outbox]:
    box = Outbox(free_port())
    controller = start_smtp(box)
    try:
        yield box
    finally:
        controller.stop()


# -- DKIM --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Key:
    domain: str
    pem: bytes
    txt: str


def make_key(domain: str) -> Key:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    der = private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return Key(domain, pem, f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}")


@pytest.fixture(scope="module")
def keys() -> dict[str, Key]:
    """The owner's mail provider (owner.test) and an attacker with a domain of their own (evil.test)."""
    return {d: make_key(d) for d in ("owner.test", "evil.test")}


SIGNED = [b"from", b"to", b"subject", b"date", b"message-id", b"in-reply-to", b"references", b"mime-version",
          b"content-type"]


def sign(raw: bytes, key: Key, headers: list[bytes] | None = None) -> bytes:
    return dkim.sign(raw, SELECTOR.encode(), key.domain.encode(), key.pem, include_headers=headers or SIGNED) + raw


# -- the agent ---------------------------------------------------------------------------------

@dataclass
class Agent:
    ops: Ops
    dovecot: Dovecot
    outbox: Outbox
    env: dict[str, str]
    files: list[Path]
    proc: subprocess.Popen[str] | None = None
    logs: list[str] = field(default_factory=list)

    def start(self) -> None:
        self.proc = run_daemon(self.ops, self.env)

    def stop(self) -> str:
        assert self.proc is not None
        err = stop_daemon(self.proc, check=False)
        self.logs.append(err)
        assert self.proc.returncode == 0, err
        return err

    def request(self) -> EmailMessage:
        """The halt's request, as the owner received it."""
        return self.outbox.wait("the halt's email", lambda ms: next(
            (m for m in ms if m["X-Fazt-Halt"] and not str(m["Subject"]).startswith("Re:")), None))

    def replies_to(self, message_id: str) -> list[EmailMessage]:
        return [m for m in self.outbox.messages() if m["In-Reply-To"] == message_id]

    def refusals(self) -> list[dict[str, Any]]:
        return db_events(self.ops, "halt.answer_refused")


def configure(ops: Ops, dovecot: Dovecot, outbox: Outbox, *, tls: bool = False, **email: Any) -> None:
    data = tomllib.loads(ops.config.read_text())
    data["email"] = {"address": AGENT, "smtp_host": "127.0.0.1", "smtp_port": outbox.port,
                     "smtp_starttls": tls, "smtp_username": "agent", "smtp_password": "${SMTP_PASSWORD}",
                     "imap_host": "127.0.0.1", "imap_port": dovecot.port, "imap_tls": tls,
                     "imap_username": AGENT, "imap_password": "${IMAP_PASSWORD}", **email}
    data["owners"] = [{"name": "alice", "email": ALICE}, {"name": "bob", "email": "bob@owner.test"}]
    data.setdefault("http", {})["public_url"] = "https://agent.example.net"
    data.setdefault("pulse", {})["interval"] = "1h"   # the first beat opens the halt; nothing else is needed
    ops.config.write_text(tomli_w.dumps(data))


def agent_env(tmp_path: Path, keys: dict[str, Key], **extra: str) -> dict[str, str]:
    table = tmp_path / "dkim-keys.json"
    table.write_text(json.dumps({f"{SELECTOR}._domainkey.{k.domain}": k.txt for k in keys.values()}))
    return base_env(IMAP_PASSWORD=IMAP_PASSWORD, SMTP_PASSWORD=SMTP_PASSWORD, FAZT_AGENT_TEST_DKIM_KEYS=str(table),
                    **extra)


@pytest.fixture
def agent(ops: Ops, tmp_path: Path, dovecot: Dovecot, outbox: Outbox, keys: dict[str, Key]) -> Iterator[Agent]:
    """A daemon at medium autonomy whose first beat asks about a destructive cleanup, by email."""
    root, files = destructive_junk(ops, tmp_path)
    ops.write_pulse("junk", f'[[checks]]\nname = "junk"\nkind = "dir_size"\npath = "{root}"\nwarning = "10KB"\n')
    configure(ops, dovecot, outbox)
    a = Agent(ops, dovecot, outbox, agent_env(tmp_path, keys), files)
    a.start()
    try:
        yield a
    finally:
        if a.proc is not None and a.proc.poll() is None:
            a.proc.kill()
            print(a.proc.communicate()[1])   # the daemon's log, shown when the test failed


def reply(to: EmailMessage | None, body: str | None = "approve\n", *, sender: str = ALICE,
          recipient: str | None = None, subject: str | None = None, in_reply_to: bool = True) -> EmailMessage:
    """The owner's reply to `to` (the halt's email), as a mail client writes it."""
    m = EmailMessage()
    m["From"] = f"Alice <{sender}>"
    m["To"] = recipient or (str(to["Reply-To"]) if to is not None else AGENT)
    m["Subject"] = subject or (f"Re: {to['Subject']}" if to is not None else "approve")
    m["Date"] = dt.datetime.now(dt.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S +0000")
    m["Message-ID"] = make_msgid(domain=sender.partition("@")[2])
    if to is not None and in_reply_to:
        m["In-Reply-To"] = str(to["Message-ID"])
        m["References"] = str(to["Message-ID"])
    if body is not None:
        m.set_content(body + "\n> (the halt's email, quoted)\n> Plan: delete 5 files\n")
    return m


def raw(m: EmailMessage) -> bytes:
    return m.as_bytes(policy=policy.SMTP)


def reply_address(ops: Ops, halt_id: int) -> str:
    """The plus-address of halt `halt_id`, signed with the agent's key (as if it had mailed that halt)."""
    key = (ops.data_dir / "answer.key").read_bytes()
    token = hmac.new(key, f"reply\0{halt_id}".encode(), hashlib.sha256).hexdigest()[:20]
    return f"agent+halt-{halt_id}-{token}@agent.test"


# -- tests -------------------------------------------------------------------------------------

def test_an_approving_reply_runs_the_plan_once_and_the_thread_hears_who_answered(
        agent: Agent, keys: dict[str, Key]) -> None:
    request = agent.request()
    halt_id = int(request["X-Fazt-Halt"])
    body = request.get_content()
    # the halt's email: its own Message-ID, a signed plus-address, the plan, how to answer, alice's links
    assert re.fullmatch(rf"<halt-{halt_id}\.\d+\.[A-Za-z0-9_-]{{8}}@agent\.test>", request["Message-ID"])
    assert re.fullmatch(rf"agent\+halt-{halt_id}-[0-9a-f]{{20}}@agent\.test", str(request["Reply-To"]))
    assert "old-000.log" in body or "Plan:" in body
    assert "reply with one word on the first line: approve, deny" in body
    assert re.search(rf"approve: https://agent\.example\.net/a/{halt_id}\.approve\.\d+\.alice\.", body)
    # one mail per owner, each its own SMTP session (bob's may arrive after alice's was read)
    agent.outbox.wait("a mail to each owner", lambda ms: len(ms) >= 2)
    assert sorted(to for to, _ in agent.outbox.mails) == [["alice@owner.test"], ["bob@owner.test"]]
    assert agent.outbox.logins and all(login == ("agent", SMTP_PASSWORD) for login in agent.outbox.logins)

    approve = reply(request)
    agent.dovecot.deliver(sign(raw(approve), keys["owner.test"]))
    halt = answered(agent.ops, halt_id)
    assert (halt["status"], halt["answer"], halt["answered_by"], halt["answered_via"]) == \
        ("answered", "approve", "alice", "email")
    wait_until("the cleanup", lambda: not any(f.exists() for f in agent.files))
    [answer] = db_events(agent.ops, "halt.answered")
    assert (answer["by"], answer["channel"]) == ("alice", "email")
    # every owner's thread hears who answered
    notices = agent.outbox.wait("the answered notices", lambda ms: len(
        [m for m in ms if m["In-Reply-To"] == request["Message-ID"]]) == 2 and ms)
    notice = next(m for m in notices if m["In-Reply-To"] == request["Message-ID"])
    assert notice["Subject"] == f"Re: {request['Subject']}"
    assert f"Halt {halt_id} was answered 'approve' by alice via email" in notice.get_content()
    wait_until("the reply flagged", lambda: agent.dovecot.flags() and all(
        "\\Seen" in f and "$FaztProcessed" in f for f in agent.dovecot.flags()))

    # a second reply to the answered halt: refused, recorded, and told who answered first
    late = reply(request, "deny")
    agent.dovecot.deliver(sign(raw(late), keys["owner.test"]))
    [told] = agent.outbox.wait("the 'already answered' reply", lambda ms: agent.replies_to(late["Message-ID"]))
    assert told["To"] == ALICE and told["Auto-Submitted"] == "auto-replied"
    assert re.search(rf"halt #{halt_id} was already answered 'approve' by alice via email at \d{{4}}-",
                     told.get_content())
    [refused] = agent.refusals()
    assert (refused["halt_id"], refused["option"], refused["by"], refused["channel"]) == \
        (halt_id, "deny", "alice", "email")
    assert len(db_events(agent.ops, "action.started")) == 1

    # a restart that finds the replies unseen again (a crash before the flag) answers nothing twice
    agent.stop()
    agent.dovecot.mark_all_unseen()
    sent = len(agent.outbox.mails)
    agent.start()
    wait_until("the replies flagged again", lambda: all("\\Seen" in f for f in agent.dovecot.flags()))
    seconds = [e["reason"] for e in db_events(agent.ops, "email.refused")]
    assert len(seconds) == 2 and all("a second delivery of message" in r for r in seconds)
    agent.stop()
    assert len(agent.refusals()) == 1 and len(db_events(agent.ops, "halt.answered")) == 1
    assert len(db_events(agent.ops, "action.started")) == 1
    assert len(agent.outbox.mails) == sent   # nobody was mailed again
    assert all(IMAP_PASSWORD not in log and SMTP_PASSWORD not in log for log in agent.logs)


def test_forged_unsigned_tampered_and_mistokened_replies_are_refused_and_answer_nothing(
        agent: Agent, keys: dict[str, Key]) -> None:
    request = agent.request()
    halt_id = int(request["X-Fazt-Halt"])
    owner, evil = keys["owner.test"], keys["evil.test"]

    forged = reply(request)                      # alice's address, signed by the attacker's own domain
    unsigned = reply(request)
    not_owner = reply(request, sender="mallory@evil.test")
    tampered = raw(reply(request, "deny"))
    tampered = sign(tampered, owner).replace(b"\ndeny", b"\napprove")
    uncovered = reply(request)                   # signed, but not the headers that name the halt
    mistoken = reply(None, recipient=f"agent+halt-{halt_id}-{'0' * 20}@agent.test", subject="approve")
    crossed = reply(request, recipient=reply_address(agent.ops, halt_id + 1))   # In-Reply-To one halt, To another
    for message in (sign(raw(forged), evil), raw(unsigned), sign(raw(not_owner), evil), tampered,
                    sign(raw(uncovered), owner, [b"from", b"subject", b"date", b"message-id"]),
                    sign(raw(mistoken), owner), sign(raw(crossed), owner)):
        agent.dovecot.deliver(message)

    refused = wait_until("five refusals", lambda: len(r := agent.refusals()) >= 5 and r)
    reasons = {r["reason"] for r in refused}
    assert all(r["halt_id"] == halt_id and r["channel"] == "email" and r["option"] in ("approve", "deny")
               for r in refused)
    assert {r["by"] for r in refused} == {"email:alice@owner.test", "email:mallory@evil.test"}
    expected = ["the signature verifies but is by evil.test, not by the From domain owner.test",
                "it has no DKIM signature",
                "mallory@evil.test is not the email of an owner",
                "body hash mismatch: the text was changed after it was signed",
                "does not cover the header naming the halt (in-reply-to, references, to)"]
    for text in expected:
        assert any(text in r for r in reasons), (text, reasons)
    unverified, two = wait_until("two replies refused",
                                 lambda: len(e := db_events(agent.ops, "email.refused")) >= 2 and e)
    assert f"names halt #{halt_id} with a token that does not verify" in unverified["reason"]
    assert f"it refers to more than one halt (#{halt_id}, #{halt_id + 1})" in two["reason"]
    assert unverified["sender"] == two["sender"] == ALICE
    # alice hears about each message sent in her name (mallory is nobody's owner: no reply to him)
    for message_id in (forged["Message-ID"], unsigned["Message-ID"], uncovered["Message-ID"], mistoken["Message-ID"]):
        [told] = agent.outbox.wait(f"the reply to {message_id}", lambda ms, i=message_id: agent.replies_to(i))
        assert told["To"] == ALICE and "It was not taken as an answer" in told.get_content()
    assert not agent.replies_to(not_owner["Message-ID"])
    assert halt_row(agent.ops, halt_id)["status"] == "pending"
    assert all(f.exists() for f in agent.files)
    assert db_events(agent.ops, "action.started") == []

    # a genuine reply still counts
    agent.dovecot.deliver(sign(raw(reply(request, "deny")), owner))
    assert answered(agent.ops, halt_id)["answer"] == "deny"
    assert all(f.exists() for f in agent.files)


def test_a_reply_that_is_no_option_gets_the_accepted_words_and_quoted_lines_are_skipped(
        agent: Agent, keys: dict[str, Key]) -> None:
    request = agent.request()
    halt_id = int(request["X-Fazt-Halt"])
    maybe = reply(request, "maybe\nlet me think")
    agent.dovecot.deliver(sign(raw(maybe), keys["owner.test"]))
    [told] = agent.outbox.wait("the reply to 'maybe'", lambda ms: agent.replies_to(maybe["Message-ID"]))
    text = told.get_content()
    assert "'maybe' is not an option" in text
    assert f"To answer halt #{halt_id}" in text and "reply with one word on the first line: approve, deny" in text
    assert str(told["Reply-To"]) == str(request["Reply-To"])   # replying to the reply still reaches the halt
    [refused] = agent.refusals()
    assert (refused["option"], refused["by"], refused["channel"]) == ("maybe", "alice", "email")
    assert halt_row(agent.ops, halt_id)["status"] == "pending"

    # the answer may follow quoted text, in any case, with a full stop
    deny = reply(told, "> 'maybe' is not an option\n\n  Deny.\nthanks")
    agent.dovecot.deliver(sign(raw(deny), keys["owner.test"]))
    halt = answered(agent.ops, halt_id)
    assert (halt["answer"], halt["answered_by"], halt["answered_via"]) == ("deny", "alice", "email")
    assert all(f.exists() for f in agent.files)


def test_html_only_non_utf8_attached_and_oversized_replies_are_refused_with_a_reply(
        agent: Agent, keys: dict[str, Key]) -> None:
    request = agent.request()
    halt_id = int(request["X-Fazt-Halt"])
    html = reply(request, None)
    html.set_content("<p>approve</p>", subtype="html")
    latin = reply(request, None)
    latin.set_content("approve\nDéjà vu\n".encode("latin-1"), "text", "plain", cte="8bit",
                      params={"charset": "iso-8859-1"})
    attached = reply(request)
    attached.add_attachment(b"\x89PNG...", maintype="image", subtype="png", filename="screenshot.png")
    big = reply(request, "approve\n" + "x" * 70 + "\n" + ("y" * 76 + "\n") * 15000)
    cases = {html["Message-ID"]: "HTML only", latin["Message-ID"]: "is in iso-8859-1, not UTF-8",
             attached["Message-ID"]: "attachment (image/png, screenshot.png)",
             big["Message-ID"]: "replies are read up to 1.0 MiB"}
    for message in (html, latin, attached, big):
        agent.dovecot.deliver(sign(raw(message), keys["owner.test"]))

    refused = wait_until("four refusals", lambda: len(r := agent.refusals()) >= 4 and r)
    assert len(refused) == 4 and all(r["halt_id"] == halt_id and r["channel"] == "email" for r in refused)
    for message_id, words in cases.items():
        assert any(words in r["reason"] for r in refused), (words, refused)
        [told] = agent.outbox.wait(f"the reply to {message_id}", lambda ms, i=message_id: agent.replies_to(i))
        assert words in told.get_content() and told["To"] == ALICE
    assert "the message is 1.1 MiB" in next(r["reason"] for r in refused if "up to 1.0 MiB" in r["reason"])
    assert halt_row(agent.ops, halt_id)["status"] == "pending"
    assert all(f.exists() for f in agent.files)
    assert agent.proc is not None and agent.proc.poll() is None


def test_the_listener_reconnects_when_dovecot_is_killed_and_restarted(agent: Agent, keys: dict[str, Key]) -> None:
    request = agent.request()
    halt_id = int(request["X-Fazt-Halt"])
    wait_until("the listener's login", lambda: agent.dovecot.logins() >= 1)
    agent.dovecot.kill()
    [dropped] = wait_until("the disconnection recorded", lambda: db_events(agent.ops, "email.disconnected"))
    assert dropped["server"] == f"127.0.0.1:{agent.dovecot.port}" and dropped["retry_in_s"] >= 1
    time.sleep(1.5)   # down for a while: the listener's reconnections fail and back off
    logins = agent.dovecot.logins()
    agent.dovecot.start()
    wait_until("the listener back in", lambda: agent.dovecot.logins() > logins, timeout=60)
    assert len(db_events(agent.ops, "email.disconnected")) == 1   # once per outage
    approve = reply(request)
    agent.dovecot.deliver(sign(raw(approve), keys["owner.test"]))   # noticed through IDLE
    halt = answered(agent.ops, halt_id)
    assert (halt["answer"], halt["answered_by"], halt["answered_via"]) == ("approve", "alice", "email")
    wait_until("the cleanup", lambda: not any(f.exists() for f in agent.files))
    assert agent.proc is not None and agent.proc.poll() is None


def test_the_configured_servers_authentication_results_vouch_for_an_unsigned_reply(
        ops: Ops, tmp_path: Path, dovecot: Dovecot, outbox: Outbox, keys: dict[str, Key]) -> None:
    root, files = destructive_junk(ops, tmp_path)
    ops.write_pulse("junk", f'[[checks]]\nname = "junk"\nkind = "dir_size"\npath = "{root}"\nwarning = "10KB"\n')
    configure(ops, dovecot, outbox, dkim=False, authserv_id="mx.agent.test")
    agent = Agent(ops, dovecot, outbox, agent_env(tmp_path, keys), files)
    agent.start()
    try:
        request = agent.request()
        halt_id = int(request["X-Fazt-Halt"])

        def with_results(*headers: str) -> tuple[EmailMessage, bytes]:
            m = reply(request)
            return m, "".join(f"Authentication-Results: {h}\r\n" for h in headers).encode() + raw(m)

        attempts = [
            with_results("mx.other.test; dkim=pass header.d=owner.test"),           # another server's word
            with_results("mx.agent.test; dkim=fail header.d=owner.test",             # only the topmost counts
                         "mx.agent.test; dmarc=pass header.from=owner.test"),
            with_results("mx.agent.test; dkim=pass header.d=evil.test; dmarc=fail"),  # a pass for another domain
        ]
        for _, message in attempts:
            dovecot.deliver(message)
        refused = wait_until("three refusals", lambda: len(r := agent.refusals()) >= 3 and r)
        reasons = [r["reason"] for r in refused]
        assert any("no Authentication-Results header of mx.agent.test" in r for r in reasons)
        assert any("the Authentication-Results of mx.agent.test say dkim=fail" in r for r in reasons)
        assert any("say dkim=pass, dmarc=fail" in r for r in reasons)
        assert halt_row(ops, halt_id)["status"] == "pending"

        good, message = with_results("mx.agent.test 1; spf=pass smtp.mailfrom=owner.test; "
                                     "dkim=pass (2048-bit key) header.d=owner.test header.s=sel; "
                                     "dmarc=pass (p=reject) header.from=owner.test")
        dovecot.deliver(message)
        halt = answered(ops, halt_id)
        assert (halt["answer"], halt["answered_by"], halt["answered_via"]) == ("approve", "alice", "email")
    finally:
        agent.stop()


def test_a_refused_smtp_login_is_retried_later_and_never_shows_the_password(
        ops: Ops, tmp_path: Path, dovecot: Dovecot, outbox: Outbox, keys: dict[str, Key]) -> None:
    root, files = destructive_junk(ops, tmp_path)
    ops.write_pulse("junk", f'[[checks]]\nname = "junk"\nkind = "dir_size"\npath = "{root}"\nwarning = "10KB"\n')
    configure(ops, dovecot, outbox)
    wrong = "wrong-pass-Kp4"
    agent = Agent(ops, dovecot, outbox, {**agent_env(tmp_path, keys), "SMTP_PASSWORD": wrong}, files)
    agent.start()
    try:
        failed = wait_until("the failed delivery", lambda: [e for e in db_events(ops, "notification.failed")])
    finally:
        err = agent.stop()
    [fail] = failed
    assert "SMTP 127.0.0.1" in fail["error"] and "login as 'agent' refused (535" in fail["error"]
    assert "check [email] smtp_username and smtp_password" in fail["error"]
    assert not fail["gave_up"] and fail["next_attempt_at"]
    with sqlite3.connect(ops.data_dir / "fazt-agent.db") as db:
        assert db.execute("SELECT status, channel, kind FROM notifications WHERE channel = 'email'").fetchall() == \
            [("pending", "email", "request")]
        dump = "\n".join(str(row) for row in db.execute("SELECT * FROM events"))
    assert outbox.mails == [] and outbox.logins and set(outbox.logins) == {("agent", wrong)}
    assert wrong not in err and wrong not in dump and IMAP_PASSWORD not in err


@pytest.mark.parametrize("smtp", ["starttls", "implicit"])
def test_starttls_and_imaps_are_used_when_configured(
        ops: Ops, tmp_path: Path, keys: dict[str, Key], smtp: str) -> None:
    """The defaults: SMTP with STARTTLS, IMAP over TLS, each server's certificate verified (here
    against a CA the test makes, through SSL_CERT_FILE); and SMTP over TLS from the first byte
    (SMTPS, what port 465 speaks) with `smtp_implicit_tls = true`."""
    import ssl

    ca_file, cert_file, key_file = make_tls(tmp_path)
    directory = Path(tempfile.mkdtemp(prefix="fazt-dovecot-"))
    shutil.copy(cert_file, directory / "cert.pem")
    shutil.copy(key_file, directory / "key.pem")
    server = Dovecot(directory, free_port(), tls=(directory / "cert.pem", directory / "key.pem", ca_file))
    box = Outbox(free_port())
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    controller = start_smtp(box, tls=context, implicit=smtp == "implicit")
    try:
        server.start()
        root, files = destructive_junk(ops, tmp_path)
        ops.write_pulse("junk", f'[[checks]]\nname = "junk"\nkind = "dir_size"\npath = "{root}"\nwarning = "10KB"\n')
        configure(ops, server, box, tls=True, **({"smtp_implicit_tls": True} if smtp == "implicit" else {}))
        agent = Agent(ops, server, box, agent_env(tmp_path, keys, SSL_CERT_FILE=str(ca_file)), files)
        agent.start()
        try:
            request = agent.request()
            halt_id = int(request["X-Fazt-Halt"])
            assert box.logins and set(box.logins) == {("agent", SMTP_PASSWORD)}
            server.deliver(sign(raw(reply(request)), keys["owner.test"]))
            assert answered(ops, halt_id)["answered_via"] == "email"
        finally:
            agent.stop()
    finally:
        controller.stop()
        server.kill()
        shutil.rmtree(directory, ignore_errors=True)


def test_port_465_speaks_tls_from_the_first_byte_unless_told_otherwise() -> None:
    """Port 465 is SMTPS; 587 and 25 start in plain text and upgrade with STARTTLS."""
    from fazt_agent.config import EmailSection

    def tls(**kw: Any) -> str:
        return EmailSection(address=AGENT, smtp_host="smtp.example.com", **kw).smtp_tls

    assert tls() == "starttls" and tls(smtp_port=25) == "starttls"
    assert tls(smtp_port=465) == "implicit" and tls(smtp_port=2465, smtp_implicit_tls=True) == "implicit"
    assert tls(smtp_port=465, smtp_implicit_tls=False) == "starttls"
    assert tls(smtp_starttls=False) == "none" and tls(smtp_port=465, smtp_starttls=False) == "implicit"


def make_tls(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for 127.0.0.1 it signed, valid from now (the real clock) for a day."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fazt test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return ca_file, cert_file, key_file


class ScriptedImap:
    """An IMAP server on loopback that plays one race exactly: the owner's reply arrives while the
    agent's SEARCH runs, so its `* 1 EXISTS` comes with that SEARCH's (empty) answer and is never
    repeated; in IDLE it announces nothing. Dovecot does the same when a message lands between
    SEARCH's evaluation and its tagged OK; here it happens every time."""

    def __init__(self, message: bytes):
        self.message = message
        self.seen = False
        self.searches = 0
        self.commands: list[str] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as lines:
            conn.sendall(b"* OK [CAPABILITY IMAP4rev1 IDLE] scripted\r\n")
            idle_tag = ""
            for raw_line in lines:
                line = raw_line.decode().rstrip("\r\n")
                if line.upper() == "DONE":   # the end of IDLE: its tagged OK
                    conn.sendall(f"{idle_tag} OK idle done\r\n".encode())
                    continue
                tag, _, command = line.partition(" ")
                self.commands.append(command)
                idle_tag = tag if command.upper() == "IDLE" else idle_tag
                conn.sendall(self._answer(tag, command.upper()))
                if command.upper().startswith("LOGOUT"):
                    return

    def _answer(self, tag: str, command: str) -> bytes:
        ok = f"{tag} OK done\r\n".encode()
        if command.startswith("CAPABILITY"):
            return b"* CAPABILITY IMAP4rev1 IDLE\r\n" + ok
        if command.startswith("SELECT"):
            return b"* 0 EXISTS\r\n* OK [PERMANENTFLAGS (\\Seen \\*)] flags\r\n" + ok
        if command.startswith("UID SEARCH"):
            self.searches += 1
            if self.searches == 1:   # evaluated before the reply landed; its notice rides on the answer
                return b"* SEARCH\r\n* 1 EXISTS\r\n* 1 RECENT\r\n" + ok
            return (b"* SEARCH\r\n" if self.seen else b"* SEARCH 1\r\n") + ok
        if command.startswith("UID FETCH") and "RFC822.SIZE" in command:
            return f"* 1 FETCH (UID 1 RFC822.SIZE {len(self.message)})\r\n".encode() + ok
        if command.startswith("UID FETCH"):
            return (f"* 1 FETCH (UID 1 BODY[] {{{len(self.message)}}}\r\n".encode() + self.message + b")\r\n" + ok)
        if command.startswith("UID STORE"):
            self.seen = True
            return ok
        if command.startswith("IDLE"):
            return b"+ idling\r\n"   # and nothing more, until DONE
        if command.startswith("LOGOUT"):
            return b"* BYE\r\n" + ok
        return ok

    def close(self) -> None:
        self.sock.close()


def test_a_reply_whose_arrival_came_with_a_search_answer_is_read_at_once(
        ops: Ops, tmp_path: Path, outbox: Outbox, keys: dict[str, Key]) -> None:
    """aioimaplib drops an EXISTS that comes with another command's answer; the listener notes it and
    searches again instead of waiting in IDLE for its renewal (5 min)."""
    stray = reply(None, "approve\n", subject="approve")   # names no halt: refused, and answered by mail
    server = ScriptedImap(sign(raw(stray), keys["owner.test"]))
    try:
        configure(ops, server, outbox)   # type: ignore[arg-type]   (it needs only .port)
        proc = run_daemon(ops, agent_env(tmp_path, keys))
        try:
            refused = wait_until("the reply read and refused", lambda: db_events(ops, "email.refused"), timeout=20)
            assert refused[0]["message_id"] == stray["Message-ID"], refused
            wait_until("the reply marked seen", lambda: server.seen)
            assert server.searches >= 2, server.commands
        finally:
            stop_daemon(proc, check=False)
    finally:
        server.close()
