"""Plain helpers the tests share (the fixtures and `Ops` are in conftest.py): waiting for something,
reading what the CLI or a daemon recorded, starting and stopping a daemon, a browser's folders, old
files for a cleanup, and a clock a test moves by hand.

Where the copies these replace differed (a poll interval, a timeout, a check on the exit code), the
difference is a parameter, and each test passes what its own copy did."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing, contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import httpx

from conftest import Ops, age_file, base_env

DAY = 86400


def wait_until(what: str, predicate: Callable[[], Any], timeout: float = 30, *, interval: float = 0.05) -> Any:
    """What `predicate` returns once it is true, asked every `interval` s; fails after `timeout` s.

    It is asked once more after the deadline: a test whose condition holds by then does not fail
    because the last sleep crossed it."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


# -- what the CLI shows ------------------------------------------------------------------------

def events(ops: Ops, type_glob: str = "*") -> list[dict[str, Any]]:
    """The newest 1000 events whose type matches `type_glob`, oldest first, as `events list --json` shows them."""
    result = ops.cli("events", "list", "--type", type_glob, "--limit", "1000", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def event_data(ops: Ops, type_glob: str = "*") -> list[dict[str, Any]]:
    """The data of `events(ops, type_glob)`, oldest first."""
    return [e["data"] for e in events(ops, type_glob)]


def incidents(ops: Ops) -> list[dict[str, Any]]:
    """Every incident, open or resolved, as `incidents list --all --json` shows them."""
    result = ops.cli("incidents", "list", "--all", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def halt_list(ops: Ops) -> list[dict[str, Any]]:
    """Every halt, by id, as `halts list --all --json` shows them."""
    result = ops.cli("halts", "list", "--all", "--json")
    assert result.returncode == 0, result.stderr
    return sorted(json.loads(result.stdout), key=lambda h: h["id"])


# -- what a running daemon recorded ------------------------------------------------------------

def db_rows(ops: Ops, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    """Rows of the agent's database, opened read-only (a daemon may be writing it); none while the
    daemon is still creating it."""
    try:
        with closing(sqlite3.connect(f"file:{ops.data_dir / 'fazt-agent.db'}?mode=ro", uri=True)) as db:
            db.row_factory = sqlite3.Row
            return db.execute(sql, params).fetchall()
    except sqlite3.OperationalError:   # no database, or no tables yet
        return []


def db_events(ops: Ops, type_: str) -> list[dict[str, Any]]:
    """The data of the events of type `type_` (exactly), oldest first, from the database."""
    rows = db_rows(ops, "SELECT data FROM events WHERE type = ? ORDER BY id", (type_,))
    return [json.loads(r["data"]) for r in rows]


def halt_row(ops: Ops, halt_id: int) -> dict[str, Any]:
    """Halt `halt_id`'s row in the database."""
    [row] = db_rows(ops, "SELECT * FROM halts WHERE id = ?", (halt_id,))
    return dict(row)


def answered(ops: Ops, halt_id: int, *, interval: float = 0.05) -> dict[str, Any]:
    """Halt `halt_id`'s row once it is no longer pending."""
    return wait_until(f"halt #{halt_id} answered",
                      lambda: (h := halt_row(ops, halt_id))["status"] != "pending" and h, interval=interval)


# -- a daemon ----------------------------------------------------------------------------------

def base(ops: Ops) -> str:
    """The control plane's URL."""
    return f"http://{ops.read_config()['http']['listen']}"


def csrf_of(page: httpx.Response) -> str:
    """The CSRF token of a page's form."""
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]


def run_daemon(ops: Ops, env: dict[str, str] | None = None, *, stdout: int | IO[Any] = subprocess.DEVNULL,
               stderr: int | IO[Any] = subprocess.PIPE) -> subprocess.Popen[str]:
    """`fazt-agent run` as a subprocess, its log (stderr) on a pipe unless told; it may not be up yet."""
    return subprocess.Popen([sys.executable, "-m", "fazt_agent", "--config", str(ops.config), "run"],
                            stdout=stdout, stderr=stderr, text=True, env=env or base_env())


def stop_daemon(proc: subprocess.Popen[str], timeout: float = 15, *, check: bool = True,
                must_stop: bool = True) -> str:
    """SIGTERM, then the daemon's log (its stderr, when piped) once it exited; with `check` it must
    have exited 0. One still running after `timeout` s is killed, and with `must_stop` fails the test
    (a fixture's teardown that only cleans up passes must_stop=False)."""
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        if must_stop:
            raise AssertionError(f"the daemon did not stop within {timeout:g}s of SIGTERM:\n{err}") from None
    if check:
        assert proc.returncode == 0, err
    return err or ""


@contextmanager
def web_daemon(ops: Ops, log: Path, halts: int, *, clean_log: bool = False) -> Iterator[subprocess.Popen[str]]:
    """`fazt-agent run` with its log in the file `log` (the log channel: notifications go there);
    yields once /healthz answers and `halts` halts exist, then stops it, which must exit 0; with
    `clean_log`, its log must hold no traceback either."""
    with log.open("w") as err:
        proc = run_daemon(ops, stderr=err)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the daemon exited with {proc.returncode}: {log.read_text()}")
        try:
            return httpx.get(f"{base(ops)}/healthz", timeout=1).status_code in (200, 503)
        except httpx.HTTPError:
            return False

    try:
        wait_until("the daemon's /healthz", up)
        wait_until(f"{halts} halts", lambda: len(halt_list(ops)) >= halts)
        yield proc
    finally:
        if proc.poll() is None:
            stop_daemon(proc, 10, check=False)
            assert proc.returncode == 0, log.read_text()
        if clean_log:
            assert "Traceback" not in log.read_text(), log.read_text()


# -- a browser ---------------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"   # Debian's, driven by Playwright (which downloads nothing)


def browser_dirs(tmp_path: Path, monkeypatch: Any) -> tuple[Path, Path]:
    """(screenshots, browsers): a folder in the test's tmp dir for its screenshots, and Playwright's
    own download folder (PLAYWRIGHT_BROWSERS_PATH), which stays empty."""
    shots, browsers = tmp_path / "screenshots", tmp_path / "no-browsers"
    shots.mkdir()
    browsers.mkdir()
    monkeypatch.setenv("PLAYWRIGHT_BROWSERS_PATH", str(browsers))
    return shots, browsers


def fits(page: Any) -> bool:
    """No sideways scrolling: the page is as wide as the screen."""
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


# -- files for a cleanup -----------------------------------------------------------------------

def fill(root: Path, count: int, *, size: int = 4096, age_days: float = 30, prefix: str = "old",
         clock: Any = None) -> list[Path]:
    """`count` files PREFIX-NNN.log of `size` bytes in `root`, `age_days` old by `clock` (the one the
    cleanup reads: a fake clock in-process; default, the wall clock the CLI and daemon read)."""
    files = [root / f"{prefix}-{i:03}.log" for i in range(count)]
    for path in files:
        path.write_bytes(b"x" * size)
        age_file(path, age_days * DAY, clock.now() if clock is not None else None)
    return files


# -- an engine in-process ----------------------------------------------------------------------

class FakeClock:
    """A clock a test moves by hand, from `start` (default: the real now; a fixed date mixed with the
    real clock would be a time bomb). Its monotonic time starts at `mono` and moves with it; with
    mono=None it is the wall time's timestamp (so setting `t` moves it too)."""

    def __init__(self, start: datetime | None = None, *, mono: float | None = 1000.0) -> None:
        self.t = start or datetime.now(timezone.utc)
        self.mono = mono

    def now(self) -> datetime:
        return self.t

    def monotonic(self) -> float:
        return self.t.timestamp() if self.mono is None else self.mono

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)
        if self.mono is not None:
            self.mono += seconds

    def advance_to(self, when: datetime) -> None:
        self.advance((when - self.t).total_seconds())


async def turn(engine: Any) -> None:
    """One beat of every check, the engine's decisions on it, then its sweep (reminders, expiries, retries)."""
    await engine.on_beat(await engine.rt.pulse.beat(everything=True))
    await engine.sweep()


async def types(of: Any, type_glob: str) -> list[dict[str, Any]]:
    """The data of the newest 1000 events of `type_glob`, oldest first, in the log of an Engine or a Runtime."""
    rt = getattr(of, "rt", of)
    return [e.data for e in reversed(await rt.events.list(type_glob=type_glob, limit=1000))]


async def logged(of: Any, type_glob: str) -> list[tuple[str, dict[str, Any]]]:
    """(type, data) of the first events of `type_glob`, oldest first, in `of.events` (a HaltStore's,
    a Notifications' log)."""
    return [(e.type, e.data) for e in await of.events.list(type_glob=type_glob, newest_first=False)]
