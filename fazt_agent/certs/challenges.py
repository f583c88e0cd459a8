"""Answering ACME challenges. Each solver is an async context manager: `present` publishes one
answer, leaving the block removes everything it published.

- `Standalone`: the agent's own tiny HTTP listener answers HTTP-01 on the configured address;
- `Webroot`: the token file is written under WEBROOT/.well-known/acme-challenge/ for the
  owner's web server (nginx, Caddy) to serve;
- `DnsHook`: the owner's command publishes (and later removes) the DNS-01 TXT record.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import shlex
from pathlib import Path
from typing import Protocol

from .. import _proc
from ..errors import ActionError

TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
PREFIX = "/.well-known/acme-challenge/"
PLACEHOLDER = re.compile(r"\{(action|domain|name|value)\}")
_MAX_HEADER_LINES = 100


class Solver(Protocol):
    challenge_type: str   # "http-01" or "dns-01"

    async def __aenter__(self) -> Solver: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def present(self, domain: str, token: str, validation: str) -> None:
        """Publish `validation` (the key authorization, or the TXT value for DNS-01)."""
        ...


def _token(token: str) -> str:
    if not TOKEN.match(token):
        raise ActionError(f"the ACME server sent a challenge token that is not base64url: {token[:40]!r}")
    return token


class Standalone:
    """HTTP-01 answered by a listener of our own on `listen` (HOST:PORT) while the block runs."""

    challenge_type = "http-01"

    def __init__(self, listen: str):
        host, _, port = listen.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self.answers: dict[str, bytes] = {}
        self.server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> Standalone:
        try:
            self.server = await asyncio.start_server(self._serve, self.host, self.port, reuse_address=True)
        except OSError as e:
            hint = {errno.EADDRINUSE: "a web server uses that port? then use challenge = 'http-01-webroot'",
                    errno.EACCES: "ports below 1024 need root or CAP_NET_BIND_SERVICE"}.get(e.errno or 0, "")
            raise ActionError(f"cannot answer HTTP-01 on {self.host}:{self.port}: "
                              f"{os.strerror(e.errno) if e.errno else e}"
                              + (f" ({hint})" if hint else ""), permanent=False) from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def present(self, domain: str, token: str, validation: str) -> None:
        self.answers[_token(token)] = validation.encode()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 10)
            for _ in range(_MAX_HEADER_LINES):
                if await asyncio.wait_for(reader.readline(), 10) in (b"\r\n", b"\n", b""):
                    break
            method, path = (request.split() + [b"", b""])[:2]
            body = self.answers.get(path.decode("latin-1").removeprefix(PREFIX)) \
                if path.startswith(PREFIX.encode()) else None
            status = b"200 OK" if body is not None else b"404 Not Found"
            body = body if body is not None else b"not found\n"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
                         + (body if method != b"HEAD" else b""))
            await writer.drain()
        except (OSError, ValueError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()


class Webroot:
    """HTTP-01 answered by files under WEBROOT/.well-known/acme-challenge/, removed afterwards."""

    challenge_type = "http-01"

    def __init__(self, webroot: Path):
        self.webroot = webroot
        self.folder = webroot / ".well-known" / "acme-challenge"
        self.written: list[Path] = []
        self.created: list[Path] = []

    async def __aenter__(self) -> Webroot:
        if not self.webroot.is_dir():
            raise ActionError(f"webroot {str(self.webroot)!r} is not a directory; set webroot to the folder "
                              "your web server serves at http://DOMAIN/")
        return self

    async def __aexit__(self, *exc: object) -> None:
        for path in self.written:
            path.unlink(missing_ok=True)
        for folder in reversed(self.created):
            try:
                folder.rmdir()
            except OSError:
                pass  # not empty: the owner keeps files there too

    async def present(self, domain: str, token: str, validation: str) -> None:
        for folder in (self.webroot / ".well-known", self.folder):
            if not folder.exists():
                folder.mkdir(mode=0o755)
                self.created.append(folder)
        path = self.folder / _token(token)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with open(fd, "wb") as out:
            out.write(validation.encode())
        os.chmod(path, 0o644)  # readable by the web server whatever our umask
        self.written.append(path)


class DnsHook:
    """DNS-01 answered by the owner's command: `{action}` is `present`, later `cleanup`."""

    challenge_type = "dns-01"

    def __init__(self, argv: tuple[str, ...], timeout: float):
        self.argv, self.timeout = argv, timeout
        self.presented: list[tuple[str, str]] = []

    async def __aenter__(self) -> DnsHook:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for domain, value in self.presented:
            try:
                await self._run("cleanup", domain, value)
            except ActionError:
                pass  # a leftover TXT record does no harm; the outcome reports the issuance

    async def present(self, domain: str, token: str, validation: str) -> None:
        await self._run("present", domain, validation)
        self.presented.append((domain, validation))

    async def _run(self, action: str, domain: str, value: str) -> None:
        bare = domain.removeprefix("*.")
        values = {"action": action, "domain": bare, "name": f"_acme-challenge.{bare}", "value": value}
        argv = [PLACEHOLDER.sub(lambda m: values[m.group(1)], element) for element in self.argv]
        try:
            done = await _proc.run(argv, self.timeout)
        except OSError as e:
            raise ActionError(_proc.cannot_start(argv, e)) from None
        if done.timed_out:
            raise ActionError(f"dns_hook {action} for {bare} did not finish within {self.timeout:g}s "
                              f"({shlex.join(self.argv)})")
        if done.exit_code != 0:
            raise ActionError(f"dns_hook {action} for {bare} failed with exit code {done.exit_code}: "
                              f"{done.last_error_line}")


def solver_for(challenge: str, *, listen: str, webroot: Path | None, dns_hook: tuple[str, ...] | None,
               hook_timeout: float) -> Solver:
    """The solver of a certificate's `challenge` setting."""
    if challenge == "http-01-standalone":
        return Standalone(listen)
    if challenge == "http-01-webroot":
        assert webroot is not None  # config.resolve refuses webroot mode without one
        return Webroot(webroot)
    assert dns_hook is not None
    return DnsHook(dns_hook, hook_timeout)
