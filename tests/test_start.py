"""`fazt-agent run` from the snapshot of the last validated load (`_start.py`): the control plane's
door opens before pydantic loads, /healthz says `ready: false` until the daemon adopts the door,
any other request waits for it; a stop while loading starts nothing; a load that listens elsewhere
closes the early door. Driven over real HTTP against the real Daemon on an ops folder from `init`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from typing import Any, Callable

import httpx
import pytest

from fazt_agent import _start
from fazt_agent._lock import DataDirLock
from fazt_agent.cli._common import load as validated_load
from fazt_agent.cli._common import state
from fazt_agent.web.front import Front

from _helpers import db_events, run_daemon, stop_daemon, wait_until
from conftest import Ops, base_env, free_port


def listen(ops: Ops) -> str:
    return str(ops.read_config()["http"]["listen"])


@pytest.fixture
def known(ops: Ops, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The snapshot a daemon's validated start wrote, as `run` finds it next time (its lock held)."""
    proc = run_daemon(ops)
    wait_until("the snapshot", lambda: (ops.data_dir / "cli-snapshot.json").exists() and
               "http" in json.loads((ops.data_dir / "cli-snapshot.json").read_text()))
    stop_daemon(proc)
    monkeypatch.setattr(state, "config_path", ops.config)   # what `validated_load` reads, as `--config` sets it
    observed, found = _start.observe(ops.config)
    assert found is not None and found.lock.held
    assert found.http == {"enabled": True, "host": "127.0.0.1", "port": int(listen(ops).rsplit(":", 1)[1])}
    yield observed, found
    found.lock.release()


def gated(gate: threading.Event) -> Callable[[], Any]:
    """The validated load, held until `gate` is set (the worker thread `serve` runs it in waits)."""
    def load() -> Any:
        assert gate.wait(30)
        return validated_load()
    return load


async def until(what: str, predicate: Callable[[], Any], timeout: float = 30) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def health(url: str) -> dict[str, Any] | None:
    try:
        async with httpx.AsyncClient() as client:
            reply = await client.get(f"{url}/healthz", timeout=2)
        return reply.json() if reply.status_code == 200 else None
    except httpx.HTTPError:
        return None


async def opened(known: Any, url: str) -> tuple[asyncio.Task[int], threading.Event, dict[str, Any]]:
    """`serve` started from the snapshot with its load held: its task, the gate, the early /healthz."""
    observed, found = known
    gate = threading.Event()
    served = asyncio.create_task(_start.serve(observed, found, gated(gate), lambda config: None))
    try:
        early = await until("/healthz from the early door", lambda: health(url))
    except BaseException:
        gate.set()
        raise
    assert early["ready"] is False
    return served, gate, early


async def test_the_door_answers_while_the_daemon_loads_and_the_rest_waits_for_it(ops: Ops, known: Any) -> None:
    url = f"http://{listen(ops)}"
    served, gate, early = await opened(known, url)
    try:
        assert early["status"] == "ok" and early["last_beat"] is None and early["mcp_worker_pid"] is None
        async with httpx.AsyncClient() as client:
            metrics = asyncio.create_task(client.get(f"{url}/metrics", timeout=30))
            await asyncio.sleep(0.5)
            assert not metrics.done()   # the control plane is the daemon's: it waits for it
            assert len(db_events(ops, "agent.started")) == 1   # the fixture's daemon's: this one has not started
            gate.set()
            assert (await metrics).status_code == 401   # the full control plane answered (no token: refused)
        later = await until("the daemon's /healthz", lambda: health(url))
        assert later["ready"] is True
        assert len(db_events(ops, "agent.started")) == 2   # the fixture's daemon and this one
    finally:
        gate.set()
        os.kill(os.getpid(), signal.SIGTERM)   # the daemon's own handler (installed before it adopted the door)
        assert await asyncio.wait_for(served, 20) == 0
    assert DataDirLock(ops.data_dir).holder() is None
    assert len(db_events(ops, "agent.stopped")) == 2


async def test_a_stop_while_loading_starts_no_daemon(ops: Ops, known: Any) -> None:
    url = f"http://{listen(ops)}"
    served, gate, _ = await opened(known, url)
    try:
        os.kill(os.getpid(), signal.SIGTERM)   # handled by `serve` while the load runs
        await asyncio.sleep(0.2)
        assert not served.done()   # the load is not interrupted, only its outcome discarded
    finally:
        gate.set()
    assert await asyncio.wait_for(served, 20) == 0
    assert len(db_events(ops, "agent.started")) == 1   # the fixture's daemon only
    assert DataDirLock(ops.data_dir).holder() is None and await health(url) is None


async def test_a_load_that_listens_elsewhere_closes_the_early_door(ops: Ops, known: Any) -> None:
    moved = f"127.0.0.1:{free_port()}"
    ops.set_config("http", "listen", moved)   # edited after the snapshot was checked
    old, new = f"http://{listen_of(known[1])}", f"http://{moved}"
    served, gate, _ = await opened(known, old)
    try:
        gate.set()
        assert (await until("the daemon's /healthz where the file says", lambda: health(new)))["ready"] is True
        assert await health(old) is None
    finally:
        gate.set()
        os.kill(os.getpid(), signal.SIGTERM)
        assert await asyncio.wait_for(served, 20) == 0


def listen_of(found: Any) -> str:
    return f"{found.http['host']}:{found.http['port']}"


async def test_a_door_never_adopted_refuses_what_waits_when_it_closes() -> None:
    door = Front(lambda: (True, {"ready": False}))
    await door.start("127.0.0.1", 0, "[http] listen")
    port = door.sock.getsockname()[1]   # type: ignore[union-attr]
    async with httpx.AsyncClient() as client:
        waiting = asyncio.create_task(client.get(f"http://127.0.0.1:{port}/x", timeout=30))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        assert (await client.get(f"http://127.0.0.1:{port}/healthz")).json() == {"status": "ok", "ready": False}
        await door.stop()
        assert (await waiting).status_code == 503


def test_run_opens_its_door_before_pydantic_loads(ops: Ops) -> None:
    """The real `fazt-agent run` (the snapshot written by a first run): what is imported when the
    validated load begins, the door open and answering."""
    proc = run_daemon(ops)
    wait_until("the snapshot", lambda: (ops.data_dir / "cli-snapshot.json").exists())
    stop_daemon(proc)
    code = (
        "import json, sys\n"
        "from fazt_agent import _start\n"
        "def load(load):\n"
        "    modules = sorted(sys.modules)\n"
        "    import httpx\n"
        f"    reply = httpx.get('http://{listen(ops)}/healthz', timeout=5).json()\n"
        "    print(json.dumps({'modules': modules, 'health': reply}))\n"
        "    raise SystemExit(0)\n"
        "_start._load = load\n"
        f"sys.argv = ['fazt-agent', '--config', {str(ops.config)!r}, 'run']\n"
        "from fazt_agent.cli import main\n"
        "main()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env=base_env(), cwd=ops.dir)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["health"]["ready"] is False
    heavy = {m.split(".")[0] for m in seen["modules"]} & {"pydantic", "pydantic_core", "aiosqlite", "psutil",
                                                         "httpx", "uvicorn", "typer", "rich"}
    assert not heavy, sorted(heavy)
    assert not {m for m in seen["modules"] if m.startswith(("fazt_agent.config", "fazt_agent.daemon",
                                                           "fazt_agent.runtime", "fazt_agent.definitions"))}
