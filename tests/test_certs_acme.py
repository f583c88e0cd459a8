"""ssl.renew and ssl.provision against a real ACME server (pebble), through the real CLI:
standalone, webroot and DNS-01 issuance, renewal keeping the previous files, a failing reload
hook restoring them, a wrong webroot recorded and escalated, and the policy's domain list."""

from __future__ import annotations

import http.server
import json
import ssl
import stat
import threading
import tomllib
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509

from _helpers import events
from _pebble import Pebble, StaticServer, make_ca, make_leaf, pebble, start_pebble, write_pair  # noqa: F401
from conftest import Ops, free_port
from fazt_agent.certs.config import resolve
from fazt_agent.certs.probe import chain_problem
from fazt_agent.certs.x509 import fingerprint, key_matches, load_key
from fazt_agent.kernel.settings import KernelFile

DOMAIN = "web.fazt.test"


def configure(ops: Ops, pebble: Pebble, folder: Path, **extra: object) -> tuple[Path, Path]:
    """Declare certificate `web` for DOMAIN in kernel/certs.toml (standalone unless `extra` says)."""
    cert, key = folder / "fullchain.pem", folder / "privkey.pem"
    certs = {"directory": pebble.directory, "acme_ca_bundle": str(pebble.ca_bundle),
             "listen": f"127.0.0.1:{pebble.http_port}", "timeout": "60s"}
    web = {"name": "web", "domains": [DOMAIN], "cert_path": str(cert), "key_path": str(key), **extra}
    lines = ["[certs]", *(f"{k} = {json.dumps(v)}" for k, v in certs.items()), "", "[[certificates]]",
             *(f"{k} = {json.dumps(v)}" for k, v in web.items())]
    (ops.dir / "kernel" / "certs.toml").write_text("\n".join(lines) + "\n")
    ops.set_config("agent", "autonomy", "medium")
    return cert, key


def assert_issued_by_pebble(pebble: Pebble, cert: Path, key: Path) -> x509.Certificate:
    chain = x509.load_pem_x509_certificates(cert.read_bytes())
    assert key_matches(chain[0], load_key(key.read_bytes(), str(key)))
    roots = tuple(x509.load_pem_x509_certificates(pebble.roots()))
    assert chain_problem(chain, roots, DOMAIN, pebble.now()) is None  # valid now, by the clock of the CA
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    return chain[0]


def test_standalone_issues_then_renews_keeping_the_previous_files(ops: Ops, pebble: Pebble, tmp_path: Path) -> None:
    cert, key = configure(ops, pebble, tmp_path / "tls")
    first = ops.cli("certs", "renew", "web")
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.startswith("done: renew certificate web")
    leaf = assert_issued_by_pebble(pebble, cert, key)
    assert DOMAIN in leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)
    old_cert, old_key = cert.read_bytes(), key.read_bytes()

    second = ops.cli("certs", "renew", "web")
    assert second.returncode == 0, second.stdout + second.stderr
    renewed = assert_issued_by_pebble(pebble, cert, key)
    assert fingerprint(renewed) != fingerprint(leaf) and key.read_bytes() != old_key
    assert Path(f"{cert}.previous").read_bytes() == old_cert
    assert Path(f"{key}.previous").read_bytes() == old_key
    assert stat.S_IMODE(Path(f"{key}.previous").stat().st_mode) == 0o600
    done = events(ops, "action.succeeded")
    assert len(done) == 2 and done[-1]["data"]["details"]["fingerprint"] == fingerprint(renewed)
    assert done[-1]["data"]["details"]["previous_fingerprint"] == fingerprint(leaf)
    account = list((ops.data_dir / "acme").glob("*.json"))
    assert len(account) == 1 and stat.S_IMODE(account[0].stat().st_mode) == 0o600  # one account, reused


