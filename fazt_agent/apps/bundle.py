"""Reading a deploy: a directory or a .zip, into `{path: bytes}` with its settings.

Refused, before anything is stored: a zip entry with `..`, an absolute path or a symlink, a
symlink in a directory, more than `max_files` files or more than `max_bytes` in all (the sizes a
zip declares are checked first, then the bytes actually read, so a lying zip cannot pass).
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import FaztAgentError
from ..units import format_size, parse_duration

NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
SETTINGS_FILE = "fazt.toml"
SKIPPED_DIRS = {".git", ".hg", ".svn"}


class BundleError(FaztAgentError):
    """A deploy that cannot be accepted (the message says why)."""


@dataclass
class Bundle:
    files: dict[str, bytes]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(len(b) for b in self.files.values())


def check_name(name: str) -> str:
    """An app name is one DNS label: it becomes `NAME.<[apps] domain>`."""
    if not NAME.match(name):
        raise BundleError(f"invalid app name {name!r}: use 1-63 lowercase letters, digits and '-', "
                          "starting and ending with a letter or digit")
    return name


def clean_path(raw: str) -> str:
    """A relative POSIX path inside the app; anything that could escape is refused."""
    if "\\" in raw or "\x00" in raw:
        raise BundleError(f"refused path {raw!r}: backslashes and NUL are not allowed")
    if raw.startswith("/") or re.match(r"^[A-Za-z]:", raw):
        raise BundleError(f"refused path {raw!r}: absolute paths are not allowed")
    parts = PurePosixPath(raw).parts
    if any(p == ".." for p in parts):
        raise BundleError(f"refused path {raw!r}: '..' is not allowed")
    parts = tuple(p for p in parts if p != ".")
    if not parts:
        raise BundleError(f"refused path {raw!r}: empty")
    return "/".join(parts)


def read(source: Path, *, max_files: int, max_bytes: int) -> Bundle:
    """Read `source` (a directory or a .zip file).

    Raises:
        BundleError: missing, not a directory nor a zip, or refused (see the module docstring).
    """
    if not source.exists():
        raise BundleError(f"{source}: no such file or directory")
    if source.is_dir():
        files = _read_dir(source, max_files, max_bytes)
    elif zipfile.is_zipfile(source):
        files = _read_zip(source, max_files, max_bytes)
    else:
        raise BundleError(f"{source}: not a directory nor a .zip file")
    return from_files(files, max_files=max_files, max_bytes=max_bytes)


def from_files(files: dict[str, bytes], *, max_files: int, max_bytes: int) -> Bundle:
    """A bundle from paths and contents (also what MCP's `fazt_deploy` sends)."""
    clean: dict[str, bytes] = {}
    for raw, content in files.items():
        path = clean_path(raw)
        if path in clean:
            raise BundleError(f"refused path {raw!r}: given twice")
        clean[path] = content
    _limits(len(clean), sum(len(b) for b in clean.values()), max_files, max_bytes)
    if not clean:
        raise BundleError("nothing to deploy: no files")
    return Bundle(clean, _settings(clean.get(SETTINGS_FILE)))


def _limits(count: int, size: int, max_files: int, max_bytes: int) -> None:
    if count > max_files:
        raise BundleError(f"too many files: {count} (limit {max_files}, [apps] max_files)")
    if size > max_bytes:
        raise BundleError(f"upload too large: {format_size(size)} (limit {format_size(max_bytes)}, "
                          "[apps] max_upload)")


def _read_dir(root: Path, max_files: int, max_bytes: int) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    total = 0
    stack = [root]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                rel = Path(entry.path).relative_to(root).as_posix()
                if entry.is_symlink():
                    raise BundleError(f"refused {rel!r}: symlinks are not allowed")
                if entry.is_dir(follow_symlinks=False):
                    if entry.name not in SKIPPED_DIRS:
                        stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
                    _limits(len(files) + 1, total, max_files, max_bytes)
                    files[rel] = Path(entry.path).read_bytes()
    return files


def _read_zip(source: Path, max_files: int, max_bytes: int) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(source) as z:
            infos = [i for i in z.infolist() if not i.is_dir()]
            for info in infos:
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise BundleError(f"refused {info.filename!r}: symlinks are not allowed")
                clean_path(info.filename)
            _limits(len(infos), sum(i.file_size for i in infos), max_files, max_bytes)
            files: dict[str, bytes] = {}
            total = 0
            for info in infos:
                with z.open(info) as f:
                    data = f.read(max_bytes - total + 1)
                total += len(data)
                _limits(len(files) + 1, total, max_files, max_bytes)
                files[info.filename] = data
            return files
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, NotImplementedError) as e:
        raise BundleError(f"{source}: cannot read the zip: {e}") from None


def _settings(raw: bytes | None) -> dict[str, Any]:
    """`fazt.toml` at the root: `spa`, `health`, `domains`, `timeout` (validated here)."""
    if raw is None:
        return {}
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise BundleError(f"{SETTINGS_FILE}: {e}") from None
    except RecursionError:
        raise BundleError(f"{SETTINGS_FILE}: too deeply nested") from None
    unknown = set(data) - {"spa", "health", "domains", "timeout"}
    if unknown:
        raise BundleError(f"{SETTINGS_FILE}:{sorted(unknown)[0]}: unknown setting (spa, health, domains, timeout)")
    out: dict[str, Any] = {}
    if "spa" in data:
        if not isinstance(data["spa"], bool):
            raise BundleError(f"{SETTINGS_FILE}:spa: expected true or false")
        out["spa"] = data["spa"]
    if "health" in data:
        h = data["health"]
        if not isinstance(h, str) or not h.startswith("/"):
            raise BundleError(f"{SETTINGS_FILE}:health: expected a path starting with '/'")
        out["health"] = h
    if "domains" in data:
        d = data["domains"]
        if not isinstance(d, list) or not all(isinstance(x, str) and re.match(r"^[a-z0-9.-]+$", x.lower()) for x in d):
            raise BundleError(f"{SETTINGS_FILE}:domains: expected a list of host names")
        out["domains"] = sorted({x.lower() for x in d})
    if "timeout" in data:
        try:
            out["timeout"] = parse_duration(data["timeout"])
        except ValueError as e:
            raise BundleError(f"{SETTINGS_FILE}:timeout: {e}") from None
    return out
