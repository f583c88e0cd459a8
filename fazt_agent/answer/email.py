"""Email answers (issue 12): halts go out by SMTP, the owner's replies come back over IMAP IDLE.

Out (`EmailChannel`, an answer channel of the outbox): one message per owner with an email in
`[[owners]]`, from `[email] address`, with a `Message-ID` per halt notice and a `Reply-To`
plus-address carrying a signed token (`agent+halt-ID-TOKEN@domain`, `links.Signer.reply_token`).
The request shows the whole plan, the options, and the owner's own signed links when `[http]
public_url` is set; the reminder and the closing notice (answered, expired, withdrawn) follow in
the same thread (`In-Reply-To`/`References`, `Re:`). A failed SMTP exchange is a NotifyError: the
outbox retries it.

In (`EmailListener`, a background task of the daemon, which never waits on the mail server):
IMAP IDLE on `[email] mailbox`, reconnecting with backoff when the server goes away. An unseen
message answers a halt only when all of these hold:
- it refers to the halt: its In-Reply-To/References name a Message-ID this channel sent about
  the halt, or its To carries the halt's plus-address with a token that verifies;
- its From is the email of an owner;
- it is authenticated: a DKIM signature that verifies, of the From domain (or a parent of it),
  covering the header that names the halt, over the whole body (no `l=`); or the topmost
  `Authentication-Results` header of `[email] authserv_id` (added by the agent's own mail server on
  receipt) says `dkim=pass` for the From domain or `dmarc=pass`;
- it is plain text: at most 1 MiB, a text/plain part in UTF-8, no attachment.
The first line that is neither empty nor quoted (`>`) decides: `approve`, `deny` or another option
of the halt, in any case. Anything else is refused and recorded — `halt.answer_refused` (channel
`email`) when the halt is known, `email.refused` when not — and an owner gets a reply saying why
and what is accepted. Replies go only to an owner's configured address, never to an address the
message names, and never to automatic mail: a forged message cannot make the agent mail anyone else.

Each message is processed once: its Message-ID is kept (`inbound`) once it was handled, then the
message is flagged `\\Seen` (and `$FaztProcessed` where the server allows keywords), so neither a
redelivery nor a restart answers twice. A crash between the two leaves a message that the next
start recognises by its Message-ID; one between the answer and its record at worst sends the owner
a second "already answered" reply, never a second answer.

`FAZT_AGENT_TEST_DKIM_KEYS` (tests only) names a JSON file mapping `selector._domainkey.domain` to
the TXT record of a DKIM key: the daemon then reads keys from it instead of DNS.
"""

from __future__ import annotations

import asyncio
import email
import hashlib
import json
import logging
import os
import re
import secrets
import ssl
import time
from collections import deque
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.policy import compat32
from email.utils import formataddr, formatdate, getaddresses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .. import messages
from ..event_types import EmailDisconnected, EmailRefused
from ..halt.store import HaltError
from ..notify import NotifyError, Outgoing
from ..units import format_duration, format_size
from .links import Signer

if TYPE_CHECKING:
    from ..config import Config, EmailSection, OwnerSection
    from ..halt.store import Halt

log = logging.getLogger(__name__)

CHANNEL = "email"
MAX_SIZE = 1024 * 1024            # a reply is one word: anything larger is not read
SMTP_TIMEOUT = 20.0               # each SMTP socket operation
SEND_TIMEOUT = 60.0               # one notification, every owner (below the outbox's 120 s lease)
IMAP_TIMEOUT = 30.0               # each IMAP command
IDLE_RENEW = 300.0                # IDLE is re-issued every 5 min (RFC 2177: at most 29), so a dead link shows
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 300.0
STOP_GRACE = 2.0                  # how long stopping waits for the message being handled
BATCH = 50                        # messages fetched per round (a command line stays short)
_ARRIVAL = re.compile(rb"\* \d+ (?:EXISTS|RECENT)", re.IGNORECASE)   # a message came into the mailbox
PROCESSED = "$FaztProcessed"
REPLIES_PER_HOUR = 10             # refusal replies to one owner: a flood of forgeries is not echoed
TEST_DKIM_KEYS = "FAZT_AGENT_TEST_DKIM_KEYS"
# headers RFC 5322 allows once: a second one could show the reader one value and DKIM another
SINGLE = ("from", "sender", "to", "cc", "subject", "date", "message-id", "in-reply-to", "references", "reply-to")
ADDRESS = re.compile(r"^[^@\s<>\"(),;:]+@[^@\s<>\"(),;:]+$")
PLUS = re.compile(r"^(?P<local>[^@+\s]+)\+halt-(?P<id>\d{1,18})-(?P<token>[0-9A-Za-z]{1,64})@(?P<domain>[^@\s]+)$")
MSGID = re.compile(r"<[^<>\s]{1,250}>")
TOKEN_HEADERS = ("to", "cc", "delivered-to", "x-original-to", "envelope-to")