def test_webroot_mode_writes_the_token_where_the_web_server_serves_it(ops: Ops, pebble: Pebble,
                                                                      tmp_path: Path) -> None:
    webroot = tmp_path / "www"
    webroot.mkdir()
    (webroot / "index.html").write_text("hello")
    cert, key = configure(ops, pebble, tmp_path / "tls", challenge="http-01-webroot", webroot=str(webroot))
    with StaticServer(webroot, pebble.http_port):
        result = ops.cli("certs", "renew", "web")
    assert result.returncode == 0, result.stdout + result.stderr
    assert_issued_by_pebble(pebble, cert, key)
    assert sorted(p.name for p in webroot.iterdir()) == ["index.html"]  # the token and its folders are gone


def test_a_failing_reload_hook_restores_the_previous_certificate(ops: Ops, pebble: Pebble, tmp_path: Path) -> None:
    old_cert, old_key = make_leaf(make_ca(), [DOMAIN], days=5)
    cert, key = write_pair(tmp_path / "tls", old_cert, old_key)
    calls = tmp_path / "reloads"
    hook = tmp_path / "reload.sh"
    hook.write_text(f'#!/bin/sh\necho reload >> {calls}\necho "nginx: [emerg] cannot load certificate" >&2\nexit 1\n')
    hook.chmod(0o755)
    configure(ops, pebble, tmp_path / "tls", reload=[str(hook)])
    result = ops.cli("certs", "renew", "web")
    assert result.returncode == 1
    assert result.stdout.startswith("FAILED") and "restored the previous certificate" in result.stdout
    assert cert.read_bytes() == old_cert and key.read_bytes() == old_key
    assert calls.read_text().splitlines() == ["reload", "reload"]  # once for the new files, once after restoring
    [failed] = events(ops, "action.failed")
    details = failed["data"]["details"]
    assert details["restored"] is True and details["reload"]["exit_code"] == 1
    assert "cannot load certificate" in failed["data"]["message"]


def test_a_wrong_webroot_fails_records_the_acme_problem_and_tells_the_owner(ops: Ops, pebble: Pebble,
                                                                          tmp_path: Path) -> None:
    served, wrong = tmp_path / "served", tmp_path / "wrong"
    served.mkdir()
    wrong.mkdir()
    old_cert, old_key = make_leaf(make_ca(), [DOMAIN], days=5)
    cert, key = write_pair(tmp_path / "tls", old_cert, old_key)
    configure(ops, pebble, tmp_path / "tls", challenge="http-01-webroot", webroot=str(wrong))
    with StaticServer(served, pebble.http_port):
        result = ops.cli("certs", "renew", "web")
    assert result.returncode == 1 and "ACME challenge failed" in result.stdout
    assert cert.read_bytes() == old_cert and key.read_bytes() == old_key
    [failed] = events(ops, "action.failed")
    problem = failed["data"]["details"]["problem"]
    assert problem["type"] == "urn:ietf:params:acme:error:unauthorized"
    assert problem["status"] == 403 and problem["identifier"] == DOMAIN and problem["detail"]
    assert failed["data"]["details"]["retries"] == []  # a failed challenge is not retried
    sent = events(ops, "notification.sent")
    assert any(n["data"]["title"].endswith("FAILED: renew certificate web (web.fazt.test)") for n in sent)
    assert not list(wrong.rglob("*"))  # the token it wrote is removed


def test_a_busy_standalone_port_fails_with_a_hint_and_changes_nothing(ops: Ops, pebble: Pebble,
                                                                      tmp_path: Path) -> None:
    old_cert, old_key = make_leaf(make_ca(), [DOMAIN], days=5)
    cert, key = write_pair(tmp_path / "tls", old_cert, old_key)
    configure(ops, pebble, tmp_path / "tls")
    with StaticServer(tmp_path, pebble.http_port):  # a web server already holds the port
        result = ops.cli("certs", "renew", "web")
    assert result.returncode == 1
    assert f"cannot answer HTTP-01 on 127.0.0.1:{pebble.http_port}: Address already in use" in result.stdout
    assert "use challenge = 'http-01-webroot'" in result.stdout
    assert cert.read_bytes() == old_cert and key.read_bytes() == old_key


