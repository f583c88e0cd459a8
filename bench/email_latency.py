"""Email answers: a reply delivered to the agent's mailbox -> the approved action started, through
Debian's Dovecot and IMAP IDLE; and a halt opened -> its email at the SMTP server.

Makes an ops folder with `fazt-agent init` (medium autonomy, a cleanup root the policy asks about,
one owner with an email), starts Dovecot from a temporary directory (static passdb, Maildir, IMAP
on a free loopback port; as root it runs as `nobody`) and an aiosmtpd server in this process, and
starts `fazt-agent run` with `[email]` pointing at both. Each of `--runs` rounds refills the root,
opens a halt with `fazt-agent actions run cleanup` (that process mails it), signs an "approve" reply
to it with a DKIM key of the script's own (the daemon reads the key from FAZT_AGENT_TEST_DKIM_KEYS
instead of DNS) and delivers it by IMAP APPEND. Timed: from the APPEND's OK to the timestamp of
the `action.started` event (the daemon noticed the message in IDLE, fetched it, verified DKIM,
answered the halt and started the plan), and from `halt.requested` to the email's arrival at the
SMTP server. Target: reply -> action started, median <= 1 s. Dovecot's IDLE reports a new message
500 ms after its delivery (it holds change notifications that long to batch them; a bare IMAP
client measures the same), so about 500 ms of the reply's time is the server's. Exit 0 when met,
1 when missed or a round failed, 2 for bad arguments.

    python bench/email_latency.py [--runs 10] [--json]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import tomllib
from datetime import datetime, timezone
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import tomli_w

from _common import clean_env, free_port, make_ops, print_json, stats, verdict

TARGET_MEDIAN_S = 1.0
PASSWORD = "bench-imap-password"
AGENT, OWNER = "agent@agent.test", "alice@owner.test"


class BenchError(RuntimeError):
    pass


def start_dovecot(directory: Path, port: int) -> subprocess.Popen[bytes]:
    """Dovecot in the foreground, unprivileged (its login process refuses root)."""
    import grp
    import pwd

    if os.geteuid() == 0:
        user = pwd.getpwnam("nobody")
        name, uid, gid = user.pw_name, user.pw_uid, user.pw_gid
    else:
        name, uid, gid = pwd.getpwuid(os.getuid()).pw_name, os.getuid(), os.getgid()
    conf = directory / "dovecot.conf"
    conf.write_text(f"""\
