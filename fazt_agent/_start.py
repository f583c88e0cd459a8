"""`fazt-agent run`: the daemon's start, its door open before the slow part of it.

Validating the configuration (pydantic: config.toml and every definition file) and importing the
engine take ~400 ms on a small server, most of a cold start. When the light reader finds every input
of the load byte for byte as the last validated load found it (`_snapshot`: the config file, each
definition folder, this package's source), that load's outcome is already known: the snapshot holds
where the control plane listens. The start then takes the data dir's lock, checks that the database
is this program's at this schema version (sqlite3), and opens the control plane's front door
(`web/front.py`) at once; /healthz answers 200 with `"ready": false` while a worker thread imports the
daemon and validates the load, as every start does. The daemon then adopts the door (its health,
`"ready": true`, and the full control plane for any other request, which waits until then), tells
systemd READY=1, and beats. A validation that fails anyway (an edit in between) is reported as always
and the door closes; a load that listens elsewhere closes it and opens its own.

With no snapshot of these inputs (the first start, the first after an edit or an upgrade, a
`${NAME}` reference, whose value the stamp must not hold) the start validates first and opens the
door after, as before; the daemon writes the snapshot once it runs, for the next start.

Imports neither pydantic nor aiosqlite before the door is open.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

from . import __version__, _snapshot
from ._lock import DataDirLock

log = logging.getLogger(__name__)


class Known(NamedTuple):
    """What the snapshot says of this start (where the control plane listens), the data dir's lock held."""

    http: dict[str, Any]
    lock: DataDirLock


def observe(explicit: Path | None) -> tuple[_snapshot.Observed | None, Known | None]:
    """The load's inputs now, and what the snapshot knows of them (the lock then held), or None.

    Raises:
        LockError: another daemon runs on the snapshot's data dir.
    """
    observed = _snapshot.observe(explicit)
    facts = _snapshot.load(observed) if observed is not None else None
    http = facts.get("http") if facts else None
    if observed is None or not isinstance(http, dict) or not isinstance(http.get("enabled"), bool) \
            or not isinstance(http.get("host"), str) or not isinstance(http.get("port"), int):
        return observed, None
    lock = DataDirLock(observed.data_dir)
    lock.acquire()
    try:
        from ._ready_db import open_ready

        open_ready(observed.data_dir).close()
    except Exception:   # NotReady (no database yet, one to migrate), a busy or broken one: the daemon says
        lock.release()
        return observed, None
    return observed, Known(http, lock)


async def serve(observed: _snapshot.Observed | None, known: Known | None, load: Callable[[], Any],
                ready: Callable[[Any], None]) -> int:
    """Run the daemon on `load()`'s validated config (`ready(config)` sets logging up before it runs),
    with the door open first when the snapshot `known` the load. Raises what `load` and `Daemon.run` raise."""
    started = time.monotonic()
    front: Any = None
    try:
        if known is not None and known.http["enabled"]:
            from .web.front import Front

            front = Front(lambda: _starting(started))
            await front.start(known.http["host"], known.http["port"], "[http] listen")
            loop, stopped = asyncio.get_running_loop(), []
            for sig in (signal.SIGTERM, signal.SIGINT):   # a stop while loading: no daemon starts, exit 0
                loop.add_signal_handler(sig, stopped.append, signal.Signals(sig).name)
            from concurrent.futures import ThreadPoolExecutor

            thread = ThreadPoolExecutor(1, thread_name_prefix="fazt-start")   # its own: it ends with the load
            switch = sys.getswitchinterval()
            sys.setswitchinterval(0.0005)   # the loop gets the GIL back from the loading thread within 0.5 ms, not 5
            try:
                config = await loop.run_in_executor(thread, _load, load)   # /healthz answers meanwhile
            finally:
                thread.shutdown(wait=False)
                sys.setswitchinterval(switch)
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            ready(config)
            if stopped:
                log.info("stopping (%s) before the daemon started", stopped[0])
                return 0
        else:
            config = load()
            ready(config)
        from .daemon import Daemon

        daemon = Daemon(config, lock=known.lock if known else None, front=front, observed=observed, started=started)
        front = None   # the daemon's now: it adopts it, or closes it when it fails to start
        return await daemon.run()
    finally:
        if front is not None:
            await front.stop()
        if known is not None:
            known.lock.release()   # a no-op once the daemon released it


def _load(load: Callable[[], Any]) -> Any:
    """The validated load, and the daemon's modules imported, in a worker thread."""
    config = load()
    from . import daemon  # noqa: F401  (imports the engine: ~150 ms the loop need not wait for)

    return config


def _starting(started: float) -> tuple[bool, dict[str, Any]]:
    """/healthz while the daemon validates and loads: up, its lock held and its inputs those of a load
    known good, not ready yet (the details `Daemon.health` gives once it runs, with `ready` false)."""
    return True, {"version": __version__, "uptime_s": round(time.monotonic() - started, 1), "ready": False,
                  "mcp_worker_pid": None, "last_beat": None}
