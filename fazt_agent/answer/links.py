"""Signatures the answer channels hand out: signed links, email reply tokens, web sessions.

One HMAC-SHA256 key per data dir (`answer.key`, 32 random bytes, mode 0600, created on first use);
every signature is bound to its purpose, so a value signed for one use is worthless in another.
Signing is deterministic: a halt's links are the same wherever and whenever they are computed
(the notification, `halts show --json`), so nothing about them is stored but their use.

A link names its halt, its option, its owner and its expiry (never after the halt's), signed:
`{public_url}/a/{halt}.{option}.{expires}.{owner}.{mac}`. Using one (the POST of its page) is
recorded in `inbound` under its MAC, so a link works once; the halt's own exactly-once answer
covers the rest.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import FaztAgentError

if TYPE_CHECKING:
    from ..halt.store import Halt

KEY_FILE = "answer.key"
OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
LINK = re.compile(r"^(\d{1,18})\.([a-z0-9][a-z0-9_-]{0,31})\.(\d{1,12})\.([A-Za-z0-9][A-Za-z0-9._@-]{0,63})"
                  r"\.([A-Za-z0-9_-]{22})$")
BROADCAST_OWNER = "owner"   # the links of a notification sent to everyone (apprise)


class LinkError(FaztAgentError):
    """A link or token that does not verify; the message says why, without echoing secrets."""


@dataclass(frozen=True)
class Link:
    halt_id: int
    option: str
    expires: datetime
    owner: str
    mac: str

    @property
    def token(self) -> str:
        return f"{self.halt_id}.{self.option}.{int(self.expires.timestamp())}.{self.owner}.{self.mac}"


def load_key(data_dir: Path) -> bytes:
    """The data dir's signing key, created (0600, exclusively: two processes agree) on first use."""
    path = data_dir / KEY_FILE
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        data_dir.mkdir(parents=True, exist_ok=True)
        fresh = secrets.token_bytes(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:   # another process made it first: use theirs
            return load_key(data_dir)
        with os.fdopen(fd, "wb") as f:
            f.write(fresh)
            f.flush()
            os.fsync(f.fileno())
        return fresh
    if len(key) < 32:
        raise LinkError(f"{path}: the signing key is damaged ({len(key)} bytes); delete it to make a new one "
                        "(links already sent stop working)")
    return key


class Signer:
    """HMACs bound to a purpose, with the data dir's key."""

    def __init__(self, key: bytes):
        self._key = key

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> Signer:
        return cls(load_key(data_dir))

    def mac(self, purpose: str, text: str, size: int = 16) -> str:
        """base64url of the first `size` bytes of HMAC-SHA256(key, purpose NUL text)."""
        digest = hmac.new(self._key, f"{purpose}\0{text}".encode(), hashlib.sha256).digest()[:size]
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def check(self, purpose: str, text: str, mac: str, size: int = 16) -> bool:
        return hmac.compare_digest(self.mac(purpose, text, size), mac)

    # -- links ---------------------------------------------------------------------------

    def link(self, halt: Halt, option: str, owner: str = BROADCAST_OWNER, lifetime: float = 86400.0) -> Link:
        """The signed link answering `halt` with `option` as `owner`; it expires with the halt, or
        `lifetime` seconds after the halt was created if that is sooner."""
        expires = min(halt.expires_at, halt.created_at + timedelta(seconds=lifetime))
        expires = datetime.fromtimestamp(int(expires.timestamp()), timezone.utc)
        body = f"{halt.id}.{option}.{int(expires.timestamp())}.{owner}"
        return Link(halt.id, option, expires, owner, self.mac("link", body))

    def links(self, halt: Halt, public_url: str, owner: str = BROADCAST_OWNER,
              lifetime: float = 86400.0) -> dict[str, str]:
        """option -> URL of each of a halt's options."""
        base = public_url.rstrip("/")
        return {o: f"{base}/a/{self.link(halt, o, owner, lifetime).token}" for o in halt.options}

    def verify_link(self, token: str, now: datetime) -> Link:
        """The link a token names, if its signature holds and it has not expired.

        Raises:
            LinkError: malformed, forged or tampered ("does not verify"), or expired.
        """
        m = LINK.match(token)
        if m is None:
            raise LinkError("this link is malformed (cut short by a mail client?)")
        halt_id, option, expires, owner, mac = m.groups()
        if not self.check("link", f"{halt_id}.{option}.{expires}.{owner}", mac):
            raise LinkError("this link does not verify (forged, altered, or signed with another key)")
        at = datetime.fromtimestamp(int(expires), timezone.utc)
        link = Link(int(halt_id), option, at, owner, mac)
        if now >= at:
            raise LinkError(f"this link expired at {at:%Y-%m-%d %H:%M} UTC")
        return link

    # -- email reply tokens --------------------------------------------------------------

    def reply_token(self, halt_id: int) -> str:
        """The token of a halt's reply address (`agent+halt-ID-TOKEN@domain`): lowercase hex, since
        mail systems may fold the local part's case."""
        digest = hmac.new(self._key, f"reply\0{halt_id}".encode(), hashlib.sha256).hexdigest()
        return digest[:20]

    def check_reply_token(self, halt_id: int, token: str) -> bool:
        return hmac.compare_digest(self.reply_token(halt_id), token.lower())
