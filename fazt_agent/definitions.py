"""Loading the definition folders (the owner's ops repo): pulse/, policies/, kernel/, prompts/.

Every file is read and validated; all problems are collected and raised together as one
`ConfigError` whose issues read `FILE:KEY: message`, so `config check` shows everything at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field

from ._toml import load_model, read_toml, toml_files
from .config import Config
from .errors import ConfigError, Issue
from .kernel import ACTIONS
from .kernel.settings import KernelSettings, load_kernel
from .policy.model import Policy, load_policy
from .pulse import CHECKS, Check


@dataclass(frozen=True)
class Definitions:
    """Everything loaded from the definition folders."""

    checks: list[Check] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    policy: Policy = field(default_factory=Policy)
    kernel: KernelSettings = field(default_factory=KernelSettings)


@cache
def pulse_file_model() -> type[BaseModel]:
    """The model of one pulse/*.toml file: `[[checks]]` tables, one union member per kind."""
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
    model = pulse_file_model()
    for path in files:
        try:
            parsed: Any = load_model(model, read_toml(path), str(path))
        except ConfigError as e:
            issues += e.issues
            continue
        for index, cfg in enumerate(parsed.checks):
            if cfg.name in seen:
                issues.append(Issue(str(path), f"checks[{index}].name",
                                    f"duplicate check name {cfg.name!r} (also defined in {seen[cfg.name]})"))
                continue
            seen[cfg.name] = path
            if cfg.enabled:
                checks.append(CHECKS[cfg.kind](cfg))
    return checks, files, issues


def load_definitions(config: Config) -> Definitions:
    """Load and validate every definition folder of `config`.

    Raises:
        ConfigError: any file is unreadable or invalid (every issue of every file listed).
    """
    issues: list[Issue] = []
    folder = config.folders["pulse"]
    if config.file.paths.pulse is not None and not folder.is_dir():
        issues.append(Issue(str(config.source), "paths.pulse", f"folder {str(folder)!r} does not exist"))
    checks, files, pulse_issues = load_checks(folder)
    issues += pulse_issues
    kernel, kernel_issues = load_kernel(config.folders["kernel"])
    issues += kernel_issues
    policy, policy_issues = load_policy(config.folders["policies"], set(ACTIONS), set(CHECKS))
    issues += policy_issues
    try:
        from .decide.prompt import Prompts

        Prompts.load(config.folders["prompts"])
    except ConfigError as e:
        issues += e.issues
    if issues:
        raise ConfigError(issues)
    return Definitions(checks=checks, files=files, policy=policy, kernel=kernel)
