"""Where the config file, the data dir and the definition folders are: the search order and the
path rules of `config.py`, in a module that imports neither pydantic nor anything heavy.

`config.load_config` resolves its paths here, and so does the CLI's light read path
(`_snapshot`), so the two cannot disagree about which files a command reads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from .errors import ConfigError, Issue

DEFINITION_FOLDERS = ("policies", "prompts", "pulse", "kernel")
SYSTEM_CONFIG = Path("/etc/fazt-agent/config.toml")
DB_FILE = "fazt-agent.db"   # in the data dir


def shipped_defaults() -> Path:
    """The folder holding the shipped policies/ prompts/ pulse/ kernel/."""
    packaged = Path(__file__).parent / "defaults"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent  # an editable install or a checkout


def find_config(explicit: Path | None, env: Mapping[str, str], cwd: Path) -> Path | None:
    """The config file to use, by the documented search order; None means embedded defaults.

    Raises:
        ConfigError: an explicitly named file (flag or variable) does not exist.
    """
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError([Issue(str(explicit), "", "config file not found (given with --config)")])
        return explicit
    named = env.get("FAZT_AGENT_CONFIG")
    if named:
        if not Path(named).is_file():
            raise ConfigError([Issue(named, "", "config file not found (given in $FAZT_AGENT_CONFIG)")])
        return Path(named)
    for candidate in (cwd / "config.toml", SYSTEM_CONFIG):
        if candidate.is_file():
            return candidate
    return None


def default_data_dir(env: Mapping[str, str]) -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/fazt-agent")
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "fazt-agent"


def resolve_paths(source: Path | None, data_dir: Path | None, paths: Mapping[str, Path | None],
                  env: Mapping[str, str]) -> tuple[Path, dict[str, Path], frozenset[str]]:
    """(data dir, definition folder name -> directory used, folders that fall back to the shipped
    defaults) for the config file `source` (None: embedded defaults) with `[agent] data_dir` and
    `[paths]` as given (None where unset). Relative paths are relative to the config file."""
    base = source.parent if source else None
    if data_dir is None:
        data = (base / "data") if base else default_data_dir(env)
    else:
        data = data_dir.expanduser()
        if not data.is_absolute():
            data = (base or Path.cwd()) / data
    folders: dict[str, Path] = {}
    shipped: set[str] = set()
    for name in DEFINITION_FOLDERS:
        configured = paths.get(name)
        if configured is not None:
            folder = configured.expanduser()
            if not folder.is_absolute():
                folder = (base or Path.cwd()) / folder
        elif base is not None and (base / name).is_dir():
            folder = base / name
        else:
            folder = shipped_defaults() / name
            shipped.add(name)
        folders[name] = folder
    return data, folders, frozenset(shipped)
