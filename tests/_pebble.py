"""A real ACME server for the certificate tests: Debian's pebble, with pebble-challtestsrv as its
DNS (every test domain resolves to 127.0.0.1), so HTTP-01 and DNS-01 are really validated.

Also the small real servers the tests need around it: a TLS server that reads its certificate
files on every connection, and a static file server for webroot mode; and certificate makers.
Import the fixtures into a test module (`from _pebble import pebble`).
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from functools import partial
from ipaddress import ip_address
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import free_port

INSTALL = "apt-get install -y --no-install-recommends pebble"
DEADLINE = 20.0


# -- certificates --------------------------------------------------------------------------

@dataclass(frozen=True)
class Issuer:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str = "fazt test CA", *, now: datetime | None = None) -> Issuer:
    """A CA valid from a day before `now` (default: this process's clock) for ten years."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = now or datetime.now(timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    return Issuer(cert, key)


def make_leaf(ca: Issuer, names: list[str], *, days: float = 90, lifetime: float | None = None,
              key: ec.EllipticCurvePrivateKey | None = None, now: datetime | None = None) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for `names` (DNS names or IPs), valid `days` more out of `lifetime`
    after `now` (default: this process's clock)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = now or datetime.now(timezone.utc)
    lifetime = lifetime if lifetime is not None else max(days, 90)
    not_after = now + timedelta(days=days)
    sans = [x509.IPAddress(ip_address(n)) if n.replace(".", "").isdigit() else x509.DNSName(n) for n in names]
    cert = (x509.CertificateBuilder().subject_name(_name(names[0])).issuer_name(ca.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_after - timedelta(days=lifetime)).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
            .sign(ca.key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def write_pair(directory: Path, cert_pem: bytes, key_pem: bytes) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "fullchain.pem", directory / "privkey.pem"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    key.chmod(0o600)
    return cert, key


# -- pebble ---------------------------------------------------------------------------------

@dataclass
class Pebble:
    """A running pebble: its directory URL, a bundle trusting its listener, its HTTP-01 port."""

    directory: str
    ca_bundle: Path
    http_port: int
    management: str
    challtest: str

    def roots(self) -> bytes:
        """The root that signs the certificates pebble issues."""
        context = ssl.create_default_context(cafile=str(self.ca_bundle))
        with urllib.request.urlopen(f"{self.management}/roots/0", context=context, timeout=10) as response:
            return response.read()

    def now(self) -> datetime:
        """The time by pebble's clock, to the second (the Date header of its directory).

        pebble dates the certificates it issues by its own clock. It is a Go program, which reads
        the clock through the vDSO, not libc: under libfaketime (scripts/test-any-date) it keeps
        the real time while the tests and the agent see the shifted one. A test that judges the
        certificates pebble issues dates itself from this clock, as a host whose clock agrees
        with its CA's.
        """
        context = ssl.create_default_context(cafile=str(self.ca_bundle))
        with urllib.request.urlopen(self.directory, context=context, timeout=10) as response:
            return parsedate_to_datetime(response.headers["Date"])


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {proc.stdout.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {DEADLINE:g}s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def start_pebble(work: Path, **env: str) -> Iterator[Pebble]:
    """pebble + pebble-challtestsrv on free loopback ports until the block ends; `env` adds
    PEBBLE_* settings (e.g. PEBBLE_WFE_NONCEREJECT="35")."""
    for program in ("pebble", "pebble-challtestsrv"):
        if shutil.which(program) is None:
            pytest.fail(f"{program} is not installed; install it with: {INSTALL}")
    ca = make_ca("pebble listener CA")
    cert_pem, key_pem = make_leaf(ca, ["localhost", "127.0.0.1"], days=365)
    (work / "ca.pem").write_bytes(ca.pem)
    (work / "cert.pem").write_bytes(cert_pem)
    (work / "key.pem").write_bytes(key_pem)
    ports = {name: free_port() for name in ("acme", "mgmt", "http", "dns", "challtest")}
    (work / "config.json").write_text(json.dumps({"pebble": {
        "listenAddress": f"127.0.0.1:{ports['acme']}", "managementListenAddress": f"127.0.0.1:{ports['mgmt']}",
        "certificate": str(work / "cert.pem"), "privateKey": str(work / "key.pem"),
        "httpPort": ports["http"], "tlsPort": free_port(), "ocspResponderURL": "",
        "externalAccountBindingRequired": False}}))
    dns = subprocess.Popen(["pebble-challtestsrv", "-defaultIPv6", "", "-defaultIPv4", "127.0.0.1",
                            "-dns01", f"127.0.0.1:{ports['dns']}", "-http01", "", "-https01", "", "-tlsalpn01", "",
                            "-management", f"127.0.0.1:{ports['challtest']}"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    settings = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0", **env}
    acme = subprocess.Popen(["pebble", "-config", str(work / "config.json"), "-dnsserver", f"127.0.0.1:{ports['dns']}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **settings}, cwd=work)
    try:
        _wait_port(ports["challtest"], dns, "pebble-challtestsrv")
        _wait_port(ports["acme"], acme, "pebble")
        yield Pebble(f"https://127.0.0.1:{ports['acme']}/dir", work / "ca.pem", ports["http"],
                     f"https://127.0.0.1:{ports['mgmt']}", f"http://127.0.0.1:{ports['challtest']}")
    finally:
        _stop(acme)
        _stop(dns)


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    """One pebble for the test module."""
    with start_pebble(tmp_path_factory.mktemp("pebble")) as running:
        yield running


# -- servers around it -----------------------------------------------------------------------

class TlsServer:
    """A TLS server on 127.0.0.1 that loads `cert`/`key` for every connection (in the SNI callback:
    clients must send a name), so a renewed file is served at once; it answers with one line."""

    def __init__(self, cert: Path, key: Path):
        self.cert, self.key = cert, key
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.base_events.Server | None = None

    def _context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context

    def _fresh(self, tls: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        tls.context = self._context()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"hello\n")
            await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.close()

    def __enter__(self) -> TlsServer:
        self.thread.start()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.sni_callback = self._fresh  # type: ignore[assignment]
        start = asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=context)
        self.server = asyncio.run_coroutine_threadsafe(start, self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self.server is not None
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class StaticServer:
    """A plain HTTP file server for `root` on 127.0.0.1:`port` (nginx in webroot mode)."""

    def __init__(self, root: Path, port: int):
        handler = partial(_QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> StaticServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass
