"""The printed systemd unit is hardened and accepted by `systemd-analyze verify` with no warnings."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import Ops


def test_systemd_unit_passes_systemd_analyze_verify_without_warnings(ops: Ops, tmp_path: Path) -> None:
    result = ops.cli("systemd-unit")
    assert result.returncode == 0, result.stderr
    unit = tmp_path / "fazt-agent.service"
    unit.write_text(result.stdout)
    for line in ("Type=notify", "Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict"):
        assert line in result.stdout
    assert f"ReadWritePaths={ops.data_dir}" in result.stdout
    assert "WatchdogSec=" in result.stdout
    assert f"--config {ops.config} run" in result.stdout
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr.strip() == "", verify.stderr


def test_the_unit_makes_the_cleanup_roots_and_certificate_folders_writable(ops: Ops, tmp_path: Path) -> None:
    logs, spool, www, certs = (tmp_path / n for n in ("logs", "spool", "www", "certs"))
    for folder in (logs, www, certs / "site"):
        folder.mkdir(parents=True)
    missing = tmp_path / "not-yet"
    (ops.dir / "policies" / "local.toml").write_text(
        f'[constraints]\ncleanup_roots = ["{logs}", "{logs / "app"}", "{missing}", "{spool}"]\n')
    spool.mkdir()
    (ops.dir / "kernel" / "certs.toml").write_text(
        f'[[certificates]]\nname = "site"\ndomains = ["example.com"]\ncert_path = "{certs / "site" / "fullchain.pem"}"\n'
        f'key_path = "{certs / "site" / "privkey.pem"}"\nchallenge = "http-01-webroot"\nwebroot = "{www}"\n')
    result = ops.cli("systemd-unit")
    assert result.returncode == 0, result.stderr
    writable = [line.removeprefix("ReadWritePaths=") for line in result.stdout.splitlines()
                if line.startswith("ReadWritePaths=")]
    expected = [str(ops.data_dir), str(logs), f"-{missing}", str(spool), str(www), str(certs / "site")]
    assert writable == sorted(expected, key=lambda p: p.lstrip("-"))
    assert "# `fazt-agent systemd-unit` (print it again after changing them)" in result.stdout
    assert f"#   {logs}: cleanup root; covers {logs / 'app'} (cleanup root)" in result.stdout
    assert f"#   {certs / 'site'}: certificate 'site' (cert_path); certificate 'site' (key_path)" in result.stdout
    assert f"#   {www}: certificate 'site' (webroot)" in result.stdout
    unit = tmp_path / "fazt-agent.service"
    unit.write_text(result.stdout)
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr.strip() == "", verify.stderr


def test_a_broken_definition_file_is_a_file_key_error_for_systemd_unit(ops: Ops) -> None:
    (ops.dir / "policies" / "local.toml").write_text('[constraints]\ncleanup_roots = ["relative/path"]\n')
    result = ops.cli("systemd-unit")
    assert result.returncode == 2 and result.stdout == ""
    assert f"{ops.dir / 'policies' / 'local.toml'}:constraints.cleanup_roots" in result.stderr
