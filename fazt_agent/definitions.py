"""Loading the definition folders (the owner's ops repo): pulse/, policies/, kernel/, prompts/.

Every file is read and validated; all problems are collected and raised together as one
`ConfigError` whose issues read `FILE:KEY: message`, so `config check` shows everything at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._toml import issues_from, load_model, read_toml, toml_files
from .config import Config
from .errors import ConfigError, Issue
from .kernel import ACTIONS
from .kernel.settings import KernelSettings, load_kernel
from .policy.model import Policy, load_policy
from .pulse import CHECKS, Check, CheckConfig


@dataclass(frozen=True)
class Definitions:
    """Everything loaded from the definition folders."""

    checks: list[Check] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    policy: Policy = field(default_factory=Policy)
    kernel: KernelSettings = field(default_factory=KernelSettings)


class DefinitionsBroken(ConfigError):
    """Something that acts on the definitions was asked for while a definition file is broken."""

    def __init__(self, what: str, issues: list[Issue], hint: str | None = None):
        super().__init__(issues)
        self.what = what
        self.hint = hint

    def __str__(self) -> str:
        return (f"{self.what} needs valid definitions; broken: {broken_summary(self.issues)}. Fix it "
                "(`fazt-agent config check` lists every error); a running daemon keeps its last good definitions"
                + (f". {self.hint}" if self.hint else ""))


def broken_summary(issues: list[Issue], shown: int = 3) -> str:
    """What is broken, on one line: `FILE:KEY: message; FILE:KEY: message (and 2 more)`."""
    text = "; ".join(" ".join(str(i).split()) for i in issues[:shown])
    return text + (f" (and {len(issues) - shown} more)" if len(issues) > shown else "")


@cache
def pulse_file_model() -> type[BaseModel]:
    """The model of one pulse/*.toml file: `[[checks]]` tables, one union member per kind (every
    kind imported and built: `read_checks` uses it only for a file it cannot read table by table)."""
    members = tuple(cls.Config for cls in CHECKS.values())
    CheckUnion = Annotated[Union[members], Field(discriminator="kind")]  # type: ignore[valid-type]

    class PulseFile(BaseModel):
        model_config = ConfigDict(extra="forbid")
        checks: list[CheckUnion] = Field(default_factory=list)  # type: ignore[valid-type]

    return PulseFile


def load_checks(folder: Path) -> tuple[list[Check], list[Path], list[Issue]]:
    checks: list[Check] = []
    files = toml_files(folder)
    issues: list[Issue] = []
    seen: dict[str, Path] = {}
    for path in files:
        try:
            configs = read_checks(read_toml(path), str(path))
        except ConfigError as e:
            issues += e.issues
            continue
        for index, cfg in enumerate(configs):
            if cfg.name in seen:
                issues.append(Issue(str(path), f"checks[{index}].name",
                                    f"duplicate check name {cfg.name!r} (also defined in {seen[cfg.name]})"))
                continue
            seen[cfg.name] = path
            if cfg.enabled:
                checks.append(CHECKS[cfg.kind](cfg))
    return checks, files, issues


def read_checks(data: dict[str, Any], file: str) -> list[CheckConfig]:
    """The `[[checks]]` tables of one pulse file, each validated by the model of its own `kind`, so
    only the kinds in use are imported and built. A file that is not a list of tables of known
    kinds is validated by the model of every kind (`pulse_file_model`): its errors name what is
    wrong, and the accepted kinds for an unknown one.

    Raises:
        ConfigError: every issue of the file, as `FILE:checks[N].KEY: message`.
    """
    tables = data.get("checks", [])
    if set(data) - {"checks"} or not isinstance(tables, list) or not all(
            isinstance(t, dict) and isinstance(t.get("kind"), str) and t["kind"] in CHECKS for t in tables):
        return list(load_model(pulse_file_model(), data, file).checks)   # type: ignore[attr-defined]
    configs, issues = [], []
    for index, table in enumerate(tables):
        model = CHECKS[table["kind"]].Config
        try:
            configs.append(model.model_validate(table))
        except ValidationError as e:
            issues += [Issue(file, f"checks[{index}]" + (f".{i.key}" if i.key else ""), i.message)
                       for i in issues_from(e, model, table, file)]
    if issues:
        raise ConfigError(issues)
    return configs


def load_definitions(config: Config) -> Definitions:
    """Load and validate every definition folder of `config`.

    Raises:
        ConfigError: any file is unreadable or invalid (every issue of every file listed).
    """
    definitions, issues = read_definitions(config)
    if issues:
        raise ConfigError(issues)
    return definitions


def read_definitions(config: Config) -> tuple[Definitions, list[Issue]]:
    """Load every definition folder of `config`, keeping what loaded: the checks, rules and
    settings of the valid files, and every issue of the others.

    For commands that do not act on the definitions (status, lists, deny, the event log): one
    broken file must not lock the owner out while a running daemon keeps its last good set.
    Whatever acts (the daemon, `beat`, plans, approvals) uses `load_definitions`, all or nothing.
    """
    issues: list[Issue] = []
    folder = config.folders["pulse"]
    if config.file.paths.pulse is not None and not folder.is_dir():
        issues.append(Issue(str(config.source), "paths.pulse", f"folder {str(folder)!r} does not exist"))
    checks, files, pulse_issues = load_checks(folder)
    issues += pulse_issues
    kernel, kernel_issues = load_kernel(config.folders["kernel"])
    issues += kernel_issues
    if config.file.apps.tls_listen and not kernel.certificates:
        issues.append(Issue(str(config.source or "embedded defaults"), "apps.tls_listen",
                            "TLS on the apps plane serves the [[certificates]] of kernel/*.toml, and "
                            f"{config.folders['kernel']} declares none: declare one, or remove tls_listen"))
    policy, policy_issues = load_policy(config.folders["policies"], set(ACTIONS), set(CHECKS))
    issues += policy_issues
    try:
        from .decide.prompt import Prompts

        Prompts.load(config.folders["prompts"])
    except ConfigError as e:
        issues += e.issues
    except OSError as e:  # an unreadable template
        issues.append(Issue(str(e.filename or config.folders["prompts"]), "", f"cannot read file: {e.strerror or e}"))
    return Definitions(checks=checks, files=files, policy=policy, kernel=kernel), issues
