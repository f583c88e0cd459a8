"""The hardened systemd unit printed by `fazt-agent systemd-unit`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from typing import TYPE_CHECKING

from .config import SYSTEM_CONFIG, Config

if TYPE_CHECKING:
    from .definitions import Definitions


def exec_start(config_path: Path) -> str:
    """The daemon's command line: the installed `fazt-agent` script beside this Python."""
    script = Path(sys.executable).parent / "fazt-agent"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "fazt_agent"]
    return shlex.join([*argv, "--config", str(config_path), "run"])


def writable_paths(config: Config, definitions: Definitions | None) -> dict[Path, list[str]]:
    """What the daemon must be able to write, each with why: its data dir, and what the definitions
    let actions change (the policy's cleanup roots; each certificate's folders and webroot; the
    `[certs]` store and webroot that `ssl.provision` uses). A path inside another listed one is
    left out: the outer one covers it."""
    found: dict[Path, list[str]] = {config.data_dir.absolute(): ["data dir"]}

    def add(path: Path | None, why: str) -> None:
        if path is not None:
            found.setdefault(Path(path).absolute(), []).append(why)

    if definitions is not None:
        for root in definitions.policy.constraints.cleanup_roots:
            add(root, "cleanup root")
        kernel = definitions.kernel
        for cert in kernel.certificates:
            add(cert.cert_path.parent, f"certificate {cert.name!r} (cert_path)")
            add(cert.key_path.parent, f"certificate {cert.name!r} (key_path)")
            if cert.challenge == "http-01-webroot":
                add(cert.webroot, f"certificate {cert.name!r} (webroot)")
        add(kernel.certs.store, "[certs] store")
        add(kernel.certs.webroot, "[certs] webroot")
    kept: dict[Path, list[str]] = {}
    for path in sorted(found):
        outer = next((k for k in kept if path.is_relative_to(k)), None)
        if outer is None:
            kept[path] = list(dict.fromkeys(found[path]))
        else:
            kept[outer].append(f"covers {path} ({', '.join(dict.fromkeys(found[path]))})")
    return kept


def _unit_path(path: Path, *, optional: bool) -> str:
    """A path as a unit file value: `%` escaped (specifiers), quoted when it holds spaces or quotes;
    a leading `-` lets the unit start while the path does not exist."""
    text = ("-" if optional else "") + str(path).replace("%", "%%")
    if any(c.isspace() or c in "\"'\\" for c in text):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def _writable_lines(config: Config, definitions: Definitions | None) -> list[str]:
    paths = writable_paths(config, definitions)
    data_dir = config.data_dir.absolute()
    lines = ["# Writable under ProtectSystem=strict, derived from the configuration and definitions by",
             "# `fazt-agent systemd-unit` (print it again after changing them): the data dir, the policy's",
             "# [constraints] cleanup_roots, each kernel/ [[certificates]] folder and webroot, [certs] store",
             "# and webroot. Add the folders your kernel/ [[commands]] write to. A path with a leading '-'",
             "# did not exist when this was printed: the unit starts without it, and it is writable only",
             "# once it exists and the unit restarts."]
    unwritable = [p for p in paths if any(ord(c) < 32 for c in str(p))]
    for path in unwritable:   # a unit file has no way to spell a newline in a path
        lines.append(f"# Left out, a unit file cannot hold its control characters: {str(path)!r}")
        del paths[path]
    for path, why in paths.items():
        lines.append(f"#   {path}: {'; '.join(why)}")
    if any(p.is_relative_to("/tmp") or p.is_relative_to("/var/tmp") for p in paths):
        lines.append("# Note: PrivateTmp=yes gives the service its own /tmp and /var/tmp: it sees none of the files")
        lines.append("# there that other processes write.")
    lines += [f"ReadWritePaths={_unit_path(p, optional=p != data_dir and not p.exists())}" for p in paths]
    return lines


def render_unit(config: Config, definitions: Definitions | None = None, *, user: str = "root",
                config_path: Path | None = None) -> str:
    """A unit with Type=notify, a watchdog, restart on failure and a strict sandbox.

    The only writable paths are the data dir and what the definitions let actions change (see
    `writable_paths`): without them, cleanup and certificate renewal would fail under
    ProtectSystem=strict.
    """
    path = config_path or config.source or SYSTEM_CONFIG
    interval = config.file.pulse.interval
    watchdog = max(30, int(interval * 3))
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
        *_writable_lines(config, definitions),
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
