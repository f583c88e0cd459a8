"""The client config: `~/.fazt/config.json`, exactly the documented Fazt shape

    {"version": 1, "default_server": "zyt",
     "servers": {"zyt": {"url": "https://zyt.app", "token": "fzt_..."}}}

The folder is 0700 and the file 0600 (it holds bearer tokens); writes go to a temporary file in
the same folder, fsynced, then renamed over the old one, so a crash leaves the old file or the
new one, never half of one. `$HOME` decides where it lives (tests use a temporary HOME).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import FaztAgentError

VERSION = 1
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
ADD_HINT = "run `fazt-agent servers add NAME --url URL --token TOKEN`"


class FleetError(FaztAgentError):
    """The client config is missing, malformed, or names no usable server."""


def config_path() -> Path:
    """`$HOME/.fazt/config.json` ($HOME first, so a test's HOME wins over the password database)."""
    home = os.environ.get("HOME") or str(Path.home())
    return Path(home) / ".fazt" / "config.json"


@dataclass(frozen=True)
class Server:
    name: str
    url: str
    token: str

    @property
    def base(self) -> str:
        """The URL without a trailing slash: `/mcp`, `/metrics` are appended to it."""
        return self.url.rstrip("/")


@dataclass
class ClientConfig:
    path: Path
    servers: dict[str, Server] = field(default_factory=dict)
    default: str | None = None

    @classmethod
    def load(cls, path: Path | None = None) -> ClientConfig:
        """The config at `path` (default `config_path()`); an absent file is an empty config.

        Raises:
            FleetError: the file is not JSON or not the documented shape (the message says where).
        """
        path = path or config_path()
        try:
            text = path.read_text()
        except FileNotFoundError:
            return cls(path)
        except OSError as e:
            raise FleetError(f"{path}: cannot read: {e.strerror or e}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise FleetError(f"{path}: not valid JSON (line {e.lineno}): {e.msg}") from None
        return cls._parse(path, data)

    @classmethod
    def _parse(cls, path: Path, data: Any) -> ClientConfig:
        if not isinstance(data, dict):
            raise FleetError(f"{path}: expected a JSON object with \"version\" and \"servers\"")
        if data.get("version", VERSION) != VERSION:
            raise FleetError(f"{path}:version: {data.get('version')!r} is not supported (expected {VERSION})")
        raw = data.get("servers", {})
        if not isinstance(raw, dict):
            raise FleetError(f"{path}:servers: expected an object of NAME: {{url, token}}")
        servers = {}
        for name, entry in raw.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("url"), str) \
                    or not isinstance(entry.get("token"), str):
                raise FleetError(f"{path}:servers.{name}: expected {{\"url\": \"...\", \"token\": \"fzt_...\"}}")
            servers[name] = Server(name, entry["url"], entry["token"])
        default = data.get("default_server")
        if default is not None and not isinstance(default, str):
            raise FleetError(f"{path}:default_server: expected a server name")
        return cls(path, servers, default or None)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"version": VERSION}
        if self.default:
            data["default_server"] = self.default
        data["servers"] = {s.name: {"url": s.url, "token": s.token} for s in self.servers.values()}
        return data

    def save(self) -> None:
        """Write atomically: folder 0700, file 0600 from its creation (never readable by others)."""
        folder = self.path.parent
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        fd, tmp = tempfile.mkstemp(prefix=".config.", suffix=".tmp", dir=folder)  # mkstemp: mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self.to_json(), indent=2) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)

    def add(self, name: str, url: str, token: str) -> bool:
        """Add or replace `name`; returns whether it replaced one. The first server becomes the default."""
        check_name(name)
        check_url(url)
        if not token.strip():
            raise FleetError("the token is empty (create one on the server: fazt-agent tokens create NAME --scope read)")
        replaced = name in self.servers
        self.servers[name] = Server(name, url, token.strip())
        if self.default is None and len(self.servers) == 1:
            self.default = name
        return replaced

    def remove(self, name: str) -> None:
        self.get(name)
        del self.servers[name]
        if self.default == name:
            self.default = None

    def set_default(self, name: str) -> None:
        self.get(name)
        self.default = name

    def get(self, name: str) -> Server:
        try:
            return self.servers[name]
        except KeyError:
            known = ", ".join(sorted(self.servers)) or "none"
            raise FleetError(f"no server named {name!r} in {self.path} (configured: {known})") from None

    def resolve(self, name: str | None) -> Server:
        """The server a command means: the one named; else the only one; else the default.

        Raises:
            FleetError: none configured ("run `fazt-agent servers add`"), or several and no default.
        """
        if name:
            return self.get(name)
        if not self.servers:
            raise FleetError(f"no server configured in {self.path}: {ADD_HINT}")
        if len(self.servers) == 1:
            return next(iter(self.servers.values()))
        if self.default and self.default in self.servers:
            return self.servers[self.default]
        raise FleetError(f"{len(self.servers)} servers are configured and none is the default: specify --server "
                         "NAME or set a default (fazt-agent servers default NAME)")


def check_name(name: str) -> None:
    if not NAME.match(name):
        raise FleetError(f"server name {name!r}: use letters, digits, '.', '_' or '-' (at most 63, "
                         "starting with a letter or digit)")


def check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FleetError(f"--url {url!r}: expected http(s)://HOST[:PORT], the agent's control plane "
                         "(e.g. https://zyt.app or http://127.0.0.1:7070)")
    if parts.query or parts.fragment:
        raise FleetError(f"--url {url!r}: no query or fragment, just the control plane's address")
