"""Idle cost of `fazt-agent run`: memory and CPU of the daemon doing nothing but its pulse.

Starts the real daemon (`python -m fazt_agent --config CFG run`) on a fresh ops folder with the
shipped checks, waits for /healthz, lets it warm up, then samples it with psutil over the window:
RSS (end and max), USS, threads, and CPU = (user+system CPU time delta) / wall time. Stops it
with SIGTERM and reports the exit code and how long stopping took. A second short run of the
same daemon records which modules it has imported when it exits.

Anchors, in the same run and the same window, one after the other: Debian's
`prometheus-node-exporter` (idle, never scraped) and Monit in the foreground with `set daemon` at
the same interval and the same two checks as the shipped pulse (`check system`, `check filesystem
/`), sampled the same way. `scripts/bench-deps` installs both; `--no-anchors` skips them.

Targets: RSS <= 40 MiB, CPU <= 0.5 %. Exit code 0 when both are met, 1 when one is missed, the
daemon misbehaved or an anchor is missing, 2 for bad arguments.

    python bench/idle.py [--seconds 60] [--interval 5s] [--no-anchors] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from _common import MB, Ops, clean_env, free_port, make_ops, percentile, print_json, verdict

RSS_TARGET_MB = 40.0
CPU_TARGET_PERCENT = 0.5
# never needed by an idle daemon: the CLI's libraries, the LLM and MCP SDKs (loaded at the first
# decision or /mcp request), notification, HTTP-client and ACME libraries
HEAVY = ("anthropic", "mcp", "apprise", "httpx", "httpcore", "quickjs", "rich", "typer", "shellingham",
         "cryptography", "acme", "josepy", "requests")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

# Runs the daemon exactly as `python -m fazt_agent` does, and writes sys.modules at exit.
_MODULES_WRAPPER = """\
import atexit, json, runpy, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
runpy.run_module("fazt_agent", run_name="__main__", alter_sys=True)
"""


class BenchError(Exception):
    """The daemon did not start, died, or did not stop; the message says which."""


def start(ops: Ops, log: Path, prefix: list[str]) -> tuple[subprocess.Popen[bytes], float]:
    """Start the daemon and wait for GET /healthz to answer 200. Returns it and the startup time."""
    t0 = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen([*prefix, "--config", str(ops.config), "run"], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=clean_env(), cwd=ops.dir)
    url = f"http://127.0.0.1:{ops.port}/healthz"
    while time.monotonic() - t0 < START_TIMEOUT:
        if proc.poll() is not None:
            raise BenchError(f"the daemon exited with {proc.returncode} before /healthz answered:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                if reply.status == 200:
                    return proc, time.monotonic() - t0
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)
    stop(proc)
    raise BenchError(f"/healthz did not answer 200 within {START_TIMEOUT:g}s:\n{_tail(log)}")


def stop(proc: subprocess.Popen[bytes]) -> tuple[int, float]:
    """SIGTERM, wait; SIGKILL after STOP_TIMEOUT. Returns (exit code, seconds to stop)."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    return code, time.monotonic() - t0


def _tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def measure(ops: Ops, seconds: float, warmup: float) -> dict[str, Any]:
    log = ops.dir.parent / "daemon.log"
    proc, startup = start(ops, log, [sys.executable, "-m", "fazt_agent"])
    try:
        time.sleep(warmup)
        p = psutil.Process(proc.pid)
        rss_start = p.memory_info().rss
        cpu0, wall0 = p.cpu_times(), time.monotonic()
        rss_max = rss_start
        while (elapsed := time.monotonic() - wall0) < seconds:
            time.sleep(min(1.0, seconds - elapsed))
            if proc.poll() is not None:
                raise BenchError(f"the daemon exited with {proc.returncode} during the window:\n{_tail(log)}")
            rss_max = max(rss_max, p.memory_info().rss)
        cpu1, wall1 = p.cpu_times(), time.monotonic()
        rss_end = p.memory_info().rss
        rss_max = max(rss_max, rss_end)
        try:
            uss: float | None = p.memory_full_info().uss / MB
        except (psutil.AccessDenied, AttributeError):
            uss = None
        threads = p.num_threads()
    except BaseException:
        stop(proc)
        raise
    code, stop_s = stop(proc)
    cpu_s = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    beats, beat_ms = _beats(ops.db)
    return {
        "startup_s": startup, "window_s": wall1 - wall0,
        "rss_mb_start": rss_start / MB, "rss_mb_end": rss_end / MB, "rss_mb_max": rss_max / MB, "uss_mb_end": uss,
        "threads": threads, "cpu_seconds": cpu_s, "cpu_percent": 100 * cpu_s / (wall1 - wall0),
        "beats_stored": beats, "beat_duration_ms_median": beat_ms,
        "exit_code": code, "stop_s": stop_s,
        "log_tail": _tail(log, 5) if code != 0 else "",
    }


