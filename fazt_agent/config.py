"""The daemon configuration (`config.toml`) and where it is found.

Search order: `--config PATH`, `$FAZT_AGENT_CONFIG`, `./config.toml`,
`/etc/fazt-agent/config.toml`; with none of them, the embedded defaults. Relative paths in a
config file are relative to that file. Secrets come from the environment with `${NAME}`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ._autonomy import LEVELS, Autonomy
from ._config_paths import DB_FILE, DEFINITION_FOLDERS, find_config, resolve_paths
from ._config_paths import SYSTEM_CONFIG, default_data_dir, shipped_defaults  # noqa: F401  (the names callers import)
from ._toml import expand_env, load_model, read_toml
from .errors import ConfigError, Issue
from .units import Duration, Size

Personality = Literal["helpful", "terse", "cautious"]


class Model(BaseModel):
    # allow_inf_nan: "nan" or "inf" reaching a float through a ${NAME} string (literal ones are
    # refused by read_toml): a nan limit never compares true, an inf one overflows.
    # defer_build: a validator is built when first used, not at import; loading a config builds
    # ConfigFile's alone (its sections inline), so the default sections below are made with
    # model_construct (the declared defaults, unvalidated as pydantic leaves defaults anyway)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, defer_build=True)


class AgentSection(Model):
    autonomy: Autonomy = "low"
    data_dir: Path | None = None
    personality: Personality = "helpful"
    name: str | None = None


class PulseSection(Model):
    interval: Duration = 60.0
    retention: Duration = 7 * 86400.0
    timeout: Duration = 10.0
    # checks running at once (a quarter of them, at least 1, against one server); a check waiting
    # longer than its timeout for a slot reports that the agent was overloaded
    max_concurrency: int = Field(64, ge=1, le=10_000)

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
    allowed_hosts: list[str] = Field(default_factory=list)     # more Host values /mcp accepts ("HOST:PORT")
    allowed_origins: list[str] = Field(default_factory=list)   # more Origin values ("https://HOST")
    mcp_idle: Duration = 900.0   # stop the MCP worker process after this long without requests; 0 = never
    # how the owner reaches this listener (a reverse proxy or tunnel), e.g. "https://agent.example.com":
    # halt notifications then carry signed links, one per option
    public_url: str | None = Field(None, pattern=r"^https?://[^\s/]+(/[^\s]*)?$")
    link_expiry: Duration = 86400.0   # a signed link's lifetime (never beyond its halt's expiry)

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


class OwnerSection(Model):
    """A person who may answer halts, and how each channel knows them (`[[owners]]`)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")
    email: str | None = Field(None, pattern=r"^[^@\s]+@[^@\s]+$")   # the From of their replies
    slack: str | None = Field(None, pattern=r"^[UW][A-Z0-9]{2,20}$")  # their Slack user ID


class SlackSection(Model):
    """Halts posted to Slack with a button per option (`answer/slack.py`); off without `bot_token`.

    Socket Mode (`app_token`, an `xapp-` token) needs no public URL; the HTTP interactivity
    endpoint `/slack/interactivity` needs `signing_secret`. Both may be on."""

    bot_token: str | None = None         # xoxb-..., from the environment: "${SLACK_BOT_TOKEN}"
    app_token: str | None = None         # xapp-..., Socket Mode
    signing_secret: str | None = None    # the HTTP interactivity endpoint
    channel: str | None = None           # where halts are posted (an ID such as C0123 or a name)
    api_url: str = Field("https://slack.com/api/", pattern=r"^https?://")

    @model_validator(mode="after")
    def _complete(self) -> SlackSection:
        if self.bot_token and not self.channel:
            raise ValueError("set channel, where halts are posted (a channel ID such as 'C0123ABCD')")
        if (self.app_token or self.signing_secret) and not self.bot_token:
            raise ValueError("set bot_token (xoxb-...): clicks are answered and messages updated with it")
        return self


