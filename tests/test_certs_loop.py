"""The closed loop, in process with the real engine: a local TLS server serves a certificate in
its renewal window; the `tls` check opens an incident, the default policy renews it through
pebble at medium autonomy, the endpoint is verified live, and the next beat resolves it."""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest
from cryptography import x509

from _helpers import FakeClock, turn, types
from _pebble import Pebble, TlsServer, make_ca, make_leaf, pebble, write_pair  # noqa: F401  (fixture)
from conftest import Ops
from fazt_agent.certs.x509 import fingerprint
from fazt_agent.config import load_config
from fazt_agent.engine import Engine
from fazt_agent.runtime import Runtime

DOMAIN = "shop.fazt.test"


@pytest.fixture
def clock(pebble: Pebble) -> FakeClock:
    """A clock that starts at pebble's time (it dates the certificates it issues by it; see
    Pebble.now) and moves on demand; the test's own certificates are dated by it too."""
    return FakeClock(pebble.now())


@pytest.fixture
def site(ops: Ops, pebble: Pebble, clock: FakeClock, tmp_path: Path) -> Iterator[tuple[TlsServer, Path]]:
    """A TLS server for DOMAIN whose certificate (20 of 90 days left) a `tls` check watches."""
    ca = make_ca(now=clock.t)
    cert, key = write_pair(tmp_path / "tls", *make_leaf(ca, [DOMAIN], days=20, now=clock.t))
    trusted = tmp_path / "trusted.pem"
    trusted.write_bytes(ca.pem + pebble.roots())
    reloads = tmp_path / "reloads"
    hook = tmp_path / "reload.sh"
    hook.write_text(f"#!/bin/sh\necho reloaded >> {reloads}\n")  # the server reads its files per connection
    hook.chmod(0o755)
    with TlsServer(cert, key) as server:
        ops.write_pulse("tls", f'[[checks]]\nname = "shop"\nkind = "tls"\nhost = "127.0.0.1"\nport = {server.port}\n'
                               f'sni = "{DOMAIN}"\nca_bundle = "{trusted}"\ncertificate = "shop"\n')
        (ops.dir / "kernel" / "certs.toml").write_text(
            f'[certs]\ndirectory = "{pebble.directory}"\nacme_ca_bundle = "{pebble.ca_bundle}"\n'
            f'listen = "127.0.0.1:{pebble.http_port}"\n\n'
            f'[[certificates]]\nname = "shop"\ndomains = ["{DOMAIN}"]\ncert_path = "{cert}"\nkey_path = "{key}"\n'
            f'reload = ["{hook}"]\nverify_tls = "127.0.0.1:{server.port}"\nverify_sni = "{DOMAIN}"\n')
        yield server, reloads


@pytest.fixture
async def engine(ops: Ops, site: tuple[TlsServer, Path], clock: FakeClock) -> AsyncIterator[Engine]:
    rt = await Runtime.open(load_config(ops.config), clock=clock)
    yield Engine(rt)
    await rt.close()


async def test_an_expiring_served_certificate_is_renewed_verified_live_and_resolved(
        engine: Engine, site: tuple[TlsServer, Path], tmp_path: Path) -> None:
    server, reloads = site
    await engine.set_autonomy("medium", by="test")
    await turn(engine)
    [opened] = await types(engine, "incident.opened")
    assert opened["check"] == "shop" and opened["severity"] == "warning" and "renewal window" in opened["message"]
    [decision] = await types(engine, "decision.made")
    assert decision["rule"] == "certificate-expiring" and decision["action"] == "ssl.renew"
    assert decision["verdict"] == "act" and decision["args"]["name"] == "shop"
    [done] = await types(engine, "action.succeeded")
    details = done["details"]
    assert details["verified_served"] == {"address": f"127.0.0.1:{server.port}", "sni": DOMAIN}
    assert reloads.read_text() == "reloaded\n"
    leaf = x509.load_pem_x509_certificate((tmp_path / "tls" / "fullchain.pem").read_bytes())
    assert leaf.issuer.rfc4514_string().startswith("CN=Pebble Intermediate CA")
    assert details["fingerprint"] == fingerprint(leaf) != details["previous_fingerprint"]

    engine.clock.advance(60)  # type: ignore[attr-defined]
    await turn(engine)
    latest = {r.check: r for _, r in await engine.rt.beats.latest()}
    assert latest["shop"].status == "ok" and latest["shop"].details["valid"] is True
    assert latest["shop"].details["fingerprint"] == details["fingerprint"]
    [resolved] = await types(engine, "incident.resolved")
    assert resolved["check"] == "shop"
    assert [v["action_id"] for v in await types(engine, "action.verified")] == [done["action_id"]]


async def test_at_low_autonomy_the_owner_is_told_and_nothing_is_renewed(engine: Engine, tmp_path: Path) -> None:
    before = (tmp_path / "tls" / "fullchain.pem").read_bytes()
    await turn(engine)
    [decision] = await types(engine, "decision.made")
    assert decision["verdict"] == "notify" and "autonomy is low" in decision["reason"]
    assert decision["plan"]["summary"] == f"renew certificate shop ({DOMAIN})" and decision["plan"]["risk"] == "safe"
    assert (tmp_path / "tls" / "fullchain.pem").read_bytes() == before
    assert await types(engine, "action.*") == []
    sent = [n["title"] for n in await types(engine, "notification.sent")]
    assert len(sent) == 1 and "shop" in sent[0]


async def test_a_check_without_a_certificate_name_only_notifies_with_the_reason(
        ops: Ops, site: tuple[TlsServer, Path], clock: FakeClock) -> None:
    path = ops.dir / "pulse" / "tls.toml"
    path.write_text(path.read_text().replace('certificate = "shop"\n', ""))
    rt = await Runtime.open(load_config(ops.config), clock=clock)
    try:
        engine = Engine(rt)
        await engine.set_autonomy("high", by="test")
        await turn(engine)
        [decision] = await types(engine, "decision.made")
        assert decision["rule"] == "certificate-expiring" and decision["verdict"] == "notify"
        assert "no value for {details.certificate}" in decision["reason"]
        assert await types(engine, "action.*") == []
    finally:
        await rt.close()