base_dir = {directory}/run
state_dir = {directory}/state
log_path = {directory}/dovecot.log
ssl = no
disable_plaintext_auth = no
protocols = imap
listen = 127.0.0.1
default_login_user = {name}
default_internal_user = {name}
default_internal_group = {grp.getgrgid(gid).gr_name}
mail_location = maildir:~/Maildir
passdb {{
  driver = static
  args = password={PASSWORD}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={directory}/home/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
""")
    for path in [directory, conf]:
        os.chown(path, uid, gid)
    proc = subprocess.Popen(["/usr/sbin/dovecot", "-F", "-c", str(conf)], user=uid, group=gid,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"dovecot exited with {proc.returncode}; see {directory}/dovecot.log")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    raise BenchError("dovecot did not start listening")


class Outbox:
    def __init__(self) -> None:
        self.mails: list[tuple[float, bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append((time.time(), bytes(envelope.content)))
        return "250 OK"


def dkim_key() -> tuple[bytes, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def signed_reply(request: EmailMessage, pem: bytes) -> bytes:
    import dkim

    m = EmailMessage()
    m["From"] = f"Alice <{OWNER}>"
    m["To"] = str(request["Reply-To"])
    m["Subject"] = f"Re: {request['Subject']}"
    m["Date"] = datetime.now(timezone.utc).strftime("%a, %d %b %Y %H:%M:%S +0000")
    m["Message-ID"] = make_msgid(domain="owner.test")
    m["In-Reply-To"] = m["References"] = str(request["Message-ID"])
    m.set_content("approve\n\n> the halt's email\n")
    raw = m.as_bytes(policy=policy.SMTP)
    return dkim.sign(raw, b"sel", b"owner.test", pem, include_headers=[b"from", b"to", b"subject", b"date",
                                                                         b"message-id", b"in-reply-to"]) + raw


def event_time(db: Path, type_: str, where: str) -> float | None:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            row = conn.execute(f"SELECT ts FROM events WHERE type = ? AND {where} ORDER BY id LIMIT 1",
                               (type_,)).fetchone()
    except sqlite3.OperationalError:
        return None
    if row is None:
        return None
    return datetime.fromisoformat(row[0].replace("Z", "+00:00")).timestamp()


def started_at(db: Path, index: int) -> float | None:
    """The time of the `index`-th (from 0) `action.started` event, once there is one."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            row = conn.execute("SELECT ts FROM events WHERE type = 'action.started' ORDER BY id LIMIT 1 OFFSET ?",
                               (index,)).fetchone()
    except sqlite3.OperationalError:
        return None
    return datetime.fromisoformat(row[0].replace("Z", "+00:00")).timestamp() if row else None


def wait(what: str, predicate: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    raise BenchError(f"timed out waiting for {what}")


def fill(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    old = time.time() - 30 * 86400
    for i in range(3):
        path = root / f"old-{i}.log"
        path.write_bytes(b"x" * 4096)
        os.utime(path, (old, old))


def run(runs: int, tmp: Path) -> dict[str, Any]:
    import imaplib
    import warnings

    from aiosmtpd.controller import Controller

    warnings.simplefilter("ignore")
    ops = make_ops(tmp, pulse_interval="1h")
    root = tmp / "junk"
    (ops.dir / "policies" / "local.toml").write_text(f'[constraints]\ncleanup_roots = ["{root}"]\n')
    (ops.dir / "kernel" / "actions.toml").write_text('[cleanup]\ndestructive_above = "1KB"\n')
    for p in (ops.dir / "pulse").glob("*.toml"):
        p.unlink()   # no checks: the halts come from `actions run`, nothing else runs
    mail_dir = Path(tempfile.mkdtemp(prefix="fazt-bench-dovecot-"))   # nobody must reach it
    imap_port, smtp_port = free_port(), free_port()
    outbox = Outbox()
    controller = Controller(outbox, hostname="127.0.0.1", port=smtp_port)
    pem, txt = dkim_key()
    keys = tmp / "dkim-keys.json"
    keys.write_text(json.dumps({"sel._domainkey.owner.test": txt}))
    data = tomllib.loads(ops.config.read_text())
    data["agent"]["autonomy"] = "medium"
    data["email"] = {"address": AGENT, "smtp_host": "127.0.0.1", "smtp_port": smtp_port, "smtp_starttls": False,
                     "imap_host": "127.0.0.1", "imap_port": imap_port, "imap_tls": False, "imap_username": AGENT,
                     "imap_password": "${IMAP_PASSWORD}"}
    data["owners"] = [{"name": "alice", "email": OWNER}]
    ops.config.write_text(tomli_w.dumps(data))
    env = {**clean_env(), "IMAP_PASSWORD": PASSWORD, "FAZT_AGENT_TEST_DKIM_KEYS": str(keys)}
    cli = [sys.executable, "-m", "fazt_agent", "--config", str(ops.config)]
    dovecot = start_dovecot(mail_dir, imap_port)
    controller.start()
    daemon = subprocess.Popen([*cli, "run"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    latencies, mailed, failures = [], [], []
    try:
        wait("the daemon's listener", lambda: "Login: user=<agent@agent.test>" in
             (mail_dir / "dovecot.log").read_text(errors="replace") if (mail_dir / "dovecot.log").exists() else False)
        for i in range(runs):
            fill(root)
            done = subprocess.run([*cli, "actions", "run", "cleanup", "--arg", f"root={root}", "--arg",
                                   "older_than=7d", "--json"], capture_output=True, text=True, env=env)
            try:
                halt_id = int(json.loads(done.stdout)["halt_id"])
            except (ValueError, KeyError, TypeError):
                failures.append(f"round {i + 1}: no halt ({done.stdout[-200:]} {done.stderr[-200:]})")
                continue
            at, raw = wait(f"the email of halt #{halt_id}", lambda: next(
                ((t, r) for t, r in outbox.mails if re.search(rb"X-Fazt-Halt: %d\r?\n" % halt_id, r)
                 and b"Subject: Re:" not in r), None))
            requested = event_time(ops.db, "halt.requested", f"json_extract(data, '$.halt_id') = {halt_id}")
            if requested is not None:
                mailed.append(at - requested)
            request = message_from_bytes(raw, policy=policy.default)
            reply = signed_reply(request, pem)  # type: ignore[arg-type]
            client = imaplib.IMAP4("127.0.0.1", imap_port)
            client.login(AGENT, PASSWORD)
            typ, _ = client.append("INBOX", None, None, reply)
            delivered = time.time()
            client.logout()
            if typ != "OK":
                failures.append(f"round {i + 1}: APPEND failed")
                continue
            try:   # the only actions are the approved cleanups: this round's is the (i+1)-th
                started = wait(f"the action of halt #{halt_id}", lambda: started_at(ops.db, len(latencies)))
            except BenchError as e:
                failures.append(f"round {i + 1}: {e}")
                continue
            latencies.append(started - delivered)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            _, err = daemon.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            daemon.kill()
            _, err = daemon.communicate()
        controller.stop()
        try:
            os.killpg(dovecot.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        dovecot.wait(10)
        shutil.rmtree(mail_dir, ignore_errors=True)
    if daemon.returncode != 0:
        failures.append(f"the daemon exited with {daemon.returncode}: {err[-500:]}")
    return {"runs": runs, "reply_to_action_s": stats(latencies), "halt_to_email_s": stats(mailed),
            "failures": failures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Email reply -> action started, through Dovecot IMAP IDLE.")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
        return 2
    with tempfile.TemporaryDirectory(prefix="fazt-bench-email-") as tmp:
        try:
            report = run(args.runs, Path(tmp))
        except BenchError as e:
            print(f"email_latency: {e}", file=sys.stderr)
            return 1
    median = report["reply_to_action_s"]["median"]
    ok = not report["failures"] and median <= TARGET_MEDIAN_S
    report["target_median_s"] = TARGET_MEDIAN_S
    report["verdict"] = verdict(ok)
    if args.json:
        print_json(report)
    else:
        r, m = report["reply_to_action_s"], report["halt_to_email_s"]
        print(f"reply delivered (IMAP APPEND) -> action started, {r['n']} runs: median {r['median'] * 1000:.0f} ms, "
              f"p95 {r['p95'] * 1000:.0f} ms, min {r['min'] * 1000:.0f} ms, max {r['max'] * 1000:.0f} ms "
              f"(target median <= {TARGET_MEDIAN_S:g} s: {verdict(ok)})")
        print(f"halt opened -> email at the SMTP server, {m['n']} runs: median {m['median'] * 1000:.0f} ms, "
              f"max {m['max'] * 1000:.0f} ms")
        for failure in report["failures"]:
            print(f"  failed: {failure}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