class EmailSection(Model):
    """Halts sent by SMTP and answered by replies read over IMAP IDLE (`answer/email.py`); off
    without `smtp_host`. `address` is the agent's own mailbox: replies go to its plus-address
    (`agent+halt-ID-MAC@domain`)."""

    address: str | None = Field(None, pattern=r"^[^@\s+]+@[^@\s]+$")
    smtp_host: str | None = None
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_starttls: bool = True
    # TLS from the first byte (SMTPS), as port 465 expects; unset: on for port 465 only
    smtp_implicit_tls: bool | None = None
    smtp_username: str | None = None
    smtp_password: str | None = None     # from the environment: "${SMTP_PASSWORD}"
    imap_host: str | None = None
    imap_port: int = Field(993, ge=1, le=65535)
    imap_tls: bool = True
    imap_username: str | None = None
    imap_password: str | None = None     # from the environment: "${IMAP_PASSWORD}"
    mailbox: str = "INBOX"
    dkim: bool = True                    # accept replies whose DKIM signature verifies
    authserv_id: str | None = None       # ... or that this server's Authentication-Results says pass

    @property
    def smtp_tls(self) -> str:
        """How the SMTP connection is protected: "implicit" (SMTPS), "starttls" or "none"."""
        implicit = self.smtp_port == 465 if self.smtp_implicit_tls is None else self.smtp_implicit_tls
        return "implicit" if implicit else "starttls" if self.smtp_starttls else "none"

    @model_validator(mode="after")
    def _needs_address(self) -> EmailSection:
        if (self.smtp_host or self.imap_host) and not self.address:
            raise ValueError("set address, the agent's own mailbox (e.g. 'agent@example.com'): halts are sent "
                             "from it and replies come to its plus-address")
        return self


class AppsSection(Model):
    """The apps plane (issue 13): a second listener serving the owner's apps, off until enabled or
    until an app is deployed."""

    enabled: bool = False
    listen: str = "127.0.0.1:8080"
    domain: str = "localhost"         # an app NAME answers at NAME.<domain>
    keep_releases: int = Field(default=10, ge=1)
    max_upload: Size = 100 * 1024 * 1024   # the total size of one deploy
    max_files: int = Field(default=10000, ge=1)
    health_timeout: Duration = 5.0
    timeout: Duration = 1.0          # the wall-clock limit of one /api request (fazt.toml `timeout` per app)
    memory: Size = 64 * 1024 * 1024  # the JS heap limit of one /api request
    workers: int = Field(default=2, ge=1, le=64)   # JS worker processes, started on demand
    # HOST:PORT of a second listener speaking TLS with the [[certificates]] of kernel/ (by SNI;
    # apps/tls.py); unset or empty: off
    tls_listen: str | None = None

    _listen = field_validator("listen")(HttpSection._host_port.__func__)  # type: ignore[attr-defined]

    @field_validator("tls_listen")
    @classmethod
    def _tls_listen(cls, v: str | None, info: ValidationInfo) -> str | None:
        if not v:
            return None
        HttpSection._host_port(v)
        if v == info.data.get("listen"):
            raise ValueError(f"{v!r} is [apps] listen already: TLS needs an address of its own, such as "
                             "'127.0.0.1:8443'")
        return v

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def tls_host(self) -> str:
        return (self.tls_listen or "").rpartition(":")[0].strip("[]")

    @property
    def tls_port(self) -> int:
        return int((self.tls_listen or ":0").rpartition(":")[2])


