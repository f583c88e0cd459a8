"""Apps plane TLS (issue 13): `[apps] tls_listen` serves the `[[certificates]]` of kernel/, chosen
by SNI, and picks up a renewal without a restart. A real daemon subprocess, certificates made for
the test (dated from the real now, signed by a test CA the client trusts), written by the agent's
own installer (`certs/install.py`, as `ssl.renew` writes them), and a real TLS client on loopback."""

from __future__ import annotations

import socket
import ssl
import subprocess
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

import _helpers
from _helpers import events, run_daemon, stop_daemon
from _pebble import Issuer, make_ca, make_leaf
from conftest import Ops, free_port
from fazt_agent.certs.install import install
from test_apps_deploy import Plane, configure, deploy, site

CUSTOM = "blog.example.test"   # the app's custom domain: certificate "custom", declared first
WILD = "*.apps.test"           # every NAME.apps.test: certificate "wild"
BLOG = {"index.html": "<h1>blog</h1>", "fazt.toml": f'domains = ["{CUSTOM}"]\n'}


class Client:
    """One TLS connection to the apps plane, asking for `sni` (None: no SNI); keep-alive requests."""

    def __init__(self, port: int, ca: Path, sni: str | None, *, check_name: bool = True):
        context = ssl.create_default_context(cafile=str(ca))
        context.check_hostname = check_name and sni is not None
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.tls = context.wrap_socket(raw, server_hostname=sni)
        self.der = self.tls.getpeercert(binary_form=True)
        self._buffer = b""

    def get(self, host: str, path: str = "/") -> tuple[int, str]:
        self.tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        while b"\r\n\r\n" not in self._buffer:
            self._read()
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = int(next(v for k, _, v in (h.partition(":") for h in lines[1:]) if k.lower() == "content-length"))
        while len(self._buffer) < length:
            self._read()
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return int(lines[0].split()[1]), body.decode()

    def _read(self) -> None:
        chunk = self.tls.recv(65536)
        assert chunk, "the server closed the connection"
        self._buffer += chunk

    def close(self) -> None:
        self.tls.close()


def serial(der: bytes | None) -> int:
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


wait_until = partial(_helpers.wait_until, timeout=15, interval=0.2)


@dataclass
class Tls:
    plane: Plane
    port: int
    ca: Issuer
    ca_file: Path
    certs: Path                      # certificate NAME's files are in certs/NAME/
    serials: dict[str, int]          # the serial last installed for each certificate

    @property
    def proc(self) -> subprocess.Popen[str]:
        return self.plane.proc

    def connect(self, sni: str | None, *, check_name: bool = True) -> Client:
        return Client(self.port, self.ca_file, sni, check_name=check_name)

    def served(self, sni: str | None, host: str, *, check_name: bool = True) -> tuple[int, int, str]:
        """(serial of the certificate served for `sni`, status, body) of `GET /` at `host`, on a new connection."""
        client = self.connect(sni, check_name=check_name)
        try:
            status, body = client.get(host)
            return serial(client.der), status, body
        finally:
            client.close()

    def renew(self, name: str, names: list[str], key: ec.EllipticCurvePrivateKey | None = None) -> int:
        """Install a new certificate (new serial, new key unless given) for `name` as ssl.renew does."""
        folder = self.certs / name
        chain, key_pem = make_leaf(self.ca, names)
        if key is not None:   # a broken pair: the new certificate with another key than its own
            from cryptography.hazmat.primitives import serialization

            key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
        install(folder / "fullchain.pem", chain, folder / "privkey.pem", key_pem)
        number = x509.load_pem_x509_certificate(chain).serial_number
        if key is None:
            self.serials[name] = number
        return number


KERNEL = """
[[certificates]]
name = "custom"
domains = ["{custom}"]
cert_path = "{certs}/custom/fullchain.pem"
key_path = "{certs}/custom/privkey.pem"

[[certificates]]
name = "wild"
domains = ["{wild}"]
cert_path = "{certs}/wild/fullchain.pem"
key_path = "{certs}/wild/privkey.pem"
challenge = "dns-01"
dns_hook = ["/bin/true", "{{action}}"]
"""


@pytest.fixture
def tls(ops: Ops, tmp_path: Path) -> Iterator[Tls]:
    ca = make_ca()
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.pem)
    state = Tls(None, 0, ca, ca_file, tmp_path / "certs", {})   # type: ignore[arg-type]
    state.renew("custom", [CUSTOM])
    state.renew("wild", [WILD])
    (ops.dir / "kernel" / "tls.toml").write_text(KERNEL.format(custom=CUSTOM, wild=WILD, certs=state.certs))
    port = configure(ops, enabled=True)
    state.port = free_port()
    ops.set_config("apps", "tls_listen", f"127.0.0.1:{state.port}")
    proc = run_daemon(ops, stdout=subprocess.PIPE)
    state.plane = Plane(ops, port, proc)
    try:
        state.plane.wait_listening()
        wait_until("the TLS listener", lambda: _accepts(state.port))
        assert deploy(ops, site(tmp_path / "blog", BLOG), "blog").returncode == 0
        yield state
    finally:
        state.plane.client.close()
        if proc.poll() is None:
            stop_daemon(proc, 10, check=False, must_stop=False)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_each_domain_gets_its_certificate_by_sni_and_the_app_is_served(tls: Tls) -> None:
    wild, custom = tls.serials["wild"], tls.serials["custom"]
    # a wildcard match beats the first certificate; the client verifies the name against it
    assert tls.served("blog.apps.test", "blog.apps.test") == (wild, 200, "<h1>blog</h1>")
    assert tls.served(CUSTOM, CUSTOM) == (custom, 200, "<h1>blog</h1>")   # the app's custom domain
    # no SNI, no match, a wildcard asked for two labels deep: the first certificate declared
    assert tls.served(None, "blog.apps.test") == (custom, 200, "<h1>blog</h1>")
    assert tls.served("other.test", "blog.apps.test", check_name=False)[0] == custom
    assert tls.served("a.blog.apps.test", "blog.apps.test", check_name=False)[0] == custom
    assert tls.served("nope.apps.test", "nope.apps.test")[1:] == (404, "no app at this host\n")
    assert tls.plane.get("blog").text == "<h1>blog</h1>"   # the plain listener still serves


