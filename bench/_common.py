"""What the benchmark scripts share: a throw-away ops folder, a free port, statistics, output.

Every script makes its own ops folder with the real `fazt-agent init` inside a temporary
directory and points `[http] listen` at a free loopback port, so a benchmark never touches
the owner's data or a port that is in use.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import tomli_w

MB = 1024 * 1024


def _byte_compile() -> None:
    """Compile fazt_agent's sources to `__pycache__` once, before anything is measured.

    An installed fazt-agent (a wheel, a package) has its bytecode; an editable checkout gets it at
    its first run, unless PYTHONDONTWRITEBYTECODE is set (as on some build machines), and then
    every process of a benchmark would compile ~60 modules again (~100 ms of a command's start)."""
    import compileall

    import fazt_agent

    compileall.compile_dir(str(Path(fazt_agent.__file__).parent), quiet=1)


_byte_compile()


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env() -> dict[str, str]:
    """The environment without anything that would redirect the daemon (config, systemd)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("FAZT_AGENT_", "NOTIFY_SOCKET", "WATCHDOG_"))}


@dataclass(frozen=True)
class Ops:
    dir: Path
    port: int

    @property
    def config(self) -> Path:
        return self.dir / "config.toml"

    @property
    def db(self) -> Path:
        return self.dir / "data" / "fazt-agent.db"


def make_ops(parent: Path, *, pulse_interval: str | None = None) -> Ops:
    """`fazt-agent init PARENT/ops`, then a free port in `[http] listen` (and the pulse interval).

    Raises:
        RuntimeError: `fazt-agent init` failed (its stderr is in the message).
    """
    directory = parent / "ops"
    done = subprocess.run([sys.executable, "-m", "fazt_agent", "init", str(directory)],
                          capture_output=True, text=True, timeout=60, env=clean_env(), cwd=parent)
    if done.returncode != 0:
        raise RuntimeError(f"fazt-agent init failed ({done.returncode}): {done.stderr.strip()}")
    port = free_port()
    config = directory / "config.toml"
    data = tomllib.loads(config.read_text())
    data.setdefault("http", {})["listen"] = f"127.0.0.1:{port}"
    if pulse_interval is not None:
        data.setdefault("pulse", {})["interval"] = pulse_interval
    config.write_text(tomli_w.dumps(data))
    return Ops(directory, port)


def terminate(proc: subprocess.Popen[Any], timeout: float = 15) -> None:
    """SIGTERM and wait; SIGKILL after `timeout` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between the closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def stats(values: Sequence[float]) -> dict[str, float]:
    """n, median, p95, min, max and mean of a sample (NaN for an empty one)."""
    if not values:
        return {"n": 0, "median": math.nan, "p95": math.nan, "min": math.nan, "max": math.nan, "mean": math.nan}
    return {"n": len(values), "median": percentile(values, 50), "p95": percentile(values, 95),
            "min": min(values), "max": max(values), "mean": sum(values) / len(values)}


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def print_json(data: dict[str, Any]) -> None:
    """One JSON object on stdout, floats rounded and NaN written as null."""
    sys.stdout.write(json.dumps(round_floats(data), indent=2, allow_nan=False) + "\n")


def round_floats(data: Any, digits: int = 3) -> Any:
    """`data` with every float rounded (and NaN as None), ready for --json."""
    if isinstance(data, float):
        return None if math.isnan(data) else round(data, digits)
    if isinstance(data, dict):
        return {k: round_floats(v, digits) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [round_floats(v, digits) for v in data]
    return data