class LogSection(Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class PathsSection(Model):
    policies: Path | None = None
    prompts: Path | None = None
    pulse: Path | None = None
    kernel: Path | None = None


class LlmPrice(Model):
    """US dollars per million tokens of one model."""

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    cache_read_per_mtok: float = Field(ge=0)
    cache_write_per_mtok: float = Field(ge=0)


DEFAULT_LLM_MODEL = "claude-sonnet-5-5"
DEFAULT_PRICES: dict[str, LlmPrice] = {  # Anthropic's list prices; 5-minute cache writes (built unvalidated)
    "claude-sonnet-5-5": LlmPrice.model_construct(input_per_mtok=2.0, output_per_mtok=10.0,
                                                  cache_read_per_mtok=0.20, cache_write_per_mtok=2.50),
    "claude-sonnet-5": LlmPrice.model_construct(input_per_mtok=2.0, output_per_mtok=10.0,
                                                cache_read_per_mtok=0.20, cache_write_per_mtok=2.50),
    "claude-sonnet-4-6": LlmPrice.model_construct(input_per_mtok=3.0, output_per_mtok=15.0,
                                                  cache_read_per_mtok=0.30, cache_write_per_mtok=3.75),
    "claude-haiku-4-5": LlmPrice.model_construct(input_per_mtok=1.0, output_per_mtok=5.0,
                                                 cache_read_per_mtok=0.10, cache_write_per_mtok=1.25),
}


class LlmBudget(Model):
    """Limits over every LLM call (decisions, `pulse ask`, summaries); 0 disables the LLM."""

    calls_per_hour: int = Field(30, ge=0)
    tokens_per_day: int = Field(500_000, ge=0)      # input + cached + output, last 24 h
    usd_per_day: float = Field(1.0, ge=0)           # estimated from [llm.prices], last 24 h


class LlmSection(Model):
    """LLM decisions: on when `enabled` and the variable named by `api_key_env` is set."""

    enabled: bool = True
    provider: Literal["anthropic"] = "anthropic"
    model: str = Field(DEFAULT_LLM_MODEL, min_length=1)
    api_key_env: str = Field("ANTHROPIC_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    base_url: str | None = Field(None, pattern=r"^https?://")
    timeout: Duration = 60.0
    max_retries: int = Field(2, ge=0, le=10)
    max_steps: int = Field(6, ge=1, le=20)
    max_tokens: int = Field(4096, ge=256, le=32768)   # per reply, thinking included
    effort: Literal["low", "medium", "high", "model"] = "medium"  # "model": send none, the model's default
    ask_interval: Duration = 60.0
    budget: LlmBudget = LlmBudget.model_construct()
    prices: dict[str, LlmPrice] = Field(default_factory=dict)

    @property
    def price_table(self) -> dict[str, LlmPrice]:
        return {**DEFAULT_PRICES, **self.prices}

    @property
    def price(self) -> LlmPrice | None:
        """The model's price; None for a model we know no price of (a newer one): it is accepted,
        and only the USD budget is skipped (the token and call budgets still apply)."""
        return self.price_table.get(self.model)

    @property
    def price_note(self) -> str | None:
        """The warning for a model without a price, else None."""
        if self.price is not None:
            return None
        return (f"no price known for model {self.model!r}: the USD budget is not applied; set "
                f"[llm.prices.\"{self.model}\"] with input_per_mtok, output_per_mtok, cache_read_per_mtok, "
                "cache_write_per_mtok")


class ConfigFile(Model):
    """The shape of config.toml; every section is optional."""

    agent: AgentSection = AgentSection.model_construct()
    pulse: PulseSection = PulseSection.model_construct()
    events: EventsSection = EventsSection.model_construct()
    notify: NotifySection = NotifySection.model_construct()
    http: HttpSection = HttpSection.model_construct()
    apps: AppsSection = AppsSection.model_construct()
    log: LogSection = LogSection.model_construct()
    paths: PathsSection = PathsSection.model_construct()
    llm: LlmSection = LlmSection.model_construct()
    owners: list[OwnerSection] = Field(default_factory=list)
    slack: SlackSection = SlackSection.model_construct()
    email: EmailSection = EmailSection.model_construct()

    @field_validator("owners")
    @classmethod
    def _unique_owners(cls, v: list[OwnerSection]) -> list[OwnerSection]:
        for attr in ("name", "email", "slack"):
            seen = [getattr(o, attr).lower() for o in v if getattr(o, attr)]
            dup = sorted({x for x in seen if seen.count(x) > 1})
            if dup:
                raise ValueError(f"two owners share the {attr} {dup[0]!r}; each must be one person's")
        return v


@dataclass(frozen=True)
class Config:
    """A loaded configuration with every path resolved."""

    file: ConfigFile
    source: Path | None          # the config file, or None for the embedded defaults
    data_dir: Path
    folders: dict[str, Path]      # definition folder name -> directory actually used
    shipped: frozenset[str]       # folders that fall back to the shipped defaults
    secrets: tuple[str, ...] = field(repr=False)   # values that must never be logged
    llm_key: str | None = field(default=None, repr=False)   # from the variable [llm] api_key_env names
    llm_base_url: str | None = None                         # [llm] base_url, else $ANTHROPIC_BASE_URL

    @property
    def agent(self) -> AgentSection:
        return self.file.agent

    @property
    def llm_ready(self) -> bool:
        """Whether decisions may ask the LLM (else the rules planner decides alone)."""
        return self.file.llm.enabled and self.llm_key is not None

    @property
    def llm_note(self) -> str:
        """Why the LLM is not used (empty when it is)."""
        if not self.file.llm.enabled:
            return "disabled ([llm] enabled = false)"
        return "" if self.llm_key is not None else f"not configured (no {self.file.llm.api_key_env})"

    @property
    def db_path(self) -> Path:
        return self.data_dir / DB_FILE

    @property
    def warnings(self) -> list[Issue]:
        """What is accepted but the owner should know (`config check`, `status`, the daemon's log)."""
        found = []
        llm = self.file.llm
        if llm.enabled and llm.price_note:
            found.append(Issue(str(self.source or "embedded defaults"), "llm.model", llm.price_note))
        return found


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
    paths = {name: getattr(parsed.paths, name) for name in DEFINITION_FOLDERS}
    data_dir, folders, shipped = resolve_paths(path, parsed.agent.data_dir, paths, env)   # as the CLI's light path
    notify_secrets = tuple(u for u in parsed.notify.urls if u)
    llm_key = env.get(parsed.llm.api_key_env) or None
    llm_base_url = parsed.llm.base_url or env.get("ANTHROPIC_BASE_URL") or None
    return Config(parsed, path, data_dir, folders, shipped,
                  secrets + notify_secrets + ((llm_key,) if llm_key else ()), llm_key, llm_base_url)


def _secret_values(raw: object, expanded: object) -> list[str]:
    """Values that came from `${NAME}` references: these are secrets."""
    if isinstance(raw, dict) and isinstance(expanded, dict):
        return [s for k in raw for s in _secret_values(raw[k], expanded.get(k))]
    if isinstance(raw, list) and isinstance(expanded, list):
        return [s for a, b in zip(raw, expanded) for s in _secret_values(a, b)]
    if isinstance(raw, str) and isinstance(expanded, str) and raw != expanded:
        return [expanded]
    return []


@dataclass(frozen=True)
class FileAutonomy:
    """`[agent] autonomy` as the config file says it now."""

    level: Autonomy | None          # None: the file was never read well
    problem: str | None = None      # why it cannot be read now (`level` is then the last good one)


_autonomy_reads: dict[Path, tuple[tuple[int, int, int], FileAutonomy]] = {}
_autonomy_good: dict[Path, Autonomy] = {}


def read_autonomy(path: Path, env: Mapping[str, str] | None = None) -> FileAutonomy:
    """Re-read only `[agent] autonomy` of the config file `path`: an edit of that line takes effect
    without a restart (the rest of the file is read at start only).

    Never raises: a file that cannot be read, is not TOML or names no level gives the last level
    read well and the problem as a `FILE:KEY: message` line. Reads are cached by mtime and size,
    so calling this on every decision costs a stat.
    """
    try:
        st = path.stat()
    except OSError as e:
        return FileAutonomy(_autonomy_good.get(path), str(Issue(str(path), "", f"cannot read file: {e.strerror or e}")))
    stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
    cached = _autonomy_reads.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    result = _read_autonomy(path, os.environ if env is None else env)
    _autonomy_reads[path] = (stamp, result)
    return result


def _read_autonomy(path: Path, env: Mapping[str, str]) -> FileAutonomy:
    try:
        raw = read_toml(path)
    except ConfigError as e:
        return FileAutonomy(_autonomy_good.get(path), "; ".join(str(i) for i in e.issues))
    agent = raw.get("agent", {})
    value = agent.get("autonomy", AgentSection.model_fields["autonomy"].default) if isinstance(agent, dict) else None
    expanded, issues = expand_env(value, str(path), env, "agent.autonomy")
    if issues:
        problem = str(issues[0])
    elif expanded not in LEVELS:
        problem = str(Issue(str(path), "agent.autonomy",
                            f"unknown autonomy level {value!r} (accepted: {', '.join(LEVELS)})"))
    else:
        _autonomy_good[path] = expanded
        return FileAutonomy(expanded)
    return FileAutonomy(_autonomy_good.get(path), problem)


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]{0,31})://")


