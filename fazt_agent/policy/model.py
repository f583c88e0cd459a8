"""Policy files (policies/*.toml): rules, argument constraints, schedule and defaults.

A rule matches incidents (check name, kind, severity, target) to one candidate action with
arguments filled from the incident, and may say per autonomy level what the agent may do
(`act | ask | notify | deny`). The brief's limits always apply on top: a rule can be stricter
than its level allows, never looser.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import subprocess
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .._toml import load_model, read_toml, toml_files
from ..errors import ConfigError, Issue
from ..units import Duration, parse_duration

Verdict = Literal["act", "ask", "notify", "deny"]
Level = Literal["low", "medium", "high"]
Severity = Literal["unknown", "warning", "critical"]
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")
_WEEKLY = re.compile(r"^(mon|tue|wed|thu|fri|sat|sun) ([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$",
                     re.IGNORECASE)
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class _Model(BaseModel):
    # defer_build: built when policies/*.toml is first validated (the defaults are made unvalidated)
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class Match(_Model):
    """Which incidents a rule applies to; every given field must match (globs allowed)."""

    check: list[str] = Field(default_factory=list)
    kind: list[str] = Field(default_factory=list)
    target: list[str] = Field(default_factory=list)
    severity: list[Severity] = Field(default_factory=list)


class Verdicts(_Model):
    low: Verdict | None = None
    medium: Verdict | None = None
    high: Verdict | None = None


class Rule(_Model):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    description: str = ""
    match: Match = Match.model_construct()   # a default unvalidated: no validator built at import
    action: str
    args: dict[str, Any] = Field(default_factory=dict)
    verdicts: Verdicts = Verdicts.model_construct()
    cooldown: Duration | None = None
    max_actions: int | None = Field(default=None, ge=0)
    window: Duration | None = None
    halt_expiry: Duration | None = None
    verify_after: Duration | None = None
    halt_options: list[str] | None = None

    @field_validator("halt_options")
    @classmethod
    def _options(cls, v: list[str] | None) -> list[str] | None:
        return v if v is None else check_halt_options(v)


def check_halt_options(options: list[str]) -> list[str]:
    """A halt's answers: `approve` and `deny` always, plus `snooze-DURATION` ones ("ask me again in
    4 h": `snooze-4h`, `snooze-30m`), at most 10."""
    if "approve" not in options or "deny" not in options:
        raise ValueError(f"halt options must include 'approve' and 'deny', got {options!r}")
    if len(set(options)) != len(options) or len(options) > 10:
        raise ValueError(f"halt options must be unique, at most 10, got {options!r}")
    for option in options:
        if option in ("approve", "deny"):
            continue
        if snooze_seconds(option) is None:
            raise ValueError(f"unknown halt option {option!r}: use approve, deny, or snooze-DURATION "
                             "such as 'snooze-4h' (ask again after that long)")
    return options


def snooze_seconds(option: str) -> float | None:
    """How long a `snooze-DURATION` option puts the question off (1 min to 30 days), else None."""
    if not option.startswith("snooze-"):
        return None
    try:
        seconds = parse_duration(option.removeprefix("snooze-"))
    except (ValueError, TypeError):
        return None
    return seconds if 60 <= seconds <= 30 * 86400 and option == option.lower() else None


class Constraints(_Model):
    cleanup_roots: list[Path] = Field(default_factory=list)
    service_units: list[str] = Field(default_factory=list)
    domains: list[str] = Field(default_factory=list)

    @field_validator("cleanup_roots")
    @classmethod
    def _absolute(cls, roots: list[Path]) -> list[Path]:
        for root in roots:
            if not root.is_absolute() or ".." in root.parts:
                raise ValueError(f"cleanup roots must be absolute paths without '..', got {str(root)!r}")
            if root == Path("/"):
                raise ValueError("'/' cannot be a cleanup root")
        return roots


class Window(_Model):
    """A one-off maintenance window, local time in the schedule's timezone."""

    start: str
    end: str


class Schedule(_Model):
    timezone: str = "UTC"
    quiet_hours: list[str] = Field(default_factory=list)       # "22:00-07:00"
    maintenance: list[str | Window] = Field(default_factory=list)  # "sun 02:00-04:00" or {start, end}

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {v!r} (use an IANA name such as 'Europe/Berlin' or 'UTC')") from None
        return v

    @field_validator("quiet_hours")
    @classmethod
    def _ranges(cls, v: list[str]) -> list[str]:
        for item in v:
            if not _HHMM.match(item):
                raise ValueError(f"expected 'HH:MM-HH:MM' such as '22:00-07:00', got {item!r}")
        return v

    @field_validator("maintenance")
    @classmethod
    def _windows(cls, v: list[str | Window]) -> list[str | Window]:
        from datetime import datetime

        for item in v:
            if isinstance(item, str) and not _WEEKLY.match(item):
                raise ValueError(f"expected a weekly window such as 'sun 02:00-04:00', got {item!r}")
            if isinstance(item, Window):
                try:
                    start, end = datetime.fromisoformat(item.start), datetime.fromisoformat(item.end)
                except ValueError:
                    raise ValueError(f"expected ISO times such as '2026-12-01T02:00', got {item.start!r} - {item.end!r}") from None
                if start >= end:
                    raise ValueError(f"maintenance window ends before it starts: {item.start} - {item.end}")
        return v


