"""Per-action settings and owner-defined commands, from the kernel/*.toml files.

    [cleanup]   destructive_above, destructive_files   (when a cleanup plan is "destructive")
    [service]   restart_command, status_command, timeout
    [[commands]] name, description, argv, risk, reversible, deletes, timeout, [commands.args.X]
    [certs]     ACME defaults for every certificate (see certs/config.py)
    [[certificates]] name, domains, cert_path, key_path, challenge, ... (one per certificate)

Files load in name order. A key may be set in one file only, and a command or certificate name
declared once.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .._toml import load_model, read_toml
from ..certs.config import Certificate, CertificateSpec, CertsSettings, resolve
from ..errors import ConfigError, Issue
from ..units import Duration, Size
from .base import Risk

COMMAND_NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"
ARG_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,31}$")
PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
MAX_TIMEOUT = 3600.0  # the `timeout` ceiling of the service.restart and command actions


class Model(BaseModel):
    # defer_build: built when kernel/*.toml is first validated (the defaults are made unvalidated)
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


def _argv_list(value: Any) -> Any:
    if isinstance(value, str):
        raise ValueError(f"expected an argv list like ['/usr/bin/program', 'arg'], not a shell string: {value!r}")
    return value


def _bounded_timeout(value: float) -> float:
    if not 0 < value <= MAX_TIMEOUT:
        raise ValueError(f"timeout must be above 0 and at most {MAX_TIMEOUT:.0f}s")
    return value


class CleanupSettings(Model):
    destructive_above: Size = 100_000_000     # bytes; a plan freeing more is "destructive"
    destructive_files: int = Field(1000, ge=0)  # files; a plan deleting more is "destructive"


class ServiceSettings(Model):
    restart_command: list[str] = Field(["systemctl", "restart", "{unit}"], min_length=1)
    status_command: list[str] | None = Field(None, min_length=1)
    timeout: Duration = 90.0

    _no_shell = field_validator("restart_command", "status_command", mode="before")(_argv_list)
    _timeout = field_validator("timeout")(_bounded_timeout)

    @field_validator("restart_command")
    @classmethod
    def _mentions_unit(cls, value: list[str]) -> list[str]:
        if not any("{unit}" in element for element in value[1:]):
            raise ValueError("restart_command must pass the unit: put '{unit}' in an argument after the program")
        return value

    @field_validator("restart_command", "status_command")
    @classmethod
    def _fixed_program(cls, value: list[str] | None) -> list[str] | None:
        if value and "{unit}" in value[0]:
            raise ValueError("the program (first element) cannot contain '{unit}'")
        return value


ArgType = Literal["string", "int", "number", "bool", "path", "choice"]


class ArgSpec(Model):
    """The schema of one argument of an owner-defined command."""

    type: ArgType = "string"
    description: str = ""
    pattern: str | None = None                # string/path: the whole value must match (re.fullmatch)
    choices: list[str | int | float] | None = Field(None, min_length=1)   # choice
    min: float | None = None                  # int/number
    max: float | None = None
    allow_dash: bool = False                  # string: may start with '-' (off: refuses option injection)
    required: bool | None = None              # default: required unless a default is declared
    default: Any = None                       # declared last: its validator sees every other key

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            if info.data.get("type") not in ("string", "path"):
                raise ValueError("pattern applies to string and path arguments only")
            try:
                re.compile(value)
            except re.error as e:
                raise ValueError(f"not a valid regular expression: {e}") from None
        return value

    @field_validator("choices")
    @classmethod
    def _choices(cls, value: list[Any] | None, info: ValidationInfo) -> list[Any] | None:
        if value is not None and info.data.get("type") != "choice":
            raise ValueError("choices apply to choice arguments only")
        return value

    @field_validator("min", "max")
    @classmethod
    def _bounds(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and info.data.get("type") not in ("int", "number"):
            raise ValueError("min and max apply to int and number arguments only")
        if value is not None and info.field_name == "max" and info.data.get("min") is not None \
                and value < info.data["min"]:
            raise ValueError(f"max {value:g} is below min {info.data['min']:g}")
        return value

    @field_validator("default")
    @classmethod
    def _default(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and "type" in info.data:
            spec = cls.model_construct(**{k: v for k, v in info.data.items() if k != "default"})
            return spec.check("default", value)
        return value

    @model_validator(mode="after")
    def _complete(self) -> ArgSpec:
        if self.type == "choice" and not self.choices:
            raise ValueError("a choice argument needs choices = [...]")
        if self.required is False and self.default is None:
            raise ValueError("an optional argument (required = false) needs a default")
        if self.required and self.default is not None:
            raise ValueError("a required argument takes no default; drop one of them")
        return self

    def check(self, name: str, value: Any) -> Any:
        """The value if it fits this schema (ints from digit strings); `name` is shown in errors.

        Raises:
            ValueError: naming the value and what is accepted.
        """
        shown = f"{name} = {value!r}"
        if self.type in ("string", "path"):
            if not isinstance(value, str) or "\x00" in value:
                raise ValueError(f"{shown}: expected text")
            if self.type == "path" and (not value.startswith("/") or ".." in value.split("/")):
                raise ValueError(f"{shown}: expected an absolute path without '..'")
            if value.startswith("-") and not self.allow_dash:
                raise ValueError(f"{shown}: values starting with '-' are refused (they read as options)")
            if self.pattern is not None and not re.fullmatch(self.pattern, value):
                raise ValueError(f"{shown} does not match {self.pattern}")
            return value
        if self.type == "choice":
            if value not in self.choices or isinstance(value, bool):  # type: ignore[operator]
                raise ValueError(f"{shown} is not one of {self.choices}")
            return value
        if self.type == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{shown}: expected true or false")
            return value
        if self.type == "int" and isinstance(value, str) and re.fullmatch(r"-?\d{1,18}", value):
            value = int(value)
        wanted = int if self.type == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, wanted) or not math.isfinite(value):
            raise ValueError(f"{shown}: expected {'an integer' if self.type == 'int' else 'a number'}")
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            raise ValueError(f"{shown} is outside [{self.min}, {self.max}]")
        return value


class CommandSpec(Model):
    """One owner-defined command: a fixed program, arguments only through declared placeholders."""

    name: str = Field(pattern=COMMAND_NAME)
    description: str = ""
    args: dict[str, ArgSpec] = {}             # declared before argv: argv's validator reads them
    argv: list[str] = Field(min_length=1)
    risk: Risk = "destructive"
    reversible: bool = False
    deletes: bool = False
    timeout: Duration = 60.0

    _no_shell = field_validator("argv", mode="before")(_argv_list)
    _timeout = field_validator("timeout")(_bounded_timeout)

    @field_validator("args")
    @classmethod
    def _arg_names(cls, value: dict[str, ArgSpec]) -> dict[str, ArgSpec]:
        for name in value:
            if not ARG_NAME.match(name):
                raise ValueError(f"argument name {name!r} must match {ARG_NAME.pattern}")
        return value

    @field_validator("argv")
    @classmethod
    def _placeholders(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if PLACEHOLDER.search(value[0]):
            raise ValueError("the program (first element) cannot contain a placeholder")
        if "args" not in info.data:
            return value
        declared = info.data["args"]
        used = {m.group(1) for element in value for m in PLACEHOLDER.finditer(element)}
        if used - declared.keys():
            raise ValueError(f"placeholders {sorted(used - declared.keys())} are not declared under args "
                             f"(declared: {sorted(declared)})")
        if declared.keys() - used:
            raise ValueError(f"arguments {sorted(declared.keys() - used)} are declared but argv never uses them")
        return value


class KernelFile(Model):
    """The shape of one kernel/*.toml file."""

    cleanup: CleanupSettings | None = None
    service: ServiceSettings | None = None
    commands: list[CommandSpec] = []
    certs: CertsSettings | None = None
    certificates: list[CertificateSpec] = []


@dataclass(frozen=True)
class KernelSettings:
    """The merged settings of every kernel/*.toml file."""

    cleanup: CleanupSettings = CleanupSettings.model_construct()   # defaults, unvalidated (defer_build)
    service: ServiceSettings = ServiceSettings.model_construct()
    commands: tuple[CommandSpec, ...] = ()
    certs: CertsSettings = CertsSettings.model_construct()
    certificates: tuple[Certificate, ...] = ()
    files: tuple[Path, ...] = ()

    def for_action(self, name: str) -> dict[str, Any]:
        """The settings dict an `ActionContext` for action `name` carries."""
        if name == "cleanup":
            return self.cleanup.model_dump()
        if name == "service.restart":
            return self.service.model_dump()
        if name == "command":
            return {"commands": {c.name: c for c in self.commands}}
        if name in ("ssl.renew", "ssl.provision"):
            return {"certs": self.certs, "certificates": {c.name: c for c in self.certificates}}
        return {}


def load_kernel(folder: Path) -> tuple[KernelSettings, list[Issue]]:
    """Read and merge every `*.toml` of `folder`; a broken file is skipped and its issues returned."""
    files = sorted(p for p in folder.glob("*.toml") if not p.name.startswith(".")) if folder.is_dir() else []
    issues: list[Issue] = []
    sections: dict[str, dict[str, Any]] = {"cleanup": {}, "service": {}, "certs": {}}
    set_in: dict[str, Path] = {}
    declared_in: dict[str, Path] = {}
    commands: dict[str, CommandSpec] = {}
    specs: dict[str, tuple[Path, int, CertificateSpec]] = {}
    for path in files:
        try:
            parsed = load_model(KernelFile, read_toml(path), str(path))
        except ConfigError as e:
            issues += e.issues
            continue
        for section in ("cleanup", "service", "certs"):
            table = getattr(parsed, section)
            for key in sorted(table.model_fields_set) if table else ():
                dotted = f"{section}.{key}"
                if dotted in set_in:
                    issues.append(Issue(str(path), dotted, f"also set in {set_in[dotted]}; set it in one file only"))
                    continue
                set_in[dotted] = path
                sections[section][key] = getattr(table, key)
        for index, spec in enumerate(parsed.commands):
            if spec.name in commands:
                issues.append(Issue(str(path), f"commands[{index}].name", f"duplicate command name {spec.name!r} "
                                    f"(also declared in {declared_in[spec.name]})"))
                continue
            commands[spec.name] = spec
            declared_in[spec.name] = path
        for index, cert in enumerate(parsed.certificates):
            if cert.name in specs:
                issues.append(Issue(str(path), f"certificates[{index}].name", f"duplicate certificate name "
                                    f"{cert.name!r} (also declared in {specs[cert.name][0]})"))
                continue
            specs[cert.name] = (path, index, cert)
    certs = CertsSettings.model_validate(sections["certs"])
    certificates = []
    for path, index, cert in specs.values():
        try:
            certificates.append(resolve(cert, certs))
        except ValueError as e:
            issues.append(Issue(str(path), f"certificates[{index}]", str(e)))
    settings = KernelSettings(cleanup=CleanupSettings.model_validate(sections["cleanup"]),
                              service=ServiceSettings.model_validate(sections["service"]),
                              commands=tuple(commands.values()), certs=certs, certificates=tuple(certificates),
                              files=tuple(files))
    return settings, issues
