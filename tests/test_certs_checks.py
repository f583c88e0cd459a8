"""The `cert_file` and `tls` checks through the real CLI: certificates made for the test on disk
and served by a real local TLS server; and `certs list`."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from _pebble import Issuer, TlsServer, make_ca, make_leaf, write_pair
from conftest import Ops, base_env, free_port

DOMAIN = "web.fazt.test"


def beat(ops: Ops) -> dict[str, dict]:
    result = ops.cli("beat", "--json")
    assert result.returncode in (0, 1), result.stderr
    return {r["check"]: r for r in json.loads(result.stdout)["results"]}


def cert_check(name: str, cert: Path, key: Path | None = None, **extra: str) -> str:
    lines = ["[[checks]]", f'name = "{name}"', 'kind = "cert_file"', f'path = "{cert}"']
    lines += [f'key = "{key}"'] if key else []
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n\n"


def test_cert_file_reports_days_left_issuer_names_and_the_renewal_window(ops: Ops, tmp_path: Path) -> None:
    ca = make_ca()
    fresh = write_pair(tmp_path / "fresh", *make_leaf(ca, [DOMAIN, "www.fazt.test"], days=80))
    due = write_pair(tmp_path / "due", *make_leaf(ca, [DOMAIN], days=25))
    short = write_pair(tmp_path / "short", *make_leaf(ca, [DOMAIN], days=2.5, lifetime=6))
    ops.write_pulse("certs", cert_check("fresh", *fresh, certificate='"web"') + cert_check("due", *due)
                    + cert_check("short", *short, critical="1", warning="1"))
    results = beat(ops)
    ok = results["fresh"]
    assert ok["status"] == "ok" and "renewal from" in ok["message"]
    assert 79.9 < ok["metrics"]["days_left"] <= 80
    assert ok["details"]["names"] == [DOMAIN, "www.fazt.test"] and ok["details"]["issuer"] == "CN=fazt test CA"
    assert ok["details"]["key_matches"] is True and ok["details"]["certificate"] == "web"
    assert ok["details"]["in_renewal_window"] is False
    assert results["due"]["status"] == "warning" and "in its renewal window" in results["due"]["message"]
    assert results["short"]["status"] == "warning"  # 6-day certificate, half its life left: certbot's rule


def test_expired_missing_and_mismatched_certificates_are_critical(ops: Ops, tmp_path: Path) -> None:
    ca = make_ca()
    expired = write_pair(tmp_path / "expired", *make_leaf(ca, [DOMAIN], days=-3))
    cert, _ = make_leaf(ca, [DOMAIN], days=60)
    _, other_key = make_leaf(ca, [DOMAIN], days=60, key=ec.generate_private_key(ec.SECP256R1()))
    mismatched = write_pair(tmp_path / "mismatched", cert, other_key)
    ops.write_pulse("certs", cert_check("expired", *expired) + cert_check("mismatched", *mismatched)
                    + cert_check("missing", tmp_path / "nowhere.pem", certificate='"web"'))
    results = beat(ops)
    assert results["expired"]["status"] == "critical"
    assert "expired 3.0 days ago" in results["expired"]["message"]
    assert results["mismatched"]["status"] == "critical"
    assert f"the key {mismatched[1]} does not match the certificate" in results["mismatched"]["message"]
    assert results["mismatched"]["details"]["key_matches"] is False
    missing = results["missing"]
    assert missing["status"] == "critical" and missing["message"] == f"{tmp_path / 'nowhere.pem'} does not exist"
    assert missing["details"] == {"fingerprint": "none", "certificate": "web"}  # renewable by the default rule


def test_malformed_certificate_files_are_unknown_with_the_reason(ops: Ops, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
    text = tmp_path / "notes.txt"
    text.write_text("this is not a certificate\n")
    good, _ = write_pair(tmp_path / "good", *make_leaf(make_ca(), [DOMAIN]))
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("nope\n")
    ops.write_pulse("certs", cert_check("garbage", garbage) + cert_check("text", text)
                    + cert_check("badkey", good, bad_key))
    results = beat(ops)
    assert results["garbage"]["status"] == "unknown"
    assert results["garbage"]["message"].startswith(f"{garbage} holds a malformed certificate")
    assert results["text"]["status"] == "unknown"
    assert results["text"]["message"] == f"{text} holds no PEM certificate (no '-----BEGIN CERTIFICATE-----' line)"
    assert results["badkey"]["status"] == "unknown"
    assert results["badkey"]["message"].startswith(f"{bad_key} holds no usable private key")


def tls_check(name: str, port: int, ca: Path, sni: str = DOMAIN, **extra: str) -> str:
    lines = ["[[checks]]", f'name = "{name}"', 'kind = "tls"', 'host = "127.0.0.1"', f"port = {port}",
             f'sni = "{sni}"', f'ca_bundle = "{ca}"', *(f"{k} = {v}" for k, v in extra.items())]
    return "\n".join(lines) + "\n\n"


def bundle(tmp_path: Path, *cas: Issuer) -> Path:
    path = tmp_path / f"bundle-{len(list(tmp_path.glob('bundle-*')))}.pem"
    path.write_bytes(b"".join(ca.pem for ca in cas))
    return path


def test_tls_check_validates_the_served_chain_name_and_expiry(ops: Ops, tmp_path: Path) -> None:
    ca, stranger = make_ca(), make_ca("someone else")
    cert, key = write_pair(tmp_path / "tls", *make_leaf(ca, [DOMAIN], days=20))
    trusted, untrusted = bundle(tmp_path, ca), bundle(tmp_path, stranger)
    with TlsServer(cert, key) as server:
        ops.write_pulse("tls", tls_check("served", server.port, trusted, certificate='"web"')
                        + tls_check("wrongname", server.port, trusted, sni="other.fazt.test")
                        + tls_check("untrusted", server.port, untrusted)
                        + tls_check("closed", free_port(), trusted))
        results = beat(ops)
    served = results["served"]
    assert served["target"] == f"127.0.0.1:{server.port}"
    assert served["status"] == "warning" and "in its renewal window" in served["message"]
    assert served["details"]["valid"] is True and served["details"]["hostname_matches"] is True
    assert served["details"]["chain"] == [f"CN={DOMAIN}"] and served["details"]["certificate"] == "web"
    wrong = results["wrongname"]
    assert wrong["status"] == "critical" and wrong["details"]["hostname_matches"] is False
    assert "not valid for other.fazt.test" in wrong["message"]
    assert results["untrusted"]["status"] == "critical" and results["untrusted"]["details"]["valid"] is False
    assert results["closed"]["status"] == "unknown"
    assert "cannot open a TLS connection to 127.0.0.1" in results["closed"]["message"]


def test_a_warning_threshold_below_the_critical_one_is_refused(ops: Ops, tmp_path: Path) -> None:
    path = ops.write_pulse("certs", cert_check("c", tmp_path / "c.pem", warning="3", critical="7"))
    result = ops.cli("config", "check")
    assert result.returncode == 2
    assert f"{path}:checks[0].warning: warning 3 days is fewer than critical 7 days" in result.stderr


def test_certs_list_shows_every_certificate_check_and_exits_1_on_a_problem(ops: Ops, tmp_path: Path) -> None:
    ca = make_ca()
    fresh = write_pair(tmp_path / "fresh", *make_leaf(ca, [DOMAIN], days=80))
    due = write_pair(tmp_path / "due", *make_leaf(ca, [DOMAIN], days=10))
    ops.write_pulse("certs", cert_check("fresh", *fresh) + cert_check("due", *due, certificate='"web"'))
    assert ops.cli("certs", "list").stdout.startswith("no certificate results yet")
    ops.cli("beat")
    listed = ops.cli("certs", "list", "--json")
    assert listed.returncode == 1
    rows = {r["check"]: r for r in json.loads(listed.stdout)}
    assert rows["fresh"]["status"] == "ok" and rows["due"]["status"] == "warning"
    table = ops.cli("certs", "list", env=base_env(COLUMNS="250")).stdout
    due_row = next(line for line in table.splitlines() if line.startswith("due "))
    assert " warning " in due_row and " web " in due_row and "in its renewal window" in due_row


def test_a_certificate_not_valid_yet_by_this_clock_is_reported_not_renewed(ops: Ops, tmp_path: Path) -> None:
    """A host clock behind its CA's makes every new certificate "not valid yet": renewing would
    loop through the CA's rate limits. The check says so and the owner is told; nothing renews."""
    ca = make_ca()
    future = write_pair(tmp_path / "future", *make_leaf(ca, [DOMAIN], days=90, lifetime=90,
                                                        now=datetime.now(timezone.utc) + timedelta(hours=2)))
    ops.write_pulse("certs", cert_check("future", *future, certificate='"web"'))
    ops.set_config("agent", "autonomy", "high")
    result = beat(ops)["future"]
    assert result["status"] == "unknown" and "is the clock right?" in result["message"]
    assert result["details"]["in_renewal_window"] is False
    events = json.loads(ops.cli("events", "list", "--type", "decision.made", "--json").stdout)
    assert [(e["data"]["verdict"], e["data"]["action"]) for e in events] == [("notify", None)]