def test_dns01_publishes_the_txt_record_through_the_owner_hook(ops: Ops, pebble: Pebble, tmp_path: Path) -> None:
    log = tmp_path / "hook.log"
    hook = tmp_path / "dns-hook.py"
    hook.write_text(
        "#!/usr/bin/env python3\nimport json, sys, urllib.request\n"
        "action, name, value = sys.argv[1:4]\n"
        f"open({str(log)!r}, 'a').write(f'{{action}} {{name}}\\n')\n"
        "path, body = ('/set-txt', {'host': name + '.', 'value': value}) if action == 'present' else "
        "('/clear-txt', {'host': name + '.'})\n"
        f"urllib.request.urlopen(urllib.request.Request({pebble.challtest!r} + path, json.dumps(body).encode()))\n")
    hook.chmod(0o755)
    cert, key = configure(ops, pebble, tmp_path / "tls", challenge="dns-01",
                          dns_hook=[str(hook), "{action}", "{name}", "{value}"])
    result = ops.cli("certs", "renew", "web")
    assert result.returncode == 0, result.stdout + result.stderr
    assert_issued_by_pebble(pebble, cert, key)
    assert log.read_text().splitlines() == [f"present _acme-challenge.{DOMAIN}", f"cleanup _acme-challenge.{DOMAIN}"]


def test_provision_is_refused_outside_the_policy_domains_and_issues_inside(ops: Ops, pebble: Pebble,
                                                                         tmp_path: Path) -> None:
    configure(ops, pebble, tmp_path / "tls")
    (ops.dir / "policies" / "local.toml").write_text('[constraints]\ndomains = ["*.fazt.test"]\n')
    refused = ops.cli("actions", "run", "ssl.provision", "--arg", "name=shop", "--arg", 'domains=["shop.evil.test"]')
    assert refused.returncode == 1 and "arguments refused" in refused.stdout
    assert "shop.evil.test are not allowed (allowed: *.fazt.test)" in refused.stdout
    assert [e["data"]["action"] for e in events(ops, "decision.rejected")] == ["ssl.provision"]
    assert not (ops.data_dir / "certs" / "shop").exists()

    made = ops.cli("actions", "run", "ssl.provision", "--arg", "name=shop", "--arg", 'domains=["shop.fazt.test"]')
    assert made.returncode == 0, made.stdout + made.stderr
    store = ops.data_dir / "certs" / "shop"
    leaf = x509.load_pem_x509_certificate((store / "fullchain.pem").read_bytes())
    assert leaf.subject.rfc4514_string() == "CN=shop.fazt.test"
    again = ops.cli("certs", "renew", "shop")  # a provisioned certificate is renewed by name
    assert again.returncode == 0, again.stdout + again.stderr
    assert (store / "fullchain.pem.previous").exists()


def test_bad_nonces_are_retried_and_the_certificate_is_still_issued(ops: Ops, tmp_path: Path) -> None:
    # pebble rejects 35 % of nonces: more than half of the issuances with a new account need retries
    # beyond the library's single one
    (tmp_path / "pebble").mkdir()
    with start_pebble(tmp_path / "pebble", PEBBLE_WFE_NONCEREJECT="35") as rejecting:
        cert, key = configure(ops, rejecting, tmp_path / "tls")
        result = ops.cli("certs", "renew", "web")
        assert result.returncode == 0, result.stdout + result.stderr
        assert_issued_by_pebble(rejecting, cert, key)
    retries = events(ops, "action.succeeded")[0]["data"]["details"]["retries"]
    assert all(r["problem"]["type"].endswith(":badNonce") and r["delay_s"] == 0 for r in retries)


