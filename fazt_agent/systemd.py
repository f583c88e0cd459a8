"""The hardened systemd unit printed by `fazt-agent systemd-unit`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from .config import SYSTEM_CONFIG, Config


def exec_start(config_path: Path) -> str:
    """The daemon's command line: the installed `fazt-agent` script beside this Python."""
    script = Path(sys.executable).parent / "fazt-agent"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "fazt_agent"]
    return shlex.join([*argv, "--config", str(config_path), "run"])


def render_unit(config: Config, *, user: str = "root", config_path: Path | None = None) -> str:
    """A unit with Type=notify, a watchdog, restart on failure and a strict sandbox.

    The only writable paths are the data dir (and later the roots actions may change).
    """
    path = config_path or config.source or SYSTEM_CONFIG
    interval = config.file.pulse.interval
    watchdog = max(30, int(interval * 3))
    writable = sorted({str(config.data_dir.absolute())})
    lines = [
        "[Unit]",
        "Description=fazt-agent, the autonomous operator of this server",
        "Documentation=man:systemd.service(5)",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={exec_start(Path(path).absolute())}",
        f"User={user}",
        "Restart=on-failure",
        "RestartSec=5s",
        f"WatchdogSec={watchdog}s",
        "TimeoutStartSec=60s",
        "TimeoutStopSec=15s",
        "KillMode=mixed",
        "Environment=PYTHONUNBUFFERED=1",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        f"ReadWritePaths={' '.join(writable)}",
        "ProtectHome=read-only",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "RestrictSUIDSGID=yes",
        "RestrictRealtime=yes",
        "RestrictNamespaces=yes",
        "LockPersonality=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "SystemCallArchitectures=native",
        "UMask=0077",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)