DnsFunc = Callable[..., "bytes | None"]


def split_address(address: str) -> tuple[str, str]:
    local, _, domain = address.rpartition("@")
    return local, domain.lower()


def reply_address(address: str, signer: Signer, halt_id: int) -> str:
    """The plus-address whose token says which halt a reply answers: `agent+halt-ID-TOKEN@domain`."""
    local, domain = split_address(address)
    return f"{local}+halt-{halt_id}-{signer.reply_token(halt_id)}@{domain}"


def answer_help(options: list[str]) -> str:
    return f"reply with one word on the first line: {', '.join(options)} (any case; quoted lines are skipped)"


# -- sending ---------------------------------------------------------------------------------

class Smtp:
    """The agent's own sender: `[email] smtp_*` (TLS from the first byte on port 465 or with
    `smtp_implicit_tls`, else STARTTLS unless turned off; a login when set)."""

    def __init__(self, section: EmailSection):
        self.section = section

    async def send(self, mails: list[tuple[EmailMessage, str]]) -> None:
        """Send each (message, recipient) over one connection, in a worker thread.

        Raises:
            NotifyError: the server could not be reached or refused something (the server's words,
                never the password).
        """
        try:
            await asyncio.wait_for(asyncio.to_thread(self._send, mails), SEND_TIMEOUT)
        except TimeoutError:
            raise NotifyError(f"SMTP {self._where()}: no answer within {format_duration(SEND_TIMEOUT)}") from None

    def _where(self) -> str:
        return f"{self.section.smtp_host}:{self.section.smtp_port}"

    def _send(self, mails: list[tuple[EmailMessage, str]]) -> None:
        import smtplib

        s = self.section
        assert s.smtp_host and s.address
        try:
            tls = s.smtp_tls
            connection = (smtplib.SMTP_SSL(s.smtp_host, s.smtp_port, timeout=SMTP_TIMEOUT,
                                           context=ssl.create_default_context()) if tls == "implicit"
                          else smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=SMTP_TIMEOUT))
            with connection as smtp:
                smtp.ehlo()
                if tls == "starttls":   # never falls back to plain text: no STARTTLS is an error
                    smtp.starttls(context=ssl.create_default_context())
                    smtp.ehlo()
                if s.smtp_username:
                    smtp.login(s.smtp_username, s.smtp_password or "")
                for message, to in mails:
                    smtp.send_message(message, from_addr=s.address, to_addrs=[to])
        except smtplib.SMTPAuthenticationError as e:
            raise NotifyError(f"SMTP {self._where()}: login as {s.smtp_username!r} refused ({e.smtp_code}: "
                              f"{_server_text(e.smtp_error)}); check [email] smtp_username and smtp_password") from None
        except smtplib.SMTPResponseException as e:
            raise NotifyError(f"SMTP {self._where()}: {e.smtp_code} {_server_text(e.smtp_error)}") from None
        except smtplib.SMTPRecipientsRefused as e:
            refused = ", ".join(f"{to} ({code} {_server_text(text)})" for to, (code, text) in e.recipients.items())
            raise NotifyError(f"SMTP {self._where()}: recipient refused: {refused}") from None
        except (smtplib.SMTPException, OSError) as e:
            raise NotifyError(f"SMTP {self._where()}: {type(e).__name__}: {e}") from None


def _server_text(text: bytes | str) -> str:
    return (text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text))[:300]


def _new_id(tag: str, domain: str) -> str:
    return f"<{tag}.{secrets.token_hex(8)}@{domain}>"


