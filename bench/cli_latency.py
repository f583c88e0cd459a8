"""The command line as a process, beside native tools in the same run: `status`, `events list`,
`halts list`, `approve`, and the daemon's cold start to its first /healthz 200.

Setup: an ops folder from `fazt-agent init` (the shipped `system` and `disk` checks), at medium
autonomy with a cleanup root the policy asks about (`[constraints] cleanup_roots`, cleanup
destructive above 1 KB, as the tests' `destructive_junk`); one `fazt-agent beat` so `status` has
results, and `--pending` (3) halts left pending for `halts list`. Then the daemon is started
(`fazt-agent run`, as systemd keeps it) and `--runs` (20) rounds run; each runs every command
below once, as a process, in the same order, so a neighbour's load hits them alike; wall time from
spawn to exit and the child's CPU time (user + system):

    python -c pass                                  the interpreter alone
    python -c "import asyncio, sqlite3 + one pydantic model"   the floor of the validated path (below)
    python -c "import sqlite3, tomllib, json, _sha256"  the floor of the light read path (below)
    monit status                                    Debian's Monit, its daemon running on a unix
                                                    socket with a system and a filesystem check
    fazt-agent status
    fazt-agent events list --limit 50
    fazt-agent halts list
    fazt-agent approve N                            a fresh halt each round: before the timing, its
                                                    files are refilled and `actions run cleanup`
                                                    asks; approving runs the cleanup, in the
                                                    daemon (`answer/local.py`)

Then the daemon is stopped and `--runs` more rounds time `approve, no daemon running`: the command
answers in its own process, as it does whenever no daemon (or one that read other files) runs.

The first floor row is what a command that validates the config (pydantic) and opens the Runtime
(asyncio, aiosqlite) pays before its own code: `approve` with no daemon does (the answer, the
plan's re-check and run, the events are the Runtime's, `Executor.answer`). The second is what
`status`, `events list`, `halts list` and `approve` through the daemon pay (`fazt_agent/cli/_light.py`:
sqlite3, tomllib, json, and the snapshot the last validated command left, `fazt_agent/_snapshot.py`);
`ask` below runs a validated command before every round, so the reads are measured as an owner
meets them between two edits (the first read after an edit of the config or a definition is
validated, as before).

Cold start, `--starts` (10) times each, alternating: `fazt-agent run` on the same ops folder
from spawn to the first `GET /healthz` 200, and on the same start to its `READY=1` to systemd (a
NOTIFY_SOCKET of the benchmark's, read once the 200 came; then SIGTERM and wait): the door opens
from the snapshot of the last validated load before the daemon validates and loads
(`fazt_agent/_start.py`; /healthz says `"ready": false` meanwhile), READY=1 once the daemon runs.
Then a start with the snapshot removed, as the first start after an edit of the config or a
definition: it validates, loads, then listens. Beside Debian's
`prometheus-node-exporter --web.listen-address 127.0.0.1:PORT` to its first `/metrics` 200.

Bytecode: when PYTHONDONTWRITEBYTECODE is set (as in some development shells), every process
would compile the package from source; an installed package has its .pyc files. The children
get PYTHONPYCACHEPREFIX in the temporary directory instead (one warm-up run fills it), so the
source tree is not written to.

Targets: every command's median <= 100 ms, the cold start's (its first /healthz 200) median <= 200 ms. Exit code 0 when
every target is met, 1 when one is missed or an anchor is missing (scripts/bench-deps installs
Monit and node_exporter), 2 for bad arguments. `--agent-src DIR` runs `init` and every
fazt-agent process from another source tree (`git archive COMMIT | tar -x -C DIR`), to measure an
older version with the same script.

    python bench/cli_latency.py [--runs 20] [--starts 10] [--pending 3] [--agent-src DIR] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import Ops, clean_env, free_port, make_ops, print_json, stats, terminate, verdict

COMMAND_TARGET_MS = 100.0
START_TARGET_MS = 200.0
START_TIMEOUT = 30.0
FLOOR = ("import asyncio, sqlite3\nfrom pydantic import BaseModel\n\n"
         "class Model(BaseModel):\n    x: int = 0\n")
LIGHT_FLOOR = "import sqlite3, tomllib, json, _sha256"
COMMANDS = ("status", "events list", "halts list", "approve")
NO_DAEMON = "approve, no daemon running"
START = "fazt-agent run → /healthz"                     # its door open (`_start.py`), `ready` false or true
READY = "fazt-agent run → READY=1"                      # the same starts: the daemon running (sd_notify)
NO_SNAPSHOT = "fazt-agent run → /healthz, no snapshot"  # the first start after an edit: validated, then listening
NO_SNAPSHOT_READY = "fazt-agent run → READY=1, no snapshot"


class BenchError(Exception):
    """A command failed, an anchor is missing or did not start; the message says which."""


def child_env(work: Path, agent_src: Path | None) -> dict[str, str]:
    env = clean_env()
    if env.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    if agent_src is not None:
        env["PYTHONPATH"] = str(agent_src)
    return env


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, int, str]:
    """(wall ms, CPU ms, exit code, stdout) of one process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            env=env, cwd=cwd)
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = (time.perf_counter() - t0) * 1000
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, (usage.ru_utime + usage.ru_stime) * 1000, proc.returncode, out.decode(errors="replace")


# -- setup -------------------------------------------------------------------------------------

def prepare(ops: Ops, junk: Path) -> None:
    """Medium autonomy and a cleanup root the policy asks about (as tests/_mcp.py destructive_junk)."""
    (ops.dir / "policies" / "local.toml").write_text(f'[constraints]\ncleanup_roots = ["{junk.parent}"]\n')
    (ops.dir / "kernel" / "actions.toml").write_text('[cleanup]\ndestructive_above = "1KB"\n')
    text = ops.config.read_text()
    ops.config.write_text(re.sub(r'(?m)^autonomy = "low"$', 'autonomy = "medium"', text, count=1))


def fill(root: Path, files: int = 3) -> None:
    """`files` 4 KiB files dated 30 days back: old enough for `older_than = "7d"`, destructive."""
    root.mkdir(parents=True, exist_ok=True)
    old = time.time() - 30 * 86400
    for i in range(files):
        path = root / f"old-{i}.log"
        path.write_bytes(b"x" * 4096)
        os.utime(path, (old, old))


def ask(cli: list[str], env: dict[str, str], cwd: Path, root: Path) -> int:
    """A fresh pending halt: `actions run cleanup` on `root`, which the policy asks about."""
    fill(root)
    done = subprocess.run([*cli, "actions", "run", "cleanup", "--arg", f"root={root}", "--arg", "older_than=7d",
                           "--json"], capture_output=True, text=True, env=env, cwd=cwd)
    try:
        halt = json.loads(done.stdout).get("halt_id")
    except json.JSONDecodeError:
        halt = None
    if not halt:
        raise BenchError(f"`actions run cleanup` opened no halt (exit {done.returncode}): "
                         f"{done.stdout.strip()[-300:]} {done.stderr.strip()[-300:]}")
    return int(halt)


