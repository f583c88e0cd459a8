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