class RateLimitedDirectory:
    """An ACME directory endpoint that answers `rateLimited` (with Retry-After) `times` times, then
    pebble's directory (whose URLs point at pebble itself)."""

    def __init__(self, pebble: Pebble, times: int, retry_after: int):
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                if outer.requests <= times:
                    body = json.dumps({"type": "urn:ietf:params:acme:error:rateLimited", "status": 429,
                                       "detail": "too many new orders recently"}).encode()
                    self.send_response(429)
                    self.send_header("Retry-After", str(retry_after))
                    self.send_header("Content-Type", "application/problem+json")
                else:
                    context = ssl.create_default_context(cafile=str(pebble.ca_bundle))
                    body = urllib.request.urlopen(pebble.directory, context=context, timeout=10).read()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/dir"

    def __enter__(self) -> RateLimitedDirectory:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def limited(pebble: Pebble, request: pytest.FixtureRequest) -> Iterator[RateLimitedDirectory]:
    with RateLimitedDirectory(pebble, *request.param) as server:
        yield server


@pytest.mark.parametrize("limited", [(1, 1)], indirect=True)
def test_a_rate_limit_is_retried_after_its_retry_after(ops: Ops, pebble: Pebble, limited: RateLimitedDirectory,
                                                      tmp_path: Path) -> None:
    cert, key = configure(ops, pebble, tmp_path / "tls", directory=limited.url)
    result = ops.cli("certs", "renew", "web")
    assert result.returncode == 0, result.stdout + result.stderr
    assert_issued_by_pebble(pebble, cert, key)
    [retry] = events(ops, "action.succeeded")[0]["data"]["details"]["retries"]
    assert retry["step"] == "directory" and retry["delay_s"] == 1.0
    assert retry["problem"] == {"type": "urn:ietf:params:acme:error:rateLimited", "status": 429,
                                "detail": "too many new orders recently", "retry_after_s": 1.0}


@pytest.mark.parametrize("limited", [(5, 7200)], indirect=True)
def test_a_long_rate_limit_is_not_hammered_and_its_problem_is_recorded(ops: Ops, pebble: Pebble,
                                                                      limited: RateLimitedDirectory,
                                                                      tmp_path: Path) -> None:
    configure(ops, pebble, tmp_path / "tls", directory=limited.url)
    result = ops.cli("certs", "renew", "web")
    assert result.returncode == 1 and "ACME directory failed: rateLimited" in result.stdout
    assert limited.requests == 1
    [failed] = events(ops, "action.failed")
    assert failed["data"]["details"]["problem"]["retry_after_s"] == 7200.0


@pytest.mark.parametrize("settings, message", [
    ({"challenge": "http-01-webroot"}, "challenge 'http-01-webroot' needs webroot"),
    ({"reload": "systemctl reload nginx"}, "not a shell string"),
    ({"domains": ["*.fazt.test"]}, "a wildcard domain can only be validated with challenge = 'dns-01'"),
])
def test_an_incomplete_certificate_is_refused_at_load_time(ops: Ops, pebble: Pebble, tmp_path: Path,
                                                          settings: dict, message: str) -> None:
    configure(ops, pebble, tmp_path / "tls", **settings)
    result = ops.cli("config", "check")
    assert result.returncode == 2
    assert "certs.toml:certificates" in result.stderr and message in result.stderr


def test_the_commented_certificate_example_in_the_shipped_file_is_valid() -> None:
    text = (Path(__file__).resolve().parent.parent / "kernel" / "actions.toml").read_text()
    block = text[text.index("# [certs]"):text.index("# Owner-defined commands")]
    uncommented = "\n".join(line[2:] if line.startswith("# ") else line for line in block.splitlines())
    parsed = KernelFile.model_validate(tomllib.loads(uncommented))
    assert parsed.certs is not None and parsed.certs.challenge == "http-01-standalone"
    [web] = parsed.certificates
    assert resolve(web, parsed.certs).reload == ("systemctl", "reload", "nginx")