def _beats(db: Path) -> tuple[int, float]:
    """Beats the daemon stored and their median duration (checks only), read after it stopped."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        durations = [row[0] for row in conn.execute("SELECT duration_ms FROM beats")]
    return len(durations), percentile(durations, 50)


def loaded_modules(ops: Ops) -> dict[str, Any]:
    """Start the daemon once more, stop it when healthy, and list what it had imported."""
    out = ops.dir.parent / "modules.json"
    log = ops.dir.parent / "modules-daemon.log"
    proc, _ = start(ops, log, [sys.executable, "-c", _MODULES_WRAPPER, str(out)])
    stop(proc)
    if not out.exists():
        raise BenchError(f"the daemon wrote no module list:\n{_tail(log)}")
    modules: list[str] = json.loads(out.read_text())
    tops = {m.split(".")[0] for m in modules}
    third_party = sorted(t for t in tops if t not in sys.stdlib_module_names and not t.startswith("_")
                         and t != "fazt_agent")
    return {"count": len(modules), "heavy": sorted(t for t in tops if t in HEAVY), "third_party": third_party}


def sample(pid: int, seconds: float) -> dict[str, float]:
    """RSS at the end and its maximum (sampled every second) and CPU % of a process over `seconds`."""
    p = psutil.Process(pid)
    cpu0, wall0, rss_max = p.cpu_times(), time.monotonic(), p.memory_info().rss
    while (elapsed := time.monotonic() - wall0) < seconds:
        time.sleep(min(1.0, seconds - elapsed))
        rss_max = max(rss_max, p.memory_info().rss)
    cpu1, wall1, rss_end = p.cpu_times(), time.monotonic(), p.memory_info().rss
    cpu_s = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    return {"rss_mb_end": rss_end / MB, "rss_mb_max": max(rss_max, rss_end) / MB,
            "cpu_percent": 100 * cpu_s / (wall1 - wall0)}


def anchors(parent: Path, seconds: float, warmup: float, interval: str) -> dict[str, Any]:
    """node_exporter and Monit, idle, one after the other over the same window as the daemon."""
    node = shutil.which("prometheus-node-exporter") or "/usr/bin/prometheus-node-exporter"
    monit = shutil.which("monit") or "/usr/bin/monit"
    missing = [b for b in (node, monit) if not os.path.exists(b)]
    if missing:
        raise BenchError(f"anchors not installed ({', '.join(missing)}): run scripts/bench-deps, or --no-anchors")
    work = parent / "monit"
    work.mkdir()
    rc = work / "monitrc"
    every = max(1, round(_seconds(interval)))
    rc.write_text(f"set daemon {every}\nset logfile {work / 'monit.log'}\nset pidfile {work / 'monit.pid'}\n"
                  f"set idfile {work / 'monit.id'}\nset statefile {work / 'monit.state'}\n\n"
                  "check system localhost\ncheck filesystem rootfs with path /\n")
    rc.chmod(0o600)
    out = {}
    port = free_port()
    for name, argv in (("node_exporter", [node, f"--web.listen-address=127.0.0.1:{port}"]),
                       ("monit", [monit, "-I", "-c", str(rc)])):
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        try:
            if name == "node_exporter":   # answered once, as the daemon answered /healthz
                _first_200(proc, f"http://127.0.0.1:{port}/metrics")
            time.sleep(warmup)
            if proc.poll() is not None:
                raise BenchError(f"{name} exited with {proc.returncode}")
            out[name] = sample(proc.pid, seconds)
        finally:
            stop(proc)
    return out


def _first_200(proc: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)
    raise BenchError(f"{url} did not answer 200 within {START_TIMEOUT:g}s")


def _seconds(interval: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(interval[:-1]) * units[interval[-1]] if interval[-1:] in units else float(interval)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Idle RSS and CPU of `fazt-agent run`.")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the sampling window (default 60)")
    parser.add_argument("--interval", default="5s", help="the [pulse] interval to run with (default 5s)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds between /healthz and the window")
    parser.add_argument("--no-anchors", action="store_true", help="skip node_exporter and Monit")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.warmup < 0:
        parser.error("--seconds must be positive and --warmup not negative")
    try:
        _seconds(args.interval)
    except ValueError:
        parser.error(f"--interval: expected a duration such as 5s or 1m, got {args.interval!r}")

    with tempfile.TemporaryDirectory(prefix="fazt-bench-idle-") as tmp:
        try:
            ops = make_ops(Path(tmp), pulse_interval=args.interval)
            result = measure(ops, args.seconds, args.warmup)
            modules = loaded_modules(ops)
            anchor = {} if args.no_anchors else anchors(Path(tmp), args.seconds, args.warmup, args.interval)
        except (BenchError, RuntimeError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    rss_ok = result["rss_mb_end"] <= RSS_TARGET_MB
    cpu_ok = result["cpu_percent"] <= CPU_TARGET_PERCENT
    report = {"bench": "idle", "seconds": args.seconds, "interval": args.interval, **result,
              "modules": modules, "anchors": anchor,
              "targets": {"rss_mb": RSS_TARGET_MB, "cpu_percent": CPU_TARGET_PERCENT},
              "met": {"rss_mb": rss_ok, "cpu_percent": cpu_ok}}
    if args.json:
        print_json(report)
    else:
        r = result
        uss = f"{r['uss_mb_end']:.1f} MiB" if r["uss_mb_end"] is not None else "n/a"
        print(f"idle daemon over {r['window_s']:.1f}s at a {args.interval} pulse interval "
              f"({r['beats_stored']} beats stored in the whole run, median {r['beat_duration_ms_median']:.1f} ms checks only)")
        print(f"  startup to /healthz  {r['startup_s']:.2f} s")
        print(f"  RSS end              {r['rss_mb_end']:.1f} MiB   target <= {RSS_TARGET_MB:g} MiB  {verdict(rss_ok)}")
        print(f"  RSS max              {r['rss_mb_max']:.1f} MiB   (at window start {r['rss_mb_start']:.1f} MiB)")
        print(f"  USS end              {uss}")
        print(f"  threads              {r['threads']}")
        print(f"  CPU                  {r['cpu_percent']:.3f} %  ({r['cpu_seconds']:.3f} s CPU)   "
              f"target <= {CPU_TARGET_PERCENT:g} %  {verdict(cpu_ok)}")
        print(f"  SIGTERM              exit code {r['exit_code']} after {r['stop_s']:.2f} s")
        print(f"  modules imported     {modules['count']}")
        print(f"  heavy modules loaded by the daemon: {modules['heavy']}")
        print(f"  third-party packages loaded: {modules['third_party']}")
        for name, a in anchor.items():
            print(f"  anchor {name:14} RSS end {a['rss_mb_end']:.1f} MiB (max {a['rss_mb_max']:.1f}), "
                  f"CPU {a['cpu_percent']:.3f} %, same window")
        if r["log_tail"]:
            print(f"  daemon log tail:\n{r['log_tail']}")
    return 0 if rss_ok and cpu_ok and result["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