def test_a_renewed_certificate_reaches_new_connections_without_a_restart(tls: Tls) -> None:
    before = tls.serials["wild"]
    open_connection = tls.connect("blog.apps.test")
    assert open_connection.get("blog.apps.test") == (200, "<h1>blog</h1>")
    assert serial(open_connection.der) == before

    renewed = tls.renew("wild", [WILD])
    assert renewed != before
    wait_until("the renewed certificate on a new connection",   # the reload looks every 2 s
               lambda: tls.served("blog.apps.test", "blog.apps.test")[0] == renewed, timeout=10)
    assert tls.served(CUSTOM, CUSTOM)[0] == tls.serials["custom"]        # the other one untouched

    # the connection opened before keeps its certificate and is still served
    assert open_connection.get("blog.apps.test") == (200, "<h1>blog</h1>")
    assert serial(open_connection.der) == before
    open_connection.close()
    assert tls.proc.poll() is None
    assert [e["data"]["pid"] for e in events(tls.plane.ops, "agent.started")] == [tls.proc.pid]
    assert events(tls.plane.ops, "apps.tls_error") == []
    assert "certificate 'wild' reloaded from" in stop_daemon(tls.proc, 10)


def test_a_broken_replacement_keeps_the_previous_certificate_and_is_recorded_once(tls: Tls) -> None:
    good = tls.serials["custom"]
    # a renewal that wrote a certificate with a key that is not its own
    tls.renew("custom", [CUSTOM], key=ec.generate_private_key(ec.SECP256R1()))
    found = wait_until("apps.tls_error", lambda: events(tls.plane.ops, "apps.tls_error"))
    data = found[0]["data"]
    assert data["certificate"] == "custom" and data["serving_previous"] is True
    assert data["cert_path"] == str(tls.certs / "custom" / "fullchain.pem")
    assert data["error"].endswith("the private key does not belong to the certificate")
    assert found[0]["source"] == "apps"
    assert tls.served(CUSTOM, CUSTOM) == (good, 200, "<h1>blog</h1>")   # still the previous one
    assert tls.proc.poll() is None
    # renewing the other certificate now proves a later look happened: it reloads that one, and
    # does not record the broken one again
    wild = tls.renew("wild", [WILD])
    wait_until("the other certificate renewed", lambda: tls.served("blog.apps.test", "blog.apps.test")[0] == wild)
    assert len(events(tls.plane.ops, "apps.tls_error")) == 1
    assert tls.served(CUSTOM, CUSTOM)[0] == good

    # not a certificate at all: the previous one still serves, and this is recorded too
    (tls.certs / "custom" / "fullchain.pem").write_text("not a certificate\n")
    wait_until("the second apps.tls_error", lambda: len(events(tls.plane.ops, "apps.tls_error")) == 2)
    assert tls.served(CUSTOM, CUSTOM)[0] == good

    fixed = tls.renew("custom", [CUSTOM])   # the next good renewal is served
    wait_until("the fixed certificate", lambda: tls.served(CUSTOM, CUSTOM)[0] == fixed, timeout=10)
    errors = events(tls.plane.ops, "apps.tls_error")
    assert len(errors) == 2, errors     # each broken version once, not at every look
    assert "is not a PEM certificate chain" in errors[0]["data"]["error"] + errors[1]["data"]["error"]
    assert [e["data"]["pid"] for e in events(tls.plane.ops, "agent.started")] == [tls.proc.pid]
    log = stop_daemon(tls.proc, 10)
    assert "certificate 'custom' not loaded (the previous one is still served)" in log
    assert "certificate 'custom' reloaded from" in log


def test_tls_listen_needs_a_certificate_and_an_address_of_its_own(ops: Ops) -> None:
    port = free_port()
    ops.set_config("apps", "tls_listen", f"127.0.0.1:{port}")
    r = ops.cli("config", "check")
    assert r.returncode == 2
    assert (f"{ops.config}:apps.tls_listen: TLS on the apps plane serves the [[certificates]] of kernel/*.toml, "
            f"and {ops.dir / 'kernel'} declares none") in r.stderr
    run = ops.cli("run", timeout=30)   # the daemon refuses to start with it
    assert run.returncode == 2 and "apps.tls_listen" in run.stderr

    ops.set_config("apps", "listen", f"127.0.0.1:{port}")
    r = ops.cli("config", "check")
    assert r.returncode == 2
    assert f"{ops.config}:apps.tls_listen: '127.0.0.1:{port}' is [apps] listen already" in r.stderr

    ops.set_config("apps", "tls_listen", "")   # empty: off
    r = ops.cli("config", "check")
    assert r.returncode == 0, r.stderr
