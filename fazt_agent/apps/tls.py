"""TLS on the apps plane (`[apps] tls_listen`): the certificates the agent renews (`[[certificates]]`
in kernel/*.toml), chosen by SNI and reloaded after each renewal without a restart.

How it is served. uvicorn's own TLS settings (`ssl_certfile`, `ssl_keyfile`) load one certificate:
no SNI. But uvicorn hands whatever `Config(ssl_context_factory=...)` returns to
`loop.create_server(sock=..., ssl=...)`, so `start` serves through `web.app.start` (the plain
listener's) and gives uvicorn one outer context holding no certificate, only an `sni_callback`: in each
handshake it points the connection at the chosen certificate's own context
(`SSLObject.context = ...`, the standard library's SNI mechanism; OpenSSL calls it without SNI
too, with None). HTTP stays uvicorn's, with the same ASGI app as the plain listener; requests
see the scheme `https`. No TLS code of ours runs on the data path.

Choosing (`choose`, pure): an exact domain, else a leading wildcard (`*.example.com` covers one
label: `a.example.com`, not `example.com` nor `a.b.example.com`), the first declared winning
(kernel/*.toml in file-name order, then as written); no SNI (a client asking by IP address) or no
match gets the first certificate, i.e. the first that loaded.

Reloading (`Certificates.refresh`, every 2 s from a task of the listener, never in a handshake): a
`stat` of each certificate and key file (mtime, size, inode: a renewal renames new files over the
old ones, certbot repoints symlinks). A changed pair is loaded into a new context, which new
handshakes get at once; open connections keep the one they started with. A pair that does not load
(a broken file, a key that does not match, an encrypted key, a missing file) leaves the previous
context serving; if the same files still fail at the next look (so a renewal caught between its
two renames is not reported), it is recorded once as `apps.tls_error` and logged as a warning.
Edits of kernel/ that add or drop certificates (the engine reloads kernel/) apply at the next look.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from dataclasses import dataclass
from typing import Any, Sequence

from ..certs.config import Certificate

log = logging.getLogger(__name__)
RELOAD_INTERVAL = 2.0

Stamp = tuple[Any, ...]


def index(domains: Sequence[Sequence[str]]) -> tuple[dict[str, int], dict[str, int]]:
    """(exact name -> position, wildcard suffix -> position) of certificates' domain lists, the
    first position winning a name two certificates list."""
    exact: dict[str, int] = {}
    wild: dict[str, int] = {}
    for position, names in enumerate(domains):
        for name in names:
            name = name.lower()
            if name.startswith("*."):
                wild.setdefault(name[2:], position)
            else:
                exact.setdefault(name, position)
    return exact, wild


def choose(server_name: str | None, exact: dict[str, int], wild: dict[str, int]) -> int:
    """The position of the certificate for `server_name` (see the module docstring); 0 when none matches."""
    if not server_name:
        return 0
    name = server_name.lower().rstrip(".")
    found = exact.get(name)
    if found is None:
        _, dot, parent = name.partition(".")
        found = wild.get(parent) if dot else None
    return 0 if found is None else found


def new_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class LoadError(Exception):
    """A certificate and key that cannot be loaded; the message says which file and why."""


def _no_password() -> bytes:
    # without a callback, OpenSSL would ask for an encrypted key's password on the terminal
    raise LoadError("the private key is encrypted: write it without a passphrase")


def load(cert: Certificate) -> ssl.SSLContext:
    """A context serving `cert`'s chain and key.

    Raises:
        LoadError: a file is missing or unreadable, not PEM, or the key does not match.
    """
    for path, marker, what in ((cert.cert_path, b"-----BEGIN CERTIFICATE-----", "a PEM certificate chain"),
                               (cert.key_path, b"PRIVATE KEY-----", "a PEM private key")):
        try:
            data = path.read_bytes()
        except OSError as e:
            raise LoadError(f"cannot read {path}: {e.strerror or e}") from None
        if marker not in data:
            raise LoadError(f"{path} is not {what}")
    context = new_context()
    try:
        context.load_cert_chain(cert.cert_path, cert.key_path, password=_no_password)
    except LoadError as e:
        raise LoadError(f"{cert.key_path}: {e}") from None
    except ssl.SSLError as e:
        raise LoadError(f"{cert.cert_path} with {cert.key_path}: {_ssl_reason(e)}") from None
    except OSError as e:
        raise LoadError(f"cannot read {e.filename or cert.cert_path}: {e.strerror or e}") from None
    return context


def _ssl_reason(e: ssl.SSLError) -> str:
    if "MISMATCH" in (e.reason or "").upper():
        return "the private key does not belong to the certificate"
    if "PEM lib" in str(e):
        return "not a valid PEM certificate chain and private key"
    return str(e.reason or e).lower().replace("_", " ")


def stamp(cert: Certificate) -> Stamp:
    """What changes when either file is replaced or edited (an error text when one cannot be seen)."""
    parts: list[Any] = []
    for path in (cert.cert_path, cert.key_path):
        try:
            st = os.stat(path)
            parts.append((st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev))
        except OSError as e:
            parts.append(e.strerror or str(e))
    return (cert.cert_path, cert.key_path, *parts)


@dataclass(frozen=True)
class Problem:
    """A certificate whose files did not load at two looks in a row."""

    certificate: str
    cert_path: str
    key_path: str
    error: str
    serving_previous: bool


class _Entry:
    def __init__(self, cert: Certificate):
        self.cert = cert
        self.stamp: Stamp | None = None      # the files' stamp `context` was loaded from
        self.context: ssl.SSLContext | None = None
        self.failed: Stamp | None = None     # the stamp of files that did not load
        self.reported: Stamp | None = None   # ... already reported
        self.error = ""


class Certificates:
    """One context per certificate, and the SNI callback that picks one for each handshake."""

    def __init__(self) -> None:
        self._declared: tuple[Certificate, ...] = ()
        self._entries: list[_Entry] = []
        # replaced whole, so a handshake always reads a consistent set
        self._served: tuple[dict[str, int], dict[str, int], list[ssl.SSLContext]] = ({}, {}, [])

    def outer_context(self) -> ssl.SSLContext:
        """The context a listener is created with: no certificate, only the SNI callback."""
        context = new_context()
        context.sni_callback = self._sni   # type: ignore[assignment]
        return context

    def refresh(self, declared: Sequence[Certificate]) -> list[Problem]:
        """Follow `declared` (an empty list keeps the last set) and load the pairs whose files
        changed; the problems to report now. Never raises."""
        changed = False
        if declared and tuple(declared) != self._declared:
            self._follow(tuple(declared))
            changed = True
        problems = []
        for entry in self._entries:
            now = stamp(entry.cert)
            if now == entry.stamp:
                entry.failed = None
                continue
            if now == entry.failed:
                if entry.reported != now:
                    entry.reported = now
                    problems.append(Problem(entry.cert.name, str(entry.cert.cert_path), str(entry.cert.key_path),
                                            entry.error, entry.context is not None))
                continue
            try:
                context = load(entry.cert)
            except LoadError as e:
                entry.failed, entry.error = now, str(e)
                continue
            reloaded = entry.context is not None
            entry.context, entry.stamp, entry.failed, entry.reported = context, now, None, None
            changed = True
            log.info("apps plane TLS: certificate %r %s from %s", entry.cert.name,
                     "reloaded" if reloaded else "loaded", entry.cert.cert_path)
        if changed:
            served = [e for e in self._entries if e.context is not None]
            exact, wild = index([e.cert.domains for e in served])
            self._served = (exact, wild, [e.context for e in served if e.context is not None])
        return problems

    def _follow(self, declared: tuple[Certificate, ...]) -> None:
        """Entries for `declared`, keeping the loaded state of certificates that did not change."""
        kept = {e.cert: e for e in self._entries}
        self._entries = [kept.get(cert) or _Entry(cert) for cert in declared]
        self._declared = declared

    def _sni(self, connection: ssl.SSLObject, server_name: str | None, outer: ssl.SSLContext) -> int | None:
        exact, wild, contexts = self._served
        if not contexts:
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR   # no certificate loaded (yet)
        connection.context = contexts[choose(server_name, exact, wild)]
        return None


class TlsListener:
    """The apps plane's TLS socket: uvicorn serving `app` with `Certificates`, and the task that
    reloads them every RELOAD_INTERVAL. `rt` is the daemon's Runtime (its kernel certificates,
    which the engine may reload, and its event log)."""

    def __init__(self, app: Any, rt: Any):
        self.app, self.rt = app, rt
        self.certificates = Certificates()
        self.server: Any = None
        self.task: asyncio.Task[None] | None = None
        self.watch: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int, setting: str) -> None:
        """Load the certificates and listen.

        Raises:
            FaztAgentError: the address cannot be bound.
        """
        await self.refresh()
        self.server, self.task = await start(self.app, host, port, self.certificates.outer_context(), setting)
        self.watch = asyncio.create_task(self._watch(), name="apps-tls-reload")

    async def refresh(self) -> None:
        for problem in self.certificates.refresh(self.rt.definitions.kernel.certificates):
            from ..event_types import AppsTlsError

            kept = "the previous one is still served" if problem.serving_previous else "never loaded"
            log.warning("apps plane TLS: certificate %r not loaded (%s): %s", problem.certificate, kept,
                        problem.error)
            await self.rt.events.emit("apps.tls_error", AppsTlsError(
                certificate=problem.certificate, cert_path=problem.cert_path, key_path=problem.key_path,
                error=problem.error, serving_previous=problem.serving_previous), source="apps")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_INTERVAL)
            try:
                await self.refresh()
            except Exception:  # supervisor boundary: the next look tries again
                log.exception("apps plane TLS: reloading certificates failed")

    async def stop(self) -> None:
        if self.watch is not None:
            self.watch.cancel()
            self.watch = None
        if self.server is not None and self.task is not None:
            from ..web.app import stop

            await stop(self.server, self.task)
            self.server = None


async def start(app: Any, host: str, port: int, context: ssl.SSLContext,
                setting: str) -> tuple[Any, asyncio.Task[None]]:
    """Listen on host:port with TLS `context` and serve `app` with uvicorn in a task
    (`web.app.start`); returns once it accepts connections.

    Raises:
        FaztAgentError: the address cannot be bound (`setting` names where it was configured).
    """
    from ..web.app import start as serve

    return await serve(app, host, port, setting, ssl_context=context, what="the apps plane's TLS listener")


def describe(certificates: Sequence[Certificate]) -> str:
    """`name (domain, ...)` of each certificate, for the start message."""
    return ", ".join(f"{c.name} ({', '.join(c.domains)})" for c in certificates) or "none"