class EmailChannel:
    """The outgoing side: each halt notice, to every owner with an email (the outbox's answer channel)."""

    name = CHANNEL

    def __init__(self, config: Config):
        self.config = config
        self.section = config.file.email
        self.smtp = Smtp(self.section)
        self._signer: Signer | None = None

    @property
    def signer(self) -> Signer:
        if self._signer is None:
            self._signer = Signer.for_data_dir(self.config.data_dir)
        return self._signer

    async def send(self, note: Outgoing) -> str | None:
        """Mail `note` to each owner; returns its Message-ID (kept as the row's ref: replies name it).

        Raises:
            NotifyError: no owner has an email, or SMTP failed (the outbox retries).
        """
        if note.halt is None:
            return None
        owners = [o for o in self.config.file.owners if o.email]
        if not owners:
            raise NotifyError("no [[owners]] entry has an email: add `email = \"you@example.org\"` to one in "
                              "config.toml, or remove [email] smtp_host")
        assert self.section.address
        domain = split_address(self.section.address)[1]
        # one Message-ID per notification row, the same on a retry (mail clients drop the duplicate);
        # the MAC keeps two data dirs, whose row ids repeat, from ever writing the same one
        tag = f"halt-{note.halt.id}" if note.kind == "request" else f"halt-{note.halt.id}-{note.kind or 'notice'}"
        message_id = f"<{tag}.{note.id}.{self.signer.mac('message-id', str(note.id), 6)}@{domain}>"
        await self.smtp.send([(self.compose(note, owner, message_id), owner.email or "") for owner in owners])
        return message_id

    def compose(self, note: Outgoing, owner: OwnerSection, message_id: str) -> EmailMessage:
        halt = note.halt
        assert halt is not None and self.section.address
        message = EmailMessage()
        message["From"] = formataddr(("fazt-agent", self.section.address))
        message["To"] = owner.email
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = message_id
        message["Reply-To"] = reply_address(self.section.address, self.signer, halt.id)
        message["Auto-Submitted"] = "auto-generated"
        message["X-Fazt-Halt"] = str(halt.id)
        first = note.refs[0] if note.refs else None
        if note.kind == "request" or first is None:
            message["Subject"] = " ".join(note.title.split())
        else:
            message["Subject"] = f"Re: {halt.title}"
            message["In-Reply-To"] = first
            message["References"] = " ".join([first, *note.refs[1:][-9:]])   # the thread's start and its latest
        message.set_content(self.body(note, halt, owner))
        return message

    def body(self, note: Outgoing, halt: Halt, owner: OwnerSection) -> str:
        """The text: the whole plan for a request or reminder, with how to answer; the notice for the rest."""
        if note.kind not in ("request", "reminder"):
            return note.body
        full = messages.all_steps(halt)
        text = full if note.kind == "request" else note.body.replace(halt.body, full)
        if halt.status != "pending":
            return text
        text += f"\n\nTo answer by email, {answer_help(halt.options)}."
        http = self.config.file.http
        if http.public_url:
            links = self.signer.links(halt, http.public_url, owner=owner.name, lifetime=http.link_expiry)
            text += ("\n\nOr answer from anywhere (each link shows the plan and asks you to confirm):\n"
                     + "\n".join(f"  {option}: {url}" for option, url in links.items()))
        return text


# -- reading ---------------------------------------------------------------------------------

