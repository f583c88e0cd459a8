"""`http` checks at scale: the daemon with 10, 100 and 500 http checks against a healthy local
server, beside Monit with the same checks.

A fast HTTP/1.1 server (this script as `--serve PORT`: asyncio, keep-alive, 200 "ok" for every
path, `GET /__stats` for the requests and connections it has seen) runs in a process of its own.
Per size N: a fresh ops folder with `fazt-agent init` whose only pulse file holds N checks
`kind = "http"`, `url = "http://127.0.0.1:PORT/pathI"` (the shipped system/disk checks removed),
`[pulse] interval = "5s"`; `fazt-agent run` is started, waits for /healthz and `--warmup` seconds,
then is watched for `--seconds` with psutil: CPU = (user + system CPU time delta) / wall time,
RSS at the end and its maximum (sampled every second). After SIGTERM the beats of the window are
read from the `beats` table (`duration_ms`: the checks of one beat) and their results from
`results` (all ok?), with the requests the server saw. Then Monit (Debian's `monit`, installed by
`scripts/bench-deps`) runs in the foreground (`monit -I -c FILE`, its own pid/state/id/log files
in a temporary directory) with `set daemon 5` and N `check host hI with address 127.0.0.1 / if
failed port PORT protocol http request "/pathI" then alert`, watched the same way; its log says
whether a test failed. The two never run at the same time.

`--agent-src DIR` runs the daemon from another source tree (e.g. `git archive HEAD fazt_agent |
tar -x -C DIR`), to measure an older version with the same script.

Targets at 500 checks: every result ok, beat <= 1 s (median of the window), RSS <= 70 MiB,
CPU <= 5 %. Exit code 0 when met, 1 when missed or a run failed, 2 for bad arguments.

    python bench/http_scale.py [--checks 10,100,500] [--seconds 30] [--warmup 7] [--no-monit] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from _common import MB, clean_env, free_port, make_ops, percentile, print_json, verdict

HERE = Path(__file__).resolve().parent
TARGETS = {"checks": 500, "beat_ms": 1000.0, "rss_mb": 70.0, "cpu_percent": 5.0}
INTERVAL = 5
START_TIMEOUT = 60.0


class BenchError(Exception):
    """A process did not start, died or misbehaved; the message says which."""


# -- the server ------------------------------------------------------------------------------

def serve(port: int) -> None:
    """A keep-alive HTTP/1.1 server answering 200 "ok" to any path (GET /__stats: what it saw)."""
    stats = {"requests": 0, "connections": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats["connections"] += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, _, headers = head.decode("latin-1").partition("\r\n")
                path = line.split(" ")[1] if line.count(" ") >= 2 else "/"
                close = "connection: close" in headers.lower() or line.endswith("HTTP/1.0")
                if path == "/__stats":
                    body = json.dumps(stats).encode()
                else:
                    stats["requests"] += 1
                    body = b"ok"
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s"
                             % (len(body), b"Connection: close\r\n" if close else b"", body))
                if close:
                    await writer.drain()
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def server_stats(port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/__stats", timeout=5) as reply:
        return json.loads(reply.read())  # type: ignore[no-any-return]


def start_server() -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(HERE / "http_scale.py"), "--serve", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=clean_env())
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"the test server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            server_stats(port)
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise BenchError("the test server did not answer within 15 s")


# -- watching a process ----------------------------------------------------------------------

def watch(proc: subprocess.Popen[bytes], seconds: float, log: Path) -> dict[str, float]:
    """CPU % and RSS (end, max) of `proc` over `seconds`."""
    import psutil

    p = psutil.Process(proc.pid)
    cpu0, wall0 = p.cpu_times(), time.monotonic()
    rss_max = p.memory_info().rss
    while (elapsed := time.monotonic() - wall0) < seconds:
        time.sleep(min(1.0, seconds - elapsed))
        if proc.poll() is not None:
            raise BenchError(f"{proc.args[0]} exited with {proc.returncode} during the window:\n{_tail(log)}")
        rss_max = max(rss_max, p.memory_info().rss)
    cpu1, wall1 = p.cpu_times(), time.monotonic()
    rss_end = p.memory_info().rss
    cpu_s = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    return {"window_s": wall1 - wall0, "cpu_seconds": cpu_s, "cpu_percent": 100 * cpu_s / (wall1 - wall0),
            "rss_mb_end": rss_end / MB, "rss_mb_max": max(rss_max, rss_end) / MB}


def stop(proc: subprocess.Popen[bytes], timeout: float = 15) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _tail(log: Path, lines: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


# -- fazt-agent ------------------------------------------------------------------------------

def run_fazt(n: int, port: int, parent: Path, seconds: float, warmup: float, agent_src: Path | None) -> dict[str, Any]:
    ops = _make_ops(parent, agent_src)
    for old in (ops.dir / "pulse").glob("*.toml"):
        old.unlink()
    (ops.dir / "pulse" / "web.toml").write_text("".join(
        f'[[checks]]\nname = "web-{i}"\nkind = "http"\nurl = "http://127.0.0.1:{port}/path{i}"\n\n' for i in range(n)))
    env = clean_env()
    if agent_src is not None:
        env["PYTHONPATH"] = str(agent_src)
    log = parent / "daemon.log"
    before = server_stats(port)
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fazt_agent", "--config", str(ops.config), "run"],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=ops.dir)
    try:
        _wait_healthy(proc, ops.port, log)
        time.sleep(warmup)
        since = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # as the store writes ts
        stats0 = server_stats(port)
        measured = watch(proc, seconds, log)
        stats1 = server_stats(port)
    finally:
        code = stop(proc)
    beats = _beats(ops.db, since)
    return {"n": n, **measured, **beats, "exit_code": code,
            "requests": stats1["requests"] - stats0["requests"],
            "connections": stats1["connections"] - stats0["connections"] - 1,   # less the /__stats one
            "connections_whole_run": stats1["connections"] - before["connections"] - 2,
            "log_tail": _tail(log, 5) if code != 0 else ""}


def _make_ops(parent: Path, agent_src: Path | None) -> Any:
    """`fazt-agent init` by the version under test (an older one may not know the newer scaffold)."""
    if agent_src is None:
        return make_ops(parent, pulse_interval=f"{INTERVAL}s")
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(agent_src)   # clean_env() passes it to `init`
    try:
        return make_ops(parent, pulse_interval=f"{INTERVAL}s")
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved


def _wait_healthy(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"the daemon exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise BenchError(f"/healthz did not answer 200 within {START_TIMEOUT:g}s:\n{_tail(log)}")


def _beats(db: Path, since: str) -> dict[str, Any]:
    """The beats stored since `since`: their durations and how many of their results were ok."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT id, duration_ms FROM beats WHERE ts >= ? ORDER BY id", (since,)).fetchall()
        ids = [r[0] for r in rows]
        counts: dict[str, int] = {}
        if ids:
            for status, count in conn.execute(
                    "SELECT status, COUNT(*) FROM results WHERE beat_id BETWEEN ? AND ? GROUP BY status",
                    (ids[0], ids[-1])):
                counts[status] = count
        incidents = conn.execute("SELECT COUNT(*) FROM incidents").fetchone()[0]
    durations = [r[1] for r in rows]
    total = sum(counts.values())
    return {"beats": len(rows), "beat_ms_median": percentile(durations, 50),
            "beat_ms_max": max(durations) if durations else float("nan"),
            "results": total, "results_ok": counts.get("ok", 0), "statuses": counts,
            "all_ok": bool(total) and counts.get("ok", 0) == total, "incidents_opened": incidents}