def notify_url_issues(config: Config) -> list[Issue]:
    """`[notify] urls` that apprise cannot use, as `FILE:notify.urls[N]` issues (`config check`).

    Imports apprise, which loads every plugin: only the check paths call this, never the idle
    daemon. URLs carry secrets, so an issue names the index and the scheme, never the URL.
    """
    urls = config.file.notify.urls
    if not any(urls):
        return []
    import logging

    import apprise

    try:
        from apprise.manager_plugins import NotificationManager

        schemes: Any = NotificationManager()
    except Exception:  # another apprise version: say less
        schemes = None
    file = str(config.source or "embedded defaults")
    wiki = "https://github.com/caronc/apprise/wiki"
    apprise_log = logging.getLogger("apprise")
    hushed = apprise_log.disabled
    apprise_log.disabled = True   # its messages show the URL in clear
    issues = []
    try:
        for index, url in enumerate(urls):
            if not url or apprise.Apprise.instantiate(url, suppress_exceptions=True) is not None:
                continue
            m = _SCHEME.match(url)
            if m is None:
                why = ("apprise cannot use this URL: it has no scheme (expected SCHEME://..., "
                       f"such as mailto://, ntfy:// or json://; see {wiki})")
            elif schemes is not None and m.group(1).lower() not in schemes:
                why = f"apprise cannot use '{redacted(url)}': unknown scheme {m.group(1)!r} (the services: {wiki})"
            else:
                why = (f"apprise cannot use '{redacted(url)}': not a valid {m.group(1)} URL "
                       f"(its form is on {wiki})")
            issues.append(Issue(file, f"notify.urls[{index}]", why))
    finally:
        apprise_log.disabled = hushed
    return issues


def redacted(url: str) -> str:
    """An apprise URL with everything after the scheme hidden: `slack://***`."""
    scheme, sep, _ = url.partition("://")
    return f"{scheme}://***" if sep else "***"
