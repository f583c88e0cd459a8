"""Reading TOML files into pydantic models with `FILE:KEY: message` errors.

Every file the owner writes (config.toml, pulse/*.toml, policies/*.toml, kernel/*.toml) goes
through `load_model`, so every error names the file and the dotted key, with the accepted
values where there is a closed set.
"""

from __future__ import annotations

import math
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import ConfigError, Issue
from .units import INT64_MAX, INT64_MIN, shown

M = TypeVar("M", bound=BaseModel)

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def toml_files(folder: Path) -> list[Path]:
    """The `*.toml` files of a definition folder, sorted by name (the load order)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix == ".toml" and not p.name.startswith("."))


def read_toml(path: Path) -> dict[str, Any]:
    """Parse one TOML file, refusing what no setting means and what would break later: nesting
    deeper than MAX_DEPTH, `nan` and `inf`, integers beyond 64 bits.

    Raises:
        ConfigError: the file cannot be read, is not valid TOML, or holds such a value.
    """
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError([Issue(str(path), "", f"cannot read file: {e.strerror or e}")]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError([Issue(str(path), "", "file is not UTF-8 text")]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([Issue(str(path), "", f"invalid TOML: {e}")]) from None
    except RecursionError:   # tomllib recurses once per nested array or inline table
        raise ConfigError([Issue(str(path), "", TOO_DEEP)]) from None
    issues = value_issues(data, str(path))
    if issues:
        raise ConfigError(issues)
    return data


MAX_DEPTH = 32   # levels of tables and arrays; real files use fewer than 5
TOO_DEEP = f"too deeply nested (more than {MAX_DEPTH} levels)"


def value_issues(data: dict[str, Any], file: str) -> list[Issue]:
    """What `read_toml` refuses in parsed TOML, as `FILE:KEY` issues (one for too deep a file).

    A float setting is a threshold, a ratio or a duration: `nan` never compares true (a threshold
    that never fires) and `inf` overflows date arithmetic. TOML integers are 64-bit (the spec
    says so; tomllib does not check), which is also what SQLite stores. The walk is iterative:
    tomllib builds deep dotted keys without recursing, and a recursive walk would then fail.
    """
    issues: list[Issue] = []
    stack: list[tuple[str, Any, int]] = [("", data, 0)]
    while stack:
        key, value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_DEPTH:
                return [Issue(file, "", TOO_DEEP)]
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for k, v in reversed(list(items)):
                sub = f"{key}[{k}]" if isinstance(k, int) else f"{key}.{k}" if key else str(k)
                stack.append((sub, v, depth + 1))
        elif isinstance(value, float) and not math.isfinite(value):
            issues.append(Issue(file, key, f"must be a finite number, got {value!r}"))
        elif isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
            issues.append(Issue(file, key, f"integer out of range: TOML integers are 64-bit "
                                           f"({INT64_MIN:,} to {INT64_MAX:,}), got {shown(value)}"))
    return issues


def expand_env(data: Any, file: str, env: typing.Mapping[str, str], loc: str = "") -> tuple[Any, list[Issue]]:
    """Replace `${NAME}` in string values by the environment variable NAME (for secrets)."""
    issues: list[Issue] = []
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            out[k], sub = expand_env(v, file, env, f"{loc}.{k}" if loc else str(k))
            issues += sub
        return out, issues
    if isinstance(data, list):
        items = []
        for i, v in enumerate(data):
            item, sub = expand_env(v, file, env, f"{loc}[{i}]")
            items.append(item)
            issues += sub
        return items, issues
    if isinstance(data, str) and "${" in data:
        def sub_one(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in env:
                issues.append(Issue(file, loc, f"environment variable {name!r} is not set"))
                return ""
            return env[name]
        return _ENV_REF.sub(sub_one, data), issues
    return data, issues


def load_model(model: type[M], data: dict[str, Any], file: str) -> M:
    """Validate `data` (from `file`) as `model`.

    Raises:
        ConfigError: with one `FILE:KEY` issue per validation error.
    """
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(issues_from(e, model, data, file)) from None


def issues_from(error: ValidationError, model: type[BaseModel], data: Any, file: str) -> list[Issue]:
    """Turn a pydantic ValidationError into readable `FILE:KEY` issues."""
    issues = []
    for err in error.errors(include_url=False):
        key, parent_type = _walk(err["loc"], model, data)
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            key = f"{key}.kind" if key else "kind"
        issues.append(Issue(file, key, _message(err, parent_type)))
    return issues


def _walk(loc: tuple[Any, ...], model: Any, data: Any) -> tuple[str, Any]:
    """Follow `loc` through the data and the model types together.

    Returns the dotted key (without pydantic's union-tag steps) and the type that owns the last
    step, so that an unknown key can be reported with the accepted keys.
    """
    key = ""
    tp: Any = model
    parent: Any = model
    for part in loc:
        # A discriminated union puts the tag in the path: skip it, pick the matching member.
        if isinstance(data, dict) and isinstance(part, str) and part not in data and data.get("kind") == part:
            tp = _union_member(tp, part)
            continue
        parent = tp
        if isinstance(part, int):
            key += f"[{part}]"
            data = data[part] if isinstance(data, list) and part < len(data) else None
            tp = _item_type(tp)
        else:
            key = f"{key}.{part}" if key else str(part)
            data = data.get(part) if isinstance(data, dict) else None
            tp = _field_type(tp, part)
    return key, parent


def _strip(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) == 1:
                tp = args[0]
            else:
                return tp
        else:
            return tp


def _field_type(tp: Any, name: str) -> Any:
    tp = _strip(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel) and name in tp.model_fields:
        return tp.model_fields[name].annotation
    if typing.get_origin(tp) is dict:
        return typing.get_args(tp)[1]
    return None


def _item_type(tp: Any) -> Any:
    tp = _strip(tp)
    args = typing.get_args(tp)
    return args[0] if args else None


def _union_member(tp: Any, tag: str) -> Any:
    for member in typing.get_args(_strip(tp)):
        member = _strip(member)
        if isinstance(member, type) and issubclass(member, BaseModel) and "kind" in member.model_fields:
            if tag in typing.get_args(member.model_fields["kind"].annotation):
                return member
    return None


def _message(err: Any, parent: Any) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = _strip(parent)
        if isinstance(parent, type) and issubclass(parent, BaseModel):
            accepted = ", ".join(parent.model_fields)
            return f"unknown key (accepted keys: {accepted})"
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        return f"unknown kind {ctx.get('tag')!r} (accepted: {ctx.get('expected_tags')})"
    if kind == "union_tag_not_found":
        return "required key is missing"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if "input" in err and kind not in ("literal_error",) and not isinstance(err["input"], (dict, list)) \
            and f"got {err['input']!r}" not in msg and f"got {shown(err['input'])}" not in msg:
        return f"{msg} (got {shown(err['input'])})"   # our validators often say it already
    return msg