class Refused(Exception):
    """A message that answers nothing: `reason` for the audit trail and the owner."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Reply:
    """What was read of one message."""

    message: Message
    raw: bytes
    message_id: str
    sender: str | None            # the one From address, as written (not yet authenticated)
    owner: str | None             # the owner that address belongs to
    halt: Halt | None = None
    named_by: tuple[str, ...] = ()  # the headers that named the halt
    option: str = ""              # the first line's word, when there is one (for the audit trail)
    who: str = ""                 # the refusal's `by`: the owner once authenticated, else email:ADDRESS


def single_sender(message: Message) -> str | None:
    """The one address of the From header, or None: absent, several, or unparseable."""
    values = message.get_all("From") or []
    if len(values) != 1:
        return None
    pairs = getaddresses([str(values[0])])
    if len(pairs) != 1 or not ADDRESS.match(pairs[0][1]):
        return None
    return pairs[0][1]


def header_text(message: Message, name: str) -> str:
    """A header as one line of text: encoded words decoded, folding undone, cut at 200 characters."""
    from email.header import decode_header, make_header

    value = message.get(name)
    if value is None:
        return ""
    try:
        text = str(make_header(decode_header(str(value))))
    except (ValueError, LookupError, UnicodeError):
        text = str(value)
    return " ".join(text.split())[:200]


def automatic(message: Message, sender: str | None) -> bool:
    """Mail no one should reply to: auto-replies, lists, bounces (no reply loops, no backscatter)."""
    submitted = str(message.get("Auto-Submitted", "no")).strip().lower()
    precedence = str(message.get("Precedence", "")).strip().lower()
    local = (sender or "").partition("@")[0].lower()
    bounce = str(message.get("Return-Path", "")).strip() == "<>" or local in ("mailer-daemon", "postmaster")
    return submitted != "no" or precedence in ("bulk", "junk", "list") or bounce or message.get("List-Id") is not None


def plain_text(message: Message) -> str:
    """The text/plain part, decoded.

    Raises:
        Refused: an attachment, a part that is neither text/plain nor text/html, HTML only, or a
            text that is not UTF-8.
    """
    parts = [p for p in message.walk() if not p.is_multipart()]
    for part in parts:
        kind = part.get_content_type()
        attached = part.get_content_disposition() == "attachment" or part.get_filename()
        if attached or kind not in ("text/plain", "text/html"):
            name = part.get_filename()
            raise Refused(f"the reply carries an attachment ({kind}{f', {name}' if name else ''}); "
                          "attachments are not accepted: reply with text only")
    plain = [p for p in parts if p.get_content_type() == "text/plain"]
    if not plain:
        raise Refused("the reply is HTML only; send it as plain text (or with a plain-text part)")
    charset = (plain[0].get_content_charset() or "us-ascii").lower()
    if charset not in ("utf-8", "utf8", "us-ascii", "ascii"):
        raise Refused(f"the reply's text is in {charset[:40]}, not UTF-8; set your mail client to UTF-8")
    payload = plain[0].get_payload(decode=True)
    try:
        return (payload if isinstance(payload, bytes) else b"").decode("utf-8")
    except UnicodeDecodeError:
        raise Refused("the reply's text is not valid UTF-8; set your mail client to UTF-8") from None


def first_line(text: str) -> str:
    """The first line that is neither empty nor quoted (`>`): the answer."""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith(">"):
            return stripped
    return ""


def word_of(line: str) -> str:
    return line.rstrip(".!").strip().lower()[:64]


def _strip_comments(text: str) -> str:
    out, depth, escaped = [], 0, False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "(":
            depth += 1
            continue
        elif ch == ")" and depth:
            depth -= 1
            continue
        if depth == 0:
            out.append(ch)
    return "".join(out)


def parse_authentication_results(value: str) -> tuple[str, list[tuple[str, str, dict[str, str]]]]:
    """(authserv-id, [(method, result, {property: value})]) of an Authentication-Results header (RFC 8601)."""
    text = re.sub(r"\s*=\s*", "=", _strip_comments(" ".join(value.split())))
    head, *rest = text.split(";")
    words = head.split()
    results = []
    for item in rest:
        tokens = item.split()
        if not tokens or "=" not in tokens[0]:
            continue
        method, _, result = tokens[0].partition("=")
        props = {}
        for token in tokens[1:]:
            key, eq, val = token.partition("=")
            if eq:
                props[key.lower()] = val.strip('"').lower()
        results.append((method.partition("/")[0].lower(), result.lower(), props))
    return (words[0].lower() if words else ""), results


def aligned(domain: str, from_domain: str) -> bool:
    """Whether a signing domain speaks for the From domain: the same, or a parent of it."""
    domain = domain.strip().rstrip(".").lower()
    return bool(domain) and (from_domain == domain or from_domain.endswith("." + domain))


def file_dnsfunc(path: str) -> DnsFunc:
    """A DKIM key lookup reading `selector._domainkey.domain` -> TXT from a JSON file (tests only)."""
    table = {k.lower().rstrip("."): v for k, v in json.loads(Path(path).read_text()).items()}

    def lookup(name: bytes | str, timeout: float = 5) -> bytes | None:
        key = (name.decode() if isinstance(name, bytes) else name).lower().rstrip(".")
        value = table.get(key)
        return value.encode() if value is not None else None

    return lookup


def default_dnsfunc() -> DnsFunc | None:
    """The DNS lookup of DKIM keys: dkimpy's own (None), or the test file of FAZT_AGENT_TEST_DKIM_KEYS."""
    path = os.environ.get(TEST_DKIM_KEYS)
    if not path:
        return None
    log.warning("%s is set: DKIM keys are read from %s instead of DNS (for tests only)", TEST_DKIM_KEYS, path)
    return file_dnsfunc(path)


def dkim_check(raw: bytes, from_domain: str, naming: tuple[str, ...], dnsfunc: DnsFunc | None) -> str | None:
    """None when a DKIM signature of the From domain verifies over the whole body and covers a
    header naming the halt; otherwise why not. Blocking (DNS): run it in a thread."""
    import dkim

    quiet = logging.getLogger(f"{__name__}.dkim")
    try:
        d = dkim.DKIM(raw, logger=quiet, minkey=1024)
    except dkim.DKIMException as e:
        return f"the message cannot be checked ({e})"
    count = sum(1 for name, _ in d.headers if name.lower() == b"dkim-signature")
    if not count:
        return "it has no DKIM signature"
    reasons = []
    for idx in range(count):
        try:
            signer = None
            prep = d.verify_headerprep(idx)
            if not prep:
                continue
            sig = prep[0]
            signer = sig[b"d"].decode("ascii", "replace").lower()
            if b"l" in sig:
                reasons.append(f"the signature of {signer} covers only part of the body (l=)")
                continue
            ok = d.verify(idx, dnsfunc=dnsfunc) if dnsfunc is not None else d.verify(idx)
        except dkim.DKIMException as e:
            text = str(e)
            if "body hash mismatch" in text:
                text = "body hash mismatch: the text was changed after it was signed"
            reasons.append(f"the signature{f' of {signer}' if signer else ''} does not verify ({text[:160]})")
            continue
        if not ok:
            reasons.append(f"the signature of {signer} does not verify (a wrong signature, or no key in DNS)")
            continue
        if not aligned(signer, from_domain):
            reasons.append(f"the signature verifies but is by {signer}, not by the From domain {from_domain}")
            continue
        signed = {h.decode("ascii", "replace").lower() for h in d.include_headers}
        if naming and not signed.intersection(naming):
            reasons.append(f"the signature of {signer} does not cover the header naming the halt ({', '.join(naming)})")
            continue
        return None
    return "; ".join(reasons) or "no DKIM signature could be read"


