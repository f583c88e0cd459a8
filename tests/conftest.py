"""Shared fixtures: an ops folder made by the real `fazt-agent init`, and the real CLI."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from datetime import time as clock_time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator
from zoneinfo import ZoneInfo

import pytest
import tomli_w

if TYPE_CHECKING:
    from fazt_agent.testing import ScriptedLLM


_PORT_BLOCK = 2000  # ports per pytest-xdist worker, below the kernel's ephemeral range
_port_cursor = random.randrange(_PORT_BLOCK)  # two test runs at once start at different places


def free_port() -> int:
    """A loopback port nobody is listening on, never the same one twice in a test run.

    Asking the kernel for port 0 and closing the socket can hand out the same port again
    before its first user binds it (two pebble listeners met that way). Ports therefore come
    from a block of their own per xdist worker, below the ephemeral range (32768+) that the
    kernel uses for outgoing connections, and each is checked by binding it.
    """
    global _port_cursor
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    start = 20000 + (index % 6) * _PORT_BLOCK
    for _ in range(_PORT_BLOCK):
        port = start + _port_cursor % _PORT_BLOCK
        _port_cursor += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port in {start}..{start + _PORT_BLOCK - 1}")


# -- dates ---------------------------------------------------------------------------------
# A test never mixes a fixed date with the real clock: a fake clock starts from the real now, and
# files a test ages are aged from the clock the code under test reads (fake or real).

def next_local(after: datetime, weekday: int, hour: int, tz: str = "UTC") -> datetime:
    """The first `weekday` (0 = Monday) at `hour`:00 wall time in `tz` at or after `after`, in UTC.

    For the few tests whose outcome depends on the weekday or the hour (a maintenance window):
    their fake clock moves there from the real now instead of starting at a fixed date.
    """
    zone = ZoneInfo(tz)
    day = after.astimezone(zone).date()
    day += timedelta(days=(weekday - day.weekday()) % 7)
    while (at := datetime.combine(day, clock_time(hour), zone)) < after:
        day += timedelta(days=7)
    return at.astimezone(timezone.utc)


def age_file(path: Path, seconds: float = 0.0, now: datetime | None = None) -> None:
    """Make `path` `seconds` old by `now`: the clock the code under test reads (default: the wall
    clock, which the CLI and daemon subprocesses read too).

    A file just written carries the kernel's time, which a shifted clock (scripts/test-any-date)
    does not move: a test whose outcome depends on a file's age, even a fresh one, sets it.
    """
    then = (now or datetime.now(timezone.utc)).timestamp() - seconds
    os.utime(path, (then, then))


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FAZT_AGENT_", "NOTIFY_SOCKET", "WATCHDOG_", "ANTHROPIC_"))}
    env.update(extra)
    return env


@dataclass
class Ops:
    """An ops folder (config.toml + definition folders) and a CLI bound to it."""

    dir: Path

    @property
    def config(self) -> Path:
        return self.dir / "config.toml"

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    def cli(self, *args: str, env: dict[str, str] | None = None, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `fazt-agent --config CONFIG ARGS...` as a real subprocess."""
        return subprocess.run([sys.executable, "-m", "fazt_agent", "--config", str(self.config), *args],
                              capture_output=True, text=True, timeout=timeout, env=env or base_env(),
                              input=input, cwd=self.dir)

    def read_config(self) -> dict[str, Any]:
        return tomllib.loads(self.config.read_text())

    def set_config(self, section: str, key: str, value: Any) -> None:
        data = self.read_config()
        data.setdefault(section, {})[key] = value
        self.config.write_text(tomli_w.dumps(data))

    def write_pulse(self, name: str, text: str, *, only: bool = True) -> Path:
        """Write pulse/NAME.toml; with `only`, remove the other pulse files first."""
        folder = self.dir / "pulse"
        if only:
            for p in folder.glob("*.toml"):
                p.unlink()
        path = folder / f"{name}.toml"
        path.write_text(text)
        return path


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `fazt-agent ARGS...` with no implicit config."""
    return subprocess.run([sys.executable, "-m", "fazt_agent", *args], capture_output=True, text=True,
                          timeout=timeout, env=env or base_env(), cwd=cwd)


@pytest.fixture
def ops(tmp_path: Path) -> Ops:
    """A fresh ops folder from `fazt-agent init`, with a free control-plane port."""
    result = cli("init", str(tmp_path / "ops"))
    assert result.returncode == 0, result.stderr
    o = Ops(tmp_path / "ops")
    o.set_config("http", "listen", f"127.0.0.1:{free_port()}")
    return o


@pytest.fixture
def junk(ops: Ops, tmp_path: Path) -> Path:
    """A cleanup root watched by a dir_size check (warning at 20 KB), allowed by the policy."""
    root = tmp_path / "junk"
    root.mkdir()
    ops.write_pulse("junk", f'[[checks]]\nname = "junk"\nkind = "dir_size"\npath = "{root}"\nwarning = "20KB"\n')
    (ops.dir / "policies" / "local.toml").write_text(f'[constraints]\ncleanup_roots = ["{root}"]\n')
    return root


@pytest.fixture
def llm(ops: Ops) -> Iterator[ScriptedLLM]:
    """A scripted model on loopback (fazt_agent.testing), the one config.toml's [llm] base_url names."""
    from fazt_agent.testing import ScriptedLLM

    with ScriptedLLM() as server:
        ops.set_config("llm", "base_url", server.url)
        yield server