class Monit:
    """Debian's Monit in the foreground, answering `monit status` on a unix socket."""

    def __init__(self, work: Path):
        self.binary = shutil.which("monit") or "/usr/bin/monit"
        if not os.path.exists(self.binary):
            raise BenchError("monit is not installed: run scripts/bench-deps")
        work.mkdir()
        self.rc = work / "monitrc"
        self.rc.write_text(
            f"set daemon 60\nset logfile {work / 'monit.log'}\nset pidfile {work / 'monit.pid'}\n"
            f"set idfile {work / 'monit.id'}\nset statefile {work / 'monit.state'}\n"
            f"set httpd unixsocket {work / 'monit.sock'}\n  allow localhost\n\n"
            "check system localhost\ncheck filesystem rootfs with path /\n")
        self.rc.chmod(0o600)
        self.proc = subprocess.Popen([self.binary, "-I", "-c", str(self.rc)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while subprocess.run(self.status_argv, capture_output=True).returncode != 0:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise BenchError("monit did not answer `monit status` within 10 s")
            time.sleep(0.1)

    @property
    def status_argv(self) -> list[str]:
        return [self.binary, "-c", str(self.rc), "status"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


# -- start-up ----------------------------------------------------------------------------------

def first_200(argv: list[str], port: int, path: str, env: dict[str, str], cwd: Path, *,
              ready: bool = False) -> tuple[float, float]:
    """Milliseconds from spawn to the first 200 on `path`, and with `ready`, to the daemon's
    `READY=1` to systemd (its NOTIFY_SOCKET is a datagram socket here, read once the 200 came:
    nothing polls the daemon while it loads); the process is stopped afterwards."""
    with tempfile.TemporaryDirectory(prefix="fazt-notify-") as tmp:
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with notify:
            if ready:
                notify.bind(f"{tmp}/notify")
                env = {**env, "NOTIFY_SOCKET": f"{tmp}/notify"}
            t0 = time.perf_counter()
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    stdin=subprocess.DEVNULL, env=env, cwd=cwd)
            try:
                first = _poll_200(proc, port, path, t0)
                if not ready:
                    return first, first
                notify.settimeout(max(0.1, START_TIMEOUT - (time.perf_counter() - t0)))
                try:
                    while b"READY=1" not in notify.recv(4096):
                        pass
                except TimeoutError:
                    raise BenchError(f"no READY=1 within {START_TIMEOUT:g}s") from None
                return first, (time.perf_counter() - t0) * 1000
            finally:
                terminate(proc)


def _poll_200(proc: subprocess.Popen[bytes], port: int, path: str, t0: float) -> float:
    while time.perf_counter() - t0 < START_TIMEOUT:
        if proc.poll() is not None:
            raise BenchError(f"{proc.args!r} exited with {proc.returncode} before {path} answered")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return (time.perf_counter() - t0) * 1000
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.002)
    raise BenchError(f"{path} did not answer 200 within {START_TIMEOUT:g}s")


def running_daemon(argv: list[str], ops: Ops, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`fazt-agent run` on `ops`, once /healthz answers 200 and its local socket is there (a version
    without one, `--agent-src` of an older tree, once /healthz answers and 5 s passed)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            env=env, cwd=ops.dir)
    sock = ops.dir / "data" / "agent.sock"
    healthy = 0.0
    while time.perf_counter() - t0 < START_TIMEOUT:
        if proc.poll() is not None:
            raise BenchError(f"the daemon exited with {proc.returncode}")
        conn = http.client.HTTPConnection("127.0.0.1", ops.port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                healthy = healthy or time.perf_counter()
                if sock.exists() or time.perf_counter() - healthy > 5:
                    return proc
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.05)
    terminate(proc)
    raise BenchError(f"the daemon did not answer /healthz within {START_TIMEOUT:g}s")


def rounds(name: str, command: list[str], cli: list[str], env: dict[str, str], ops: Ops, junk: Path, pending: int,
           wall: dict[str, list[float]], cpu: dict[str, list[float]]) -> None:
    """One timed run of `name` (`approve` and NO_DAEMON: a fresh halt, asked for before the timing)."""
    if name in ("approve", NO_DAEMON):
        command = [*cli, "approve", str(ask(cli, env, ops.dir, junk / "approve"))]
    w, c, code, out = timed(command, env, ops.dir)
    if code != 0:
        raise BenchError(f"`{' '.join(command[-4:])}` exited with {code}: {out.strip()[-300:]}")
    if name in ("approve", NO_DAEMON) and "done" not in out:
        raise BenchError(f"approve did not run the cleanup: {out.strip()}")
    if name == "halts list" and out.count("\n") < pending:
        raise BenchError(f"halts list shows fewer than {pending} halts: {out.strip()}")
    wall[name].append(w)
    cpu[name].append(c)


def node_exporter_argv(port: int) -> list[str]:
    binary = shutil.which("prometheus-node-exporter") or "/usr/bin/prometheus-node-exporter"
    if not os.path.exists(binary):
        raise BenchError("prometheus-node-exporter is not installed: run scripts/bench-deps")
    return [binary, f"--web.listen-address=127.0.0.1:{port}"]


# -- the run -----------------------------------------------------------------------------------

def run(runs: int, starts: int, pending: int, agent_src: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fazt-bench-cli-") as tmp:
        work = Path(tmp)
        env = child_env(work, agent_src)
        if agent_src is not None:   # `make_ops` runs this tree's `init`: the other tree's instead
            os.environ["PYTHONPATH"] = str(agent_src)
        ops = make_ops(work)
        junk = work / "junk"
        prepare(ops, junk / "approve")
        cli = [sys.executable, "-m", "fazt_agent", "--config", str(ops.config)]
        beat = subprocess.run([*cli, "beat"], capture_output=True, text=True, env=env, cwd=ops.dir)
        if beat.returncode not in (0, 1):
            raise BenchError(f"`fazt-agent beat` failed ({beat.returncode}): {beat.stderr.strip()[-300:]}")
        for i in range(pending):
            ask(cli, env, ops.dir, junk / f"pending-{i}")
        monit = Monit(work / "monit")
        argv = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "floor: asyncio, sqlite3, pydantic": [sys.executable, "-c", FLOOR],
            "floor: sqlite3, tomllib, json, sha256": [sys.executable, "-c", LIGHT_FLOOR],
            "monit status": monit.status_argv,
            "status": [*cli, "status"],
            "events list": [*cli, "events", "list", "--limit", "50"],
            "halts list": [*cli, "halts", "list"],
            "approve": [],
        }
        wall: dict[str, list[float]] = {name: [] for name in [*argv, NO_DAEMON]}
        cpu: dict[str, list[float]] = {name: [] for name in wall}
        try:
            daemon = running_daemon([*cli, "run"], ops, env)   # as systemd keeps it: `approve` goes through it
            try:
                for name, command in argv.items():   # warm-up: bytecode written, page cache filled
                    if command:
                        timed(command, env, ops.dir)
                for _ in range(runs):
                    for name in argv:
                        rounds(name, argv[name], cli, env, ops, junk, pending, wall, cpu)
            finally:
                terminate(daemon)
            for _ in range(runs):   # no daemon: the command answers in its own process (validated path)
                rounds(NO_DAEMON, [], cli, env, ops, junk, pending, wall, cpu)
        finally:
            monit.stop()

        start_ms: dict[str, list[float]] = {START: [], READY: [], NO_SNAPSHOT: [], NO_SNAPSHOT_READY: [],
                                            "node_exporter → /metrics": []}
        snapshot = ops.dir / "data" / "cli-snapshot.json"
        for _ in range(starts):
            healthz, ready = first_200([*cli, "run"], ops.port, "/healthz", env, ops.dir, ready=True)
            start_ms[START].append(healthz)
            start_ms[READY].append(ready)
            snapshot.unlink(missing_ok=True)   # as after an edit: this start validates before it listens
            healthz, ready = first_200([*cli, "run"], ops.port, "/healthz", env, ops.dir, ready=True)
            start_ms[NO_SNAPSHOT].append(healthz)
            start_ms[NO_SNAPSHOT_READY].append(ready)
            port = free_port()
            start_ms["node_exporter → /metrics"].append(
                first_200(node_exporter_argv(port), port, "/metrics", env, ops.dir)[0])
    commands = {name: {"wall_ms": stats(wall[name]), "cpu_ms": stats(cpu[name])} for name in wall}
    met = {name: commands[name]["wall_ms"]["median"] <= COMMAND_TARGET_MS for name in COMMANDS}
    met["cold start"] = stats(start_ms[START])["median"] <= START_TARGET_MS
    return {"bench": "cli_latency", "runs": runs, "starts": starts, "pending_halts": pending,
            "agent_src": str(agent_src) if agent_src else None, "commands": commands,
            "starts_ms": {name: stats(v) for name, v in start_ms.items()},
            "targets": {"command_median_ms": COMMAND_TARGET_MS, "start_median_ms": START_TARGET_MS},
            "met": met}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="fazt-agent's command line as processes, beside native tools.")
    parser.add_argument("--runs", type=int, default=20, help="rounds of every command (default 20)")
    parser.add_argument("--starts", type=int, default=10, help="cold starts of each daemon (default 10)")
    parser.add_argument("--pending", type=int, default=3, help="halts left pending for `halts list` (default 3)")
    parser.add_argument("--agent-src", type=Path, help="run fazt-agent from this source tree")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.starts < 1 or args.pending < 0:
        parser.error("--runs and --starts must be at least 1, --pending not negative")
    try:
        report = run(args.runs, args.starts, args.pending, args.agent_src.resolve() if args.agent_src else None)
    except (BenchError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print_json(report)
    else:
        print(f"commands as processes, {args.runs} runs each, alternating (wall ms: median / p95; CPU ms median)")
        for name, row in report["commands"].items():
            target = (f"  target <= {COMMAND_TARGET_MS:g}  {verdict(report['met'][name])}"
                      if name in report["met"] else "")
            label = f"fazt-agent {name}" if name in COMMANDS or name == NO_DAEMON else name
            print(f"  {label:38} {row['wall_ms']['median']:7.1f} / {row['wall_ms']['p95']:7.1f}   "
                  f"CPU {row['cpu_ms']['median']:6.1f}{target}")
        print(f"start to the first HTTP 200, {args.starts} starts each (ms: median / p95)")
        for name, row in report["starts_ms"].items():
            target = (f"  target <= {START_TARGET_MS:g}  {verdict(report['met']['cold start'])}"
                      if name == START else "")
            print(f"  {name:38} {row['median']:7.1f} / {row['p95']:7.1f}{target}")
    return 0 if all(report["met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