def authres_check(message: Message, authserv_id: str, from_domain: str) -> str | None:
    """None when the topmost Authentication-Results of `authserv_id` says dkim=pass (of the From
    domain) or dmarc=pass; otherwise why not."""
    for value in message.get_all("Authentication-Results") or []:
        server, results = parse_authentication_results(str(value))
        if server != authserv_id.lower():
            continue
        for method, result, props in results:
            if method == "dmarc" and result == "pass" and aligned(props.get("header.from", from_domain), from_domain):
                return None
            if method == "dkim" and result == "pass":
                domain = props.get("header.d") or props.get("header.i", "").rpartition("@")[2]
                if domain and aligned(domain, from_domain):
                    return None
        said = ", ".join(f"{m}={r}" for m, r, _ in results) or "nothing"
        return f"the Authentication-Results of {authserv_id} say {said[:160]}"
    return f"it has no Authentication-Results header of {authserv_id}"


class EmailListener:
    """The daemon's reader of replies: `start` returns at once, the IDLE loop runs as a task."""

    def __init__(self, *, dnsfunc: DnsFunc | None = None):
        self._dnsfunc = dnsfunc
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._replies: dict[str, deque[float]] = {}
        self._keywords = False
        self._arrived = False   # the server announced a message (EXISTS/RECENT) since the last SEARCH began

    async def start(self, answers: Any, config: Config) -> None:
        """Start reading `[email] mailbox`; `answers` is the daemon's `core.Answers` (typed loosely:
        core imports the executor, which imports this module's channel)."""
        self.answers = answers
        self.config = config
        self.section = config.file.email
        if not self.section.address:
            log.warning("[email] imap_host is set but address is not: email replies are not read (set [email] "
                        "address, the agent's own mailbox)")
            return
        self.smtp = Smtp(self.section)
        self.signer = Signer.for_data_dir(config.data_dir)
        if self._dnsfunc is None:
            self._dnsfunc = default_dnsfunc()
        # aioimaplib's debug lines show the LOGIN command; its own scrubbing misses quoted passwords
        logging.getLogger("aioimaplib").setLevel(max(logging.INFO, logging.getLogger().level))
        if not self.section.dkim and not self.section.authserv_id:
            log.warning("[email] dkim is off and authserv_id is unset: every email reply will be refused")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="email listener")

    async def stop(self) -> None:
        """Stop reading; a message being handled gets STOP_GRACE seconds to finish."""
        self._stopping.set()
        task = self._task
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), STOP_GRACE)
        except Exception:   # still busy after the grace: cancelled; the message stays unseen, read again at start
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    @property
    def server(self) -> str:
        return f"{self.section.imap_host}:{self.section.imap_port}"

    async def _run(self) -> None:
        """Sessions, one after another, with backoff between failed ones; `email.disconnected` once per outage."""
        failures, down = 0, False
        while not self._stopping.is_set():
            started = [False]
            try:
                await self._session(started)
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:   # any failure of the server or the link: reconnect
                if started[0]:
                    failures, down = 0, False
                wait = min(BACKOFF_FIRST * 2 ** failures, BACKOFF_MAX)
                failures += 1
                error = _describe(e)
                log.warning("email: IMAP %s: %s; reconnecting in %s", self.server, error, format_duration(wait))
                if not down:
                    down = True
                    try:
                        await self.answers.executor.rt.events.emit("email.disconnected", EmailDisconnected(
                            server=self.server, error=error, retry_in_s=wait), source="email")
                    except Exception:
                        log.exception("email: could not record the disconnection")
                try:
                    await asyncio.wait_for(self._stopping.wait(), wait)
                except TimeoutError:
                    pass

    async def _session(self, started: list[bool]) -> None:
        import aioimaplib

        s = self.section
        lost = asyncio.Event()
        context = ssl.create_default_context() if s.imap_tls else None
        # IMAP4 with a TLS context is IMAP4_SSL, and it reports a lost connection
        client = aioimaplib.IMAP4(s.imap_host or "", s.imap_port, timeout=IMAP_TIMEOUT,
                                  conn_lost_cb=lambda exc: lost.set(), ssl_context=context)
        try:
            self._watch_arrivals(client)
            await client.wait_hello_from_server()
            login = await client.login(aioimaplib.quoted(s.imap_username or s.address or ""), s.imap_password or "")
            if login.result != "OK":
                raise ImapError(f"login as {s.imap_username or s.address!r} refused ({_lines(login)}); "
                                "check [email] imap_username and imap_password")
            selected = await client.select(aioimaplib.quoted(s.mailbox))
            if selected.result != "OK":
                raise ImapError(f"cannot open mailbox {s.mailbox!r} ({_lines(selected)}); check [email] mailbox")
            self._keywords = any(b"PERMANENTFLAGS" in line and b"\\*" in line for line in selected.lines
                                 if isinstance(line, bytes))
            if "IDLE" not in client.protocol.capabilities:
                raise ImapError("the server does not offer IDLE")
            started[0] = True
            log.info("email: reading replies in %s on %s (IMAP IDLE)", s.mailbox, self.server)
            while not self._stopping.is_set():
                await self._read_unseen(client, lost)
                if self._stopping.is_set():
                    break
                await self._idle(client, lost)
            try:
                await asyncio.wait_for(client.logout(), 2)
            except Exception:
                pass
        finally:
            transport = client.protocol.transport
            if transport is not None:
                transport.close()

    def _watch_arrivals(self, client: Any) -> None:
        """Note every `* N EXISTS` / `* N RECENT` the server sends. aioimaplib queues those that come
        during IDLE and drops (logs) those that come with another command's answer, and the server does
        not repeat them in the next IDLE: a reply delivered while the last SEARCH before IDLE ran
        would wait for IDLE's renewal (5 min). `_read_unseen` searches again when one was noted."""
        protocol = client.protocol
        untagged = getattr(protocol, "_untagged_response", None)
        if untagged is None:   # another aioimaplib: IDLE's own pushes and its renewal still read everything
            return

        def noted(line: bytes) -> Any:
            if _ARRIVAL.fullmatch(line.rstrip()):
                self._arrived = True
            return untagged(line)

        protocol._untagged_response = noted

    async def _idle(self, client: Any, lost: asyncio.Event) -> None:
        """Wait in IDLE until the server reports a change, IDLE_RENEW passes, or we stop."""
        idle = await client.idle_start(timeout=IDLE_RENEW)
        waits = [asyncio.ensure_future(client.wait_server_push(timeout=IDLE_RENEW + IMAP_TIMEOUT)),
                 asyncio.ensure_future(lost.wait()), asyncio.ensure_future(self._stopping.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if lost.is_set():
            idle.cancel()
            raise ImapError("the server closed the connection")
        client.idle_done()
        await asyncio.wait_for(idle, IMAP_TIMEOUT)

    async def _read_unseen(self, client: Any, lost: asyncio.Event) -> None:
        """Handle every unseen message, a batch at a time, until none is left."""
        while not (self._stopping.is_set() or lost.is_set()):
            self._arrived = False
            found = await client.uid_search("UNSEEN")
            _check(found, "SEARCH UNSEEN")
            uids = [u for line in found.lines[:-1] if isinstance(line, bytes) for u in line.decode().split()
                    if u.isdigit()]
            if not uids:
                if self._arrived:   # a message came while searching: its notice is gone, look again
                    continue
                return
            await self._read_batch(client, lost, uids[:BATCH])

    async def _read_batch(self, client: Any, lost: asyncio.Event, uids: list[str]) -> None:
        sizes = await client.uid("fetch", ",".join(uids), "(RFC822.SIZE)")
        _check(sizes, "FETCH RFC822.SIZE")
        by_uid = {}
        for line in sizes.lines:
            if isinstance(line, bytes):
                m = re.search(rb"UID (\d+).*RFC822\.SIZE (\d+)|RFC822\.SIZE (\d+).*UID (\d+)", line)
                if m:
                    uid, size = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
                    by_uid[uid.decode()] = int(size)
        for uid in uids:
            if self._stopping.is_set() or lost.is_set():
                return
            size = by_uid.get(uid, 0)
            fetched = await client.uid("fetch", uid, "(BODY.PEEK[HEADER])" if size > MAX_SIZE else "(BODY.PEEK[])")
            _check(fetched, "FETCH")
            raw = next((bytes(line) for line in fetched.lines if isinstance(line, bytearray)), b"")
            await self._handle(raw, size)
            flags = f"(\\Seen {PROCESSED})" if self._keywords else "(\\Seen)"
            _check(await client.uid("store", uid, "+FLAGS.SILENT", flags), "STORE")

    # -- one message -----------------------------------------------------------------------

    async def _handle(self, raw: bytes, size: int) -> None:
        """Read one message and answer, refuse or reply; never raises but for a cancellation (one bad
        message is one message). Its Message-ID is kept once it was handled, not before: a stop
        in the middle leaves it to be read again."""
        key = None
        try:
            message = email.message_from_bytes(raw, policy=compat32)
            message_id = (MSGID.findall(str(message.get("Message-ID", ""))) or [""])[0]
            key = message_id or "sha256:" + hashlib.sha256(raw).hexdigest()
            if await self._seen_before(key):
                await self._record(None, f"a second delivery of message {key[:200]}: it was handled before",
                                   single_sender(message), message_id)
                return
            await self._judge(message, raw, size, message_id)
        except Exception as e:   # a bug must not stop the listener, nor make it read the message forever
            log.exception("email: a message could not be handled")
            try:
                await self._record(None, f"the message could not be handled ({type(e).__name__}: {str(e)[:200]})",
                                   None, None)
            except Exception:
                log.exception("email: could not record the failure")
        if key is not None:
            try:
                await self.answers.seen(CHANNEL, key)
            except Exception:
                log.exception("email: could not keep message %s as handled", key[:200])

    async def _seen_before(self, key: str) -> bool:
        row = await self.answers.store.fetchone("SELECT 1 FROM inbound WHERE channel = ? AND key = ?",
                                                (CHANNEL, key[:512]))
        return row is not None

    async def _judge(self, message: Message, raw: bytes, size: int, message_id: str) -> None:
        sender = single_sender(message)
        owner = self.answers.owner_of(CHANNEL, sender) if sender else None
        reply = Reply(message, raw, message_id, sender, owner, who=f"email:{sender or '?'}")
        try:
            await self._find_halt(reply)
            self._read_option(reply, size)
            repeated = [h for h in SINGLE if len(message.get_all(h) or []) > 1]
            if repeated:
                raise Refused(f"the message is malformed: more than one {', '.join(repeated)} header")
            if size > MAX_SIZE:
                raise Refused(f"the message is {format_size(size)}; replies are read up to {format_size(MAX_SIZE)}")
            if sender is None:
                raise Refused("its From header does not name exactly one address")
            if owner is None:
                raise Refused(f"{sender} is not the email of an owner (see [[owners]] email in config.toml)")
            not_authentic = await self._authenticate(reply)
            if not_authentic:
                raise Refused(f"it is not authenticated: {not_authentic}")
            reply.who = owner
            if reply.halt is None:
                raise Refused("it does not refer to a halt: reply to the halt's email (its Reply-To address)")
            text = plain_text(message)
            line = first_line(text)
            if not line:
                raise Refused(f"it has no answer: {answer_help(reply.halt.options)}")
        except Refused as r:
            await self._refuse(reply, r.reason)
            return
        assert reply.halt is not None and sender is not None
        try:
            await self.answers.answer(reply.halt.id, reply.option, channel=CHANNEL, identity=sender,
                                      note=f"email {message_id}"[:200] if message_id else None)
        except HaltError as e:   # recorded by the answer path: tell the owner why
            await self._reply(reply, f"{e}.")
            return
        log.info("email: halt #%d answered %r by %s", reply.halt.id, reply.option, owner)

    async def _find_halt(self, reply: Reply) -> None:
        """The halt a message names: by the Message-IDs this channel sent (In-Reply-To, References)
        or by its plus-address token (To, Cc, Delivered-To...).

        Raises:
            Refused: a plus-address whose token does not verify, or two different halts named.
        """
        message = reply.message
        local, domain = split_address(self.section.address or "")
        by_ref: dict[int, list[str]] = {}
        for header in ("in-reply-to", "references"):
            ids = [i for v in message.get_all(header) or [] for i in MSGID.findall(str(v))][-50:]
            if ids:
                rows = await self.answers.store.fetchall(
                    f"SELECT DISTINCT halt_id FROM notifications WHERE channel = ? AND halt_id IS NOT NULL"
                    f" AND ref IN ({','.join('?' * len(ids))})", (CHANNEL, *ids))
                for row in rows:
                    by_ref.setdefault(row["halt_id"], []).append(header)
        by_token: dict[int, list[str]] = {}
        for header in TOKEN_HEADERS:
            for _, address in getaddresses([str(v) for v in message.get_all(header) or []]):
                m = PLUS.match(address)
                if not m or m["local"].lower() != local.lower() or m["domain"].lower() != domain:
                    continue
                if not self.signer.check_reply_token(int(m["id"]), m["token"]):
                    reply.halt = await self._halt(next(iter(by_ref), None))
                    raise Refused(f"its reply address names halt #{m['id']} with a token that does not verify "
                                  "(altered, or not from this agent)")
                by_token.setdefault(int(m["id"]), []).append(header)
        named = {**by_ref, **by_token}
        if len(named) > 1:
            raise Refused(f"it refers to more than one halt ({', '.join(f'#{h}' for h in sorted(named))})")
        if named:
            halt_id = next(iter(named))
            reply.halt = await self._halt(halt_id)
            reply.named_by = tuple(dict.fromkeys(by_ref.get(halt_id, []) + by_token.get(halt_id, [])))

    async def _halt(self, halt_id: int | None) -> Halt | None:
        return await self.answers.executor.halts.get(halt_id) if halt_id is not None else None

    def _read_option(self, reply: Reply, size: int) -> None:
        """The first line's word, for the answer and the audit trail of a refusal (best effort)."""
        if size > MAX_SIZE:
            return
        try:
            reply.option = word_of(first_line(plain_text(reply.message)))
        except Refused:
            pass

    async def _authenticate(self, reply: Reply) -> str | None:
        """None when DKIM or the agent's own mail server vouches for the From domain; else why not."""
        assert reply.sender is not None
        from_domain = split_address(reply.sender)[1]
        reasons = []
        if self.section.dkim:
            dkim_reason = await asyncio.to_thread(dkim_check, reply.raw, from_domain, reply.named_by, self._dnsfunc)
            if dkim_reason is None:
                return None
            reasons.append(dkim_reason)
        if self.section.authserv_id:
            ar_reason = authres_check(reply.message, self.section.authserv_id, from_domain)
            if ar_reason is None:
                return None
            reasons.append(ar_reason)
        if not reasons:
            return "[email] dkim is off and authserv_id is unset"
        return "; ".join(reasons)

    async def _refuse(self, reply: Reply, reason: str) -> None:
        """Record a refusal (the halt's when known) and tell the owner."""
        await self._record(reply.halt, reason, reply.sender, reply.message_id, reply)
        await self._reply(reply, f"It was not taken as an answer: {reason}.")

    async def _record(self, halt: Halt | None, reason: str, sender: str | None, message_id: str | None,
                      reply: Reply | None = None) -> None:
        if halt is not None and reply is not None:
            try:
                await self.answers.refuse(halt.id, reply.option, CHANNEL, reply.who, reason)
            except HaltError:
                pass
            return
        await self.answers.executor.rt.events.emit("email.refused", EmailRefused(
            reason=reason, sender=sender[:254] if sender else None,
            message_id=message_id[:254] if message_id else None), source="email")
        log.info("email: refused a message from %s: %s", sender or "?", reason)

    async def _reply(self, reply: Reply, text: str) -> None:
        """Mail the owner the message's fate; only to the owner's configured address, never to
        automatic mail, at most REPLIES_PER_HOUR an hour each."""
        if reply.owner is None or automatic(reply.message, reply.sender):
            return
        address = next((o.email for o in self.config.file.owners if o.name == reply.owner and o.email), None)
        if address is None or not self.section.smtp_host or not self.section.address:
            return
        sent = self._replies.setdefault(reply.owner, deque())
        now = time.monotonic()
        while sent and now - sent[0] > 3600:
            sent.popleft()
        if len(sent) >= REPLIES_PER_HOUR:
            log.warning("email: not replying to %s: %d replies in the last hour already", address, len(sent))
            return
        sent.append(now)
        halt = reply.halt
        if halt is not None and halt.status == "pending":
            text += f"\n\nTo answer halt #{halt.id} ({halt.plan.summary}), {answer_help(halt.options)}."
        subject = header_text(reply.message, "Subject") or (halt.title if halt else "your email")
        message = EmailMessage()
        message["From"] = formataddr(("fazt-agent", self.section.address))
        message["To"] = address
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = _new_id("reply", split_address(self.section.address)[1])
        message["Subject"] = subject if subject.lower().startswith("re:") else f"Re: {subject}"
        message["Auto-Submitted"] = "auto-replied"
        if halt is not None:
            message["Reply-To"] = reply_address(self.section.address, self.signer, halt.id)
        if reply.message_id:
            message["In-Reply-To"] = reply.message_id
            refs = MSGID.findall(str(reply.message.get("References", "")))[-9:]
            message["References"] = " ".join([*refs, reply.message_id])
        message.set_content(text)
        try:
            await self.smtp.send([(message, address)])
        except NotifyError as e:
            log.warning("email: could not reply to %s: %s", address, e)


class ImapError(Exception):
    """The IMAP server refused something the listener needs (login, the mailbox, IDLE)."""


def _lines(response: Any) -> str:
    return " ".join(line.decode("utf-8", "replace") for line in response.lines if isinstance(line, bytes))[:200]


def _check(response: Any, what: str) -> None:
    if response.result != "OK":
        raise ImapError(f"{what} failed: {_lines(response)}")


def _describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "no answer in time"
    return f"{type(e).__name__}: {e}"[:300] if str(e) else type(e).__name__