class Defaults(_Model):
    cooldown: Duration = 3600.0
    max_actions: int = Field(default=5, ge=0)
    window: Duration = 86400.0
    halt_expiry: Duration = 86400.0
    halt_options: list[str] = Field(default_factory=lambda: ["approve", "deny"])
    verify_after: Duration = 180.0

    @field_validator("halt_options")
    @classmethod
    def _options(cls, v: list[str]) -> list[str]:
        return check_halt_options(v)
    # A failed safe action is decided again after each of these waits in turn (the last one
    # repeats) while its incident stays open, until `retry_attempts` attempts on the incident
    # (the first included) have failed. 1 attempt: never retry.
    retry_backoff: tuple[Duration, ...] = Field(default=(300.0, 900.0, 3600.0, 14400.0), min_length=1,
                                                max_length=20)
    retry_attempts: int = Field(default=5, ge=1, le=50)


class PolicyFile(_Model):
    rules: list[Rule] = Field(default_factory=list)
    constraints: Constraints | None = None
    schedule: Schedule | None = None
    defaults: Defaults | None = None


def parse_clock(text: str) -> time:
    h, m = text.split(":")
    return time(int(h), int(m))


@dataclass(frozen=True)
class Policy:
    """The effective policy: every file's rules in load order, merged constraints."""

    rules: tuple[Rule, ...] = ()
    constraints: Constraints = Constraints.model_construct()   # defaults, unvalidated (defer_build)
    schedule: Schedule = Schedule.model_construct()
    defaults: Defaults = Defaults.model_construct()
    version: str = "none"
    files: tuple[str, ...] = field(default_factory=tuple)

    def rule(self, name: str) -> Rule | None:
        return next((r for r in self.rules if r.name == name), None)


def load_policy(folder: Path, known_actions: set[str],
                known_kinds: set[str] | None = None) -> tuple[Policy, list[Issue]]:
    """Read policies/*.toml (sorted). Returns the policy and every issue found.

    `known_kinds` (the check kinds, `pulse.CHECKS`) are passed in, not imported, so the policy layer
    stays below the checks: a rule matching a kind that no check has would silently never match.
    """
    issues: list[Issue] = []
    rules: list[Rule] = []
    roots: list[Path] = []
    units: list[str] = []
    domains: list[str] = []
    schedule: Schedule | None = None
    defaults: Defaults | None = None
    seen: dict[str, str] = {}
    files = toml_files(folder)
    for path in files:
        try:
            parsed = load_model(PolicyFile, read_toml(path), str(path))
        except ConfigError as e:
            issues += e.issues
            continue
        for i, rule in enumerate(parsed.rules):
            if rule.name in seen:
                issues.append(Issue(str(path), f"rules[{i}].name", f"duplicate rule name {rule.name!r} (also in {seen[rule.name]})"))
                continue
            if rule.action not in known_actions:
                issues.append(Issue(str(path), f"rules[{i}].action",
                                    f"unknown action {rule.action!r} (accepted: {', '.join(sorted(known_actions))})"))
                continue
            unknown = _unknown_kinds(rule.match.kind, known_kinds)
            if unknown:
                accepted = ", ".join(sorted(known_kinds or ()))
                issues.append(Issue(str(path), f"rules[{i}].match.kind",
                                    f"unknown check kind {unknown[0]!r} (accepted: {accepted})"))
                continue
            seen[rule.name] = str(path)
            rules.append(rule)
        if parsed.constraints:
            roots += parsed.constraints.cleanup_roots
            units += parsed.constraints.service_units
            domains += parsed.constraints.domains
        for name, value, current in (("schedule", parsed.schedule, schedule), ("defaults", parsed.defaults, defaults)):
            if value is not None and current is not None:
                issues.append(Issue(str(path), name, f"[{name}] may appear in one policy file only"))
        schedule = parsed.schedule or schedule
        defaults = parsed.defaults or defaults
    policy = Policy(
        rules=tuple(rules),
        constraints=Constraints(cleanup_roots=sorted(set(roots)), service_units=sorted(set(units)),
                                domains=sorted(set(domains))),
        schedule=schedule or Schedule.model_construct(), defaults=defaults or Defaults.model_construct(),
        version=policy_version(folder, files), files=tuple(str(p) for p in files))
    return policy, issues


def _unknown_kinds(patterns: list[str], known: set[str] | None) -> list[str]:
    """The kind patterns (globs allowed, as in matching) that match no known check kind."""
    if known is None:
        return []
    return [p for p in patterns if not any(fnmatch.fnmatchcase(k, p) for k in known)]


def policy_version(folder: Path, files: list[Path]) -> str:
    """The ops repo's git commit (with '+dirty' for uncommitted edits), else a content hash."""
    digest = hashlib.sha256()
    for path in files:
        try:
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        except OSError:
            pass
    content = f"sha256:{digest.hexdigest()[:12]}"
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return content
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=5)
        return f"git:{head.stdout.strip()}{'+dirty' if dirty.stdout.strip() else ''}"
    except (OSError, subprocess.TimeoutExpired):
        return content
