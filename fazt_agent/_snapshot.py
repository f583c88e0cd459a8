"""What the validated load found, kept for the CLI's light read path (`cli/_light.py`).

`status`, `events list` and `halts list` read the store; what they need from the config and the
definitions (the data dir, the checks that loaded, the broken-definitions warning, autonomy,
personality, the LLM note, the config's warnings) is only known after pydantic validated every
key of config.toml and every definition file, and a bad key anywhere stops a command today. So
the light path does not validate: each command that opens a Runtime on the validated config
(`cli/_common.runtime`) writes DATA_DIR/cli-snapshot.json with those facts and a stamp of every
input the load read: the config file's bytes, the bytes of each file in each definition folder
(and the shipped prompts, a missing template's fallback), the paths those resolve to, and the
size and mtime of this package's source (another version validates differently). The light path
recomputes the stamp and uses the facts only when it is equal; anything else (no snapshot, an
edit, a `${NAME}` reference, whose value is a secret the stamp must not hold, a config the light
reader cannot parse) leaves the command to the validated path, which prints what it always printed
(a `FILE:KEY: message` error included) and writes a new snapshot. The first command after an
edit is as slow as before; the next ones are light.

Imports neither pydantic nor asyncio.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Mapping, NamedTuple

try:   # the C module hashlib falls back to, without OpenSSL: ~0.3 ms to import where hashlib takes ~5 (same digest)
    from _sha256 import sha256   # CPython 3.11
except ImportError:   # pragma: no cover - other Pythons
    try:
        from _sha2 import sha256   # type: ignore[no-redef]  # CPython 3.12+
    except ImportError:
        from hashlib import sha256   # type: ignore[no-redef]

from ._config_paths import DEFINITION_FOLDERS, find_config, resolve_paths, shipped_defaults
from .errors import ConfigError

FILE = "cli-snapshot.json"
FORMAT = 2


class Observed(NamedTuple):
    """Where the inputs of the validated load are, and the stamp of their contents now."""

    source: Path | None
    data_dir: Path
    folders: dict[str, Path]
    stamp: str


def observe(explicit: Path | None, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Observed | None:
    """The inputs `load_config(explicit)` and the definitions would read, or None when the light reader
    cannot say what they are (a missing file, not TOML, a `${NAME}` reference, a path key that is not
    a string): the validated path then decides."""
    env = os.environ if env is None else env
    try:
        source = find_config(explicit, env, Path.cwd() if cwd is None else cwd)
    except (ConfigError, OSError):
        return None
    digest = sha256(f"{FORMAT}\0{_code_stamp()}\0".encode())
    data: dict[str, Any] = {}
    if source is not None:
        source = source.absolute()
        try:
            raw = source.read_bytes()
            data = tomllib.loads(raw.decode("utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
            return None
        if _references_env(data):
            return None
        digest.update(b"config\0" + str(source).encode() + b"\0" + raw)
    agent, paths = data.get("agent", {}), data.get("paths", {})
    if not isinstance(agent, dict) or not isinstance(paths, dict):
        return None
    given = {name: paths.get(name) for name in DEFINITION_FOLDERS}
    if not all(isinstance(v, (str, type(None))) for v in (agent.get("data_dir"), *given.values())):
        return None
    data_dir, folders, _ = resolve_paths(source, _path(agent.get("data_dir")),
                                         {name: _path(v) for name, v in given.items()}, env)
    for name, folder in sorted({**folders, "shipped prompts": shipped_defaults() / "prompts"}.items()):
        if not _folder_digest(digest, name, folder):
            return None
    return Observed(source, data_dir, folders, digest.hexdigest())


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value)


def _references_env(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_references_env(v) for v in value.values())
    if isinstance(value, list):
        return any(_references_env(v) for v in value)
    return isinstance(value, str) and "${" in value


def _folder_digest(digest: Any, name: str, folder: Path) -> bool:
    """Add a definition folder (its path, each entry's name and kind, each file's bytes) to `digest`;
    False when an entry cannot be read (the validated load says what)."""
    digest.update(f"\0folder\0{name}\0{folder}\0".encode())
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except FileNotFoundError:
        digest.update(b"missing")
        return True
    except OSError:
        return False
    for entry in entries:
        digest.update(entry.name.encode(errors="surrogateescape") + b"\0")
        try:
            if entry.is_file():
                with open(entry.path, "rb") as f:
                    content = f.read()
                digest.update(b"file\0%d\0" % len(content) + content)
            else:
                digest.update(b"dir\0" if entry.is_dir() else b"other\0")
        except OSError:
            return False
    return True


def _code_stamp() -> str:
    """The size and mtime of every source file of this package: an upgrade (or an edit of a
    checkout) validates with other rules, so it makes every snapshot stale."""
    found: list[str] = []
    stack = [str(Path(__file__).parent)]
    while stack:
        for entry in os.scandir(stack.pop()):
            if entry.is_dir(follow_symlinks=False):
                if entry.name != "__pycache__":
                    stack.append(entry.path)
            elif entry.name.endswith((".py", ".md", ".toml")):
                st = entry.stat()
                found.append(f"{entry.path}:{st.st_size}:{st.st_mtime_ns}")
    return sha256("\n".join(sorted(found)).encode()).hexdigest()


def save(observed: Observed, facts: dict[str, Any]) -> None:
    """Write the snapshot beside the database (atomically: a reader sees the old or the new one); a
    data dir that cannot be written only means the next command takes the validated path too."""
    path = observed.data_dir / FILE
    tmp = path.with_name(f".{FILE}.{os.getpid()}")
    body = {"format": FORMAT, "stamp": observed.stamp, "source": str(observed.source) if observed.source else None,
            "data_dir": str(observed.data_dir), "folders": {k: str(v) for k, v in observed.folders.items()},
            **facts}
    try:
        tmp.write_text(json.dumps(body, indent=1))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


def load(observed: Observed) -> dict[str, Any] | None:
    """The facts of the snapshot taken of exactly these inputs, else None."""
    try:
        body = json.loads((observed.data_dir / FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(body, dict) or body.get("format") != FORMAT or body.get("stamp") != observed.stamp \
            or body.get("data_dir") != str(observed.data_dir) \
            or body.get("folders") != {k: str(v) for k, v in observed.folders.items()} \
            or body.get("source") != (str(observed.source) if observed.source else None):
        return None
    return body


def remember(observed: Observed, explicit: Path | None, rt: Any) -> None:
    """Write the snapshot of an open Runtime's validated load, when the light reader found the same
    files (`observed`, taken before the load) and they did not change during it."""
    from .definitions import broken_summary
    from .status import llm_parts

    config = rt.config
    if (config.source, config.data_dir, config.folders) != (observed.source, observed.data_dir, observed.folders):
        return
    again = observe(explicit)
    if again is None or again.stamp != observed.stamp:
        return
    http = config.file.http
    save(observed, {
        "http": {"enabled": http.enabled, "host": http.host, "port": http.port},   # the daemon's start (`_start`)
        "autonomy": config.agent.autonomy, "personality": config.agent.personality,
        "interval": config.file.pulse.interval, "checks": [c.name for c in rt.pulse.checks],
        "broken": broken_summary(rt.issues) if rt.issues else None, "warnings": [str(w) for w in config.warnings],
        "llm_key_env": config.file.llm.api_key_env, "llm_key_set": config.llm_key is not None,
        "llm": llm_parts(config)})
