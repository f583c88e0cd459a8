"""What the MCP tests share: a daemon serving /mcp, tokens from the real CLI, the `mcp` Python client
over stdio and streamable HTTP, and a cleanup root whose cleanup the policy asks about."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import httpx
import httpx2
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from conftest import Ops, base_env

DAY = 86400


def wait_until(what: str, predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def listen(ops: Ops) -> str:
    return ops.read_config()["http"]["listen"]


def mcp_url(ops: Ops) -> str:
    return f"http://{listen(ops)}/mcp"


def start_daemon(ops: Ops) -> subprocess.Popen[str]:
    """`fazt-agent run` as a subprocess, once /healthz answers."""
    proc = subprocess.Popen([sys.executable, "-m", "fazt_agent", "--config", str(ops.config), "run"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=base_env())

    def healthy() -> bool:
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"the daemon exited with {proc.returncode}: {err}")
        try:
            return httpx.get(f"http://{listen(ops)}/healthz", timeout=1).status_code in (200, 503)
        except httpx.HTTPError:
            return False

    wait_until("the daemon's /healthz", healthy)
    return proc


def stop_process(proc: subprocess.Popen[str], timeout: float = 10) -> tuple[int, float, str]:
    """SIGTERM; returns (exit code, seconds to stop, stderr)."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"the process did not stop within {timeout}s of SIGTERM: {err}") from None
    return proc.returncode, time.monotonic() - t0, err or ""


def create_token(ops: Ops, name: str, scope: str) -> str:
    result = ops.cli("tokens", "create", name, "--scope", scope)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def stdio_params(ops: Ops, **env: str) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, cwd=str(ops.dir), env=base_env(**env),
                                 args=["-m", "fazt_agent", "--config", str(ops.config), "mcp", "serve", "--stdio"])


@asynccontextmanager
async def stdio_client(ops: Ops, env: dict[str, str] | None = None, **kwargs: Any) -> AsyncIterator[Client]:
    """The `mcp` Python client talking to `fazt-agent mcp serve --stdio`."""
    async with Client(stdio_params(ops, **(env or {})), **kwargs) as client:
        yield client


@asynccontextmanager
async def http_client(url: str, token: str, **kwargs: Any) -> AsyncIterator[Client]:
    """The `mcp` Python client over streamable HTTP with a bearer token."""
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                                  timeout=httpx2.Timeout(30, read=120)) as http:
        async with Client(streamable_http_client(url, http_client=http), **kwargs) as client:
            yield client


def fill(root: Path, count: int, size: int = 4096, age_days: float = 30) -> list[Path]:
    files = []
    for i in range(count):
        path = root / f"old-{i:03}.log"
        path.write_bytes(b"x" * size)
        then = time.time() - age_days * DAY
        os.utime(path, (then, then))
        files.append(path)
    return files


def destructive_junk(ops: Ops, tmp_path: Path, files: int = 5) -> tuple[Path, list[Path]]:
    """A cleanup root the policy allows, holding `files` old files whose cleanup is destructive
    (above 1 KB), at medium autonomy: the policy asks before cleaning it."""
    root = tmp_path / "junk"
    root.mkdir()
    (ops.dir / "policies" / "local.toml").write_text(f'[constraints]\ncleanup_roots = ["{root}"]\n')
    (ops.dir / "kernel" / "actions.toml").write_text('[cleanup]\ndestructive_above = "1KB"\n')
    ops.set_config("agent", "autonomy", "medium")
    return root, fill(root, files)


def cleanup_args(root: Path) -> dict[str, Any]:
    return {"name": "cleanup", "args": {"root": str(root), "older_than": "7d"}}


def events(ops: Ops, type_glob: str = "*") -> list[dict[str, Any]]:
    result = ops.cli("events", "list", "--type", type_glob, "--limit", "1000", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
