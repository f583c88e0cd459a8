"""The daemon configuration (`config.toml`) and where it is found.

Search order: `--config PATH`, `$FAZT_AGENT_CONFIG`, `./config.toml`,
`/etc/fazt-agent/config.toml`; with none of them, the embedded defaults. Relative paths in a
config file are relative to that file. Secrets come from the environment with `${NAME}`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ._toml import expand_env, load_model, read_toml
from .errors import ConfigError, Issue
from .units import Duration

Autonomy = Literal["low", "medium", "high"]
Personality = Literal["helpful", "terse", "cautious"]
DEFINITION_FOLDERS = ("policies", "prompts", "pulse", "kernel")
SYSTEM_CONFIG = Path("/etc/fazt-agent/config.toml")


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AgentSection(Model):
    autonomy: Autonomy = "low"
    data_dir: Path | None = None
    personality: Personality = "helpful"
    name: str | None = None


class PulseSection(Model):
    interval: Duration = 60.0
    retention: Duration = 7 * 86400.0
    timeout: Duration = 10.0

    @field_validator("interval")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v < 1:
            raise ValueError("interval must be at least 1s")
        return v


class EventsSection(Model):
    retention: Duration = 90 * 86400.0


class NotifySection(Model):
    urls: list[str] = Field(default_factory=list)


class HttpSection(Model):
    enabled: bool = True
    listen: str = "127.0.0.1:7070"

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected HOST:PORT such as '127.0.0.1:7070', got {v!r}")
        return v

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class LogSection(Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class PathsSection(Model):
    policies: Path | None = None
    prompts: Path | None = None
    pulse: Path | None = None
    kernel: Path | None = None


class ConfigFile(Model):
    """The shape of config.toml; every section is optional."""

    agent: AgentSection = AgentSection()
    pulse: PulseSection = PulseSection()
    events: EventsSection = EventsSection()
    notify: NotifySection = NotifySection()
    http: HttpSection = HttpSection()
    log: LogSection = LogSection()
    paths: PathsSection = PathsSection()


@dataclass(frozen=True)
class Config:
    """A loaded configuration with every path resolved."""

    file: ConfigFile
    source: Path | None          # the config file, or None for the embedded defaults
    data_dir: Path
    folders: dict[str, Path]      # definition folder name -> directory actually used
    shipped: frozenset[str]       # folders that fall back to the shipped defaults
    secrets: tuple[str, ...]      # values that must never be logged

    @property
    def agent(self) -> AgentSection:
        return self.file.agent

    @property
    def db_path(self) -> Path:
        return self.data_dir / "fazt-agent.db"


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


def load_config(explicit: Path | None = None, env: Mapping[str, str] | None = None,
                cwd: Path | None = None) -> Config:
    """Find and load the configuration.

    Raises:
        ConfigError: the file is missing, not TOML, or has invalid keys (all issues listed).
    """
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    path = find_config(explicit, env, cwd)
    if path is None:
        return _resolve(ConfigFile(), None, env, secrets=())
    path = path.absolute()
    raw = read_toml(path)
    expanded, issues = expand_env(raw, str(path), env)
    if issues:
        raise ConfigError(issues)
    parsed = load_model(ConfigFile, expanded, str(path))
    secrets = tuple(_secret_values(raw, expanded))
    return _resolve(parsed, path, env, secrets)


def _resolve(parsed: ConfigFile, path: Path | None, env: Mapping[str, str], secrets: tuple[str, ...]) -> Config:
    base = path.parent if path else None
    if parsed.agent.data_dir is None:
        data_dir = (base / "data") if base else default_data_dir(env)
    else:
        data_dir = parsed.agent.data_dir.expanduser()
        if not data_dir.is_absolute():
            data_dir = (base or Path.cwd()) / data_dir
    folders: dict[str, Path] = {}
    shipped: set[str] = set()
    for name in DEFINITION_FOLDERS:
        configured: Path | None = getattr(parsed.paths, name)
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
    notify_secrets = tuple(u for u in parsed.notify.urls if u)
    return Config(parsed, path, data_dir, folders, frozenset(shipped), secrets + notify_secrets)


def _secret_values(raw: object, expanded: object) -> list[str]:
    """Values that came from `${NAME}` references: these are secrets."""
    if isinstance(raw, dict) and isinstance(expanded, dict):
        return [s for k in raw for s in _secret_values(raw[k], expanded.get(k))]
    if isinstance(raw, list) and isinstance(expanded, list):
        return [s for a, b in zip(raw, expanded) for s in _secret_values(a, b)]
    if isinstance(raw, str) and isinstance(expanded, str) and raw != expanded:
        return [expanded]
    return []


def redacted(url: str) -> str:
    """An apprise URL with everything after the scheme hidden: `slack://***`."""
    scheme, sep, _ = url.partition("://")
    return f"{scheme}://***" if sep else "***"