# -- Monit -----------------------------------------------------------------------------------

def run_monit(n: int, port: int, parent: Path, seconds: float, warmup: float) -> dict[str, Any]:
    monit = shutil.which("monit") or "/usr/bin/monit"
    if not os.path.exists(monit):
        raise BenchError("monit is not installed: run scripts/bench-deps")
    work = parent / "monit"
    work.mkdir()
    log = work / "monit.log"
    rc = work / "monitrc"
    rc.write_text(
        f"set daemon {INTERVAL}\nset logfile {log}\nset pidfile {work / 'monit.pid'}\n"
        f"set idfile {work / 'monit.id'}\nset statefile {work / 'monit.state'}\n\n"
        + "".join(f'check host h{i} with address 127.0.0.1\n'
                  f'    if failed port {port} protocol http request "/path{i}" then alert\n' for i in range(n)))
    rc.chmod(0o600)
    proc = subprocess.Popen([monit, "-I", "-c", str(rc)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=clean_env(), cwd=work)
    try:
        time.sleep(warmup)
        if proc.poll() is not None:
            raise BenchError(f"monit exited with {proc.returncode}:\n{_tail(log)}")
        stats0 = server_stats(port)
        measured = watch(proc, seconds, log)
        stats1 = server_stats(port)
    finally:
        code = stop(proc)
    text = log.read_text(errors="replace") if log.exists() else ""
    failed = sum(1 for line in text.splitlines() if "failed" in line.lower())
    return {"n": n, **measured, "exit_code": code, "failed_lines": failed,
            "requests": stats1["requests"] - stats0["requests"],
            "connections": stats1["connections"] - stats0["connections"] - 1}


# -- the run ---------------------------------------------------------------------------------

def run(sizes: list[int], seconds: float, warmup: float, monit: bool, agent_src: Path | None) -> dict[str, Any]:
    server, port = start_server()
    rows: list[dict[str, Any]] = []
    try:
        for n in sizes:
            print(f"  {n} checks: fazt-agent ...", file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory(prefix="fazt-bench-http-") as tmp:
                fazt = _attempt(lambda: run_fazt(n, port, Path(tmp), seconds, warmup, agent_src))
            anchor = None
            if monit:
                print(f"  {n} checks: monit ...", file=sys.stderr, flush=True)
                with tempfile.TemporaryDirectory(prefix="fazt-bench-monit-") as tmp:
                    anchor = _attempt(lambda: run_monit(n, port, Path(tmp), seconds, warmup))
            rows.append({"n": n, "fazt": fazt, "monit": anchor})
    finally:
        server.terminate()
        server.wait(10)
    return {"rows": rows}


def _attempt(measure: Any) -> dict[str, Any]:
    """One run's report, or {"error": ...} when it failed (the other sizes still run)."""
    try:
        return measure()  # type: ignore[no-any-return]
    except (BenchError, RuntimeError, OSError) as e:
        print(f"  error: {e}", file=sys.stderr, flush=True)
        return {"error": str(e)}


def met(rows: list[dict[str, Any]]) -> dict[str, bool] | None:
    row = next((r for r in rows if r["n"] == TARGETS["checks"]), None)
    if row is None:
        return None
    f = row["fazt"]
    if "error" in f:
        return {"all_ok": False, "beat_ms": False, "rss_mb": False, "cpu_percent": False}
    return {"all_ok": f["all_ok"], "beat_ms": f["beat_ms_median"] <= TARGETS["beat_ms"],
            "rss_mb": f["rss_mb_max"] <= TARGETS["rss_mb"], "cpu_percent": f["cpu_percent"] <= TARGETS["cpu_percent"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="http checks at scale: fazt-agent beside Monit.")
    parser.add_argument("--checks", default="10,100,500", help="comma-separated sizes (default 10,100,500)")
    parser.add_argument("--seconds", type=float, default=30.0, help="the measured window per run (default 30)")
    parser.add_argument("--warmup", type=float, default=7.0, help="seconds between start and the window")
    parser.add_argument("--no-monit", action="store_true", help="skip the Monit anchor")
    parser.add_argument("--agent-src", type=Path, help="run the daemon from this source tree (PYTHONPATH)")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    try:
        sizes = [int(s) for s in args.checks.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--checks expects sizes like 10,100,500, got {args.checks!r}")
    if not sizes or min(sizes) < 1 or args.seconds < INTERVAL or args.warmup < 0:
        parser.error(f"--checks must be positive, --seconds at least {INTERVAL}, --warmup not negative")
    if args.agent_src is not None and not (args.agent_src / "fazt_agent" / "__init__.py").is_file():
        parser.error(f"--agent-src {args.agent_src} holds no fazt_agent package")
    if not args.no_monit and not shutil.which("monit") and not os.path.exists("/usr/bin/monit"):
        print("error: monit is not installed: run scripts/bench-deps (or pass --no-monit)", file=sys.stderr)
        return 1
    try:
        result = run(sizes, args.seconds, args.warmup, not args.no_monit, args.agent_src)
    except (BenchError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    rows = result["rows"]
    targets_met = met(rows)
    failed = any("error" in r["fazt"] or r["fazt"]["exit_code"] != 0
                 or (r["monit"] and ("error" in r["monit"] or r["monit"]["exit_code"] not in (0, -15))) for r in rows)
    ok = not failed and (targets_met is None or all(targets_met.values()))
    report = {"bench": "http_scale", "interval_s": INTERVAL, "seconds": args.seconds,
              "agent_src": str(args.agent_src) if args.agent_src else None, "rows": rows,
              "targets": TARGETS, "met": targets_met, "ok": ok}
    if args.json:
        print_json(report)
        return 0 if ok else 1
    print(f"http checks at a {INTERVAL} s interval, {args.seconds:g} s window per run"
          + (f" (daemon from {args.agent_src})" if args.agent_src else ""))
    print(f"{'checks':>6} | {'beat med/max (ms)':>17} | {'ok results':>15} | {'incid.':>6} | {'fazt RSS':>8} | "
          f"{'fazt CPU':>8} | {'conns/reqs':>11} | {'Monit RSS':>9} | {'Monit CPU':>9} | {'Monit fails':>11}")
    for r in rows:
        f, m = r["fazt"], r["monit"]
        if m and "error" in m:
            monit_cols = f"error: {m['error'].splitlines()[0]}"
        elif m:
            monit_cols = f"{m['rss_mb_max']:7.1f} M | {m['cpu_percent']:7.2f} % | {m['failed_lines']:>11}"
        else:
            monit_cols = f"{'-':>9} | {'-':>9} | {'-':>11}"
        if "error" in f:
            print(f"{r['n']:>6} | fazt-agent error: {f['error'].splitlines()[0]} | {monit_cols}")
            continue
        print(f"{r['n']:>6} | {f['beat_ms_median']:8.0f}/{f['beat_ms_max']:<8.0f} | "
              f"{f['results_ok']:>6}/{f['results']:<8} | {f['incidents_opened']:>6} | {f['rss_mb_max']:6.1f} M | "
              f"{f['cpu_percent']:6.2f} % | {f['connections']:>4}/{f['requests']:<6} | {monit_cols}")
    if targets_met is not None:
        print(f"targets at {TARGETS['checks']} checks: all ok {verdict(targets_met['all_ok'])}, "
              f"beat <= {TARGETS['beat_ms']:g} ms {verdict(targets_met['beat_ms'])}, "
              f"RSS <= {TARGETS['rss_mb']:g} MiB {verdict(targets_met['rss_mb'])}, "
              f"CPU <= {TARGETS['cpu_percent']:g} % {verdict(targets_met['cpu_percent'])}")
    for r in rows:
        if r["fazt"].get("log_tail"):
            print(f"daemon log tail at {r['n']} checks:\n{r['fazt']['log_tail']}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
