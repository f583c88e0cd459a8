"""Memory under load: does the daemon's RSS stay flat over a long run at a 1 s pulse?

Makes an ops folder with `fazt-agent init` (the shipped checks, a free loopback port, `[pulse]
interval = "1s"`, autonomy medium) plus a `dir_size` check (`warning = "1KB"`) on a scratch
folder that is an allowed cleanup root; in the ops folder's policies/default.toml the default
cooldown is cut to 5 s and max_actions raised, so the shipped rule "directory-pressure" plans a
safe cleanup again and again. Then, all at once for `--minutes`:

- a writer thread drops a few 4 KiB files dated 8 days back into the scratch folder every 10 s
  (flap control off on that check; each batch opens an incident, a safe cleanup deletes the files, the incident resolves);
- an MCP client (the `mcp` Python client over the daemon's /mcp, a `read` token from the CLI)
  calls `fazt_pulse_status` and `fazt_system_status` in turn, one call a second, opening a new
  session every 5 minutes;
- `GET /metrics` is scraped every 5 s over one keep-alive connection.

The daemon's RSS (its own pid; the MCP worker child apart) is sampled every 10 s. RSS at the end
of the warm-up and at the end are each the median of the samples of one minute (after the
warm-up, before the end), so one sample's noise does not decide; the slope is a least-squares
fit over the second half of the run. Target: growth after the warm-up < 2 %. Exit 0 when met and
the load ran (beats, cleanups, MCP calls, scrapes all happened without failures), 1 otherwise,
2 for bad arguments.

    python bench/soak.py [--minutes 30] [--warmup 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from _common import MB, Ops, clean_env, make_ops, percentile, print_json, verdict

GROWTH_TARGET_PERCENT = 2.0
SAMPLE_EVERY = 10.0
WRITE_EVERY = 10.0
SCRAPE_EVERY = 5.0
MCP_EVERY = 1.0
SESSION_CALLS = 300
DAY = 86400


def prepare(parent: Path) -> tuple[Ops, Path]:
    """The ops folder and its scratch cleanup root (see the module docstring)."""
    ops = make_ops(parent, pulse_interval="1s")
    scratch = (parent / "scratch").resolve()
    scratch.mkdir()
    (ops.dir / "pulse" / "soak.toml").write_text(tomli_w.dumps({"checks": [
        {"name": "scratch", "kind": "dir_size", "path": str(scratch), "warning": "1KB",
         "flap_count": 0}]}))
    (ops.dir / "policies" / "local.toml").write_text(
        tomli_w.dumps({"constraints": {"cleanup_roots": [str(scratch)]}}))
    default = ops.dir / "policies" / "default.toml"
    text = default.read_text()
    for key, value in (("cooldown", '"5s"'), ("max_actions", "1000000")):
        line = next((x for x in text.splitlines() if x.startswith(f"{key} =")), None)
        if line is None:
            raise RuntimeError(f"policies/default.toml has no '{key} =' line")
        text = text.replace(line, f"{key} = {value}", 1)
    default.write_text(text)
    data = tomllib.loads(ops.config.read_text())
    data.setdefault("agent", {})["autonomy"] = "medium"
    ops.config.write_text(tomli_w.dumps(data))
    return ops, scratch


class Load:
    """The three load threads and their counters; `stop` ends them all."""

    def __init__(self, ops: Ops, scratch: Path, token: str) -> None:
        self.ops, self.scratch, self.token = ops, scratch, token
        self.stop = threading.Event()
        self.counts = {"files_written": 0, "mcp_calls": 0, "mcp_failed": 0, "mcp_sessions": 0,
                       "scrapes": 0, "scrapes_failed": 0}
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self.writer, self.mcp, self.scraper)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def writer(self) -> None:
        then = time.time() - 8 * DAY
        n = 0
        while not self.stop.wait(WRITE_EVERY):
            for _ in range(3):
                path = self.scratch / f"old-{n:07}.log"
                path.write_bytes(b"x" * 4096)
                os.utime(path, (then, then))
                n += 1
            self.counts["files_written"] = n

    def scraper(self) -> None:
        import httpx

        url = f"http://127.0.0.1:{self.ops.port}/metrics"
        with httpx.Client(headers={"Authorization": f"Bearer {self.token}"}, timeout=10) as client:
            while not self.stop.wait(SCRAPE_EVERY):
                try:
                    ok = client.get(url).status_code == 200
                except httpx.HTTPError as e:
                    ok = False
                    self._error(f"/metrics: {e!r}")
                self.counts["scrapes"] += 1
                self.counts["scrapes_failed"] += not ok

    def mcp(self) -> None:
        try:
            asyncio.run(self._mcp())
        except BaseException as e:   # reported, not raised: the sampler decides the exit code
            self._error(f"MCP client: {e!r}")

    async def _mcp(self) -> None:
        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        url = f"http://127.0.0.1:{self.ops.port}/mcp"
        tools = ("fazt_pulse_status", "fazt_system_status")
        while not self.stop.is_set():
            async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {self.token}"}, timeout=30) as http:
                async with Client(streamable_http_client(url, http_client=http)) as client:
                    self.counts["mcp_sessions"] += 1
                    for i in range(SESSION_CALLS):
                        if self.stop.is_set():
                            return
                        t0 = time.monotonic()
                        result = await client.call_tool(tools[i % 2], {})
                        self.counts["mcp_calls"] += 1
                        self.counts["mcp_failed"] += bool(result.is_error)
                        await asyncio.sleep(max(0.0, MCP_EVERY - (time.monotonic() - t0)))

    def _error(self, message: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(message)
        print(f"  load error: {message}", file=sys.stderr, flush=True)


def worker_pid(port: int) -> int | None:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json().get("mcp_worker_pid")
    except (httpx.HTTPError, ValueError):
        return None


def wait_beat(port: int, daemon: subprocess.Popen[bytes], timeout: float = 30) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited with {daemon.returncode} before its first beat")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).json().get("last_beat"):
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"no beat within {timeout:g}s")


def slope_mb_per_h(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) points, in MiB per hour."""
    if len(points) < 2:
        return float("nan")
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    return 3600 * sum((t - mx) * (v - my) for t, v in points) / var if var else float("nan")


def window_median(samples: list[dict[str, Any]], start: float, end: float, key: str = "daemon_mb") -> float:
    values = [s[key] for s in samples if start <= s["t"] <= end and s[key] is not None]
    return percentile(values, 50)


def db_counts(db: Path) -> dict[str, Any]:
    """Beats, cleanups by state and incidents, read from the store after the daemon stopped."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        beats = conn.execute("SELECT count(*) FROM beats").fetchone()[0]
        actions = dict(conn.execute("SELECT state, count(*) FROM actions WHERE action = 'cleanup' GROUP BY state"))
        incidents = conn.execute("SELECT count(*) FROM incidents").fetchone()[0]
        events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    return {"beats": beats, "cleanups": actions, "incidents": incidents, "events": events}


def run(minutes: float, warmup: float, log_dir: Path | None) -> dict[str, Any]:
    import psutil

    with tempfile.TemporaryDirectory(prefix="fazt-bench-soak-") as tmp:
        ops, scratch = prepare(Path(tmp))
        cli = [sys.executable, "-m", "fazt_agent", "--config", str(ops.config)]
        log = (log_dir or Path(tmp)) / "soak-daemon.log"
        with log.open("wb") as out:
            daemon = subprocess.Popen([*cli, "run"], stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=clean_env(), cwd=ops.dir)
        load = None
        samples: list[dict[str, Any]] = []
        try:
            wait_beat(ops.port, daemon)
            token = subprocess.run([*cli, "tokens", "create", "soak", "--scope", "read"], capture_output=True,
                                   text=True, check=True, env=clean_env()).stdout.strip()
            proc = psutil.Process(daemon.pid)
            load = Load(ops, scratch, token)
            load.start()
            t0 = time.monotonic()
            total = minutes * 60
            while (t := time.monotonic() - t0) < total + 0.5:
                if daemon.poll() is not None:
                    raise RuntimeError(f"the daemon exited with {daemon.returncode} after {t:.0f} s")
                wpid = worker_pid(ops.port)
                try:
                    worker = psutil.Process(wpid).memory_info().rss / MB if wpid else None
                except psutil.NoSuchProcess:
                    worker = None
                sample = {"t": round(t, 1), "daemon_mb": proc.memory_info().rss / MB, "worker_mb": worker,
                          "worker_pid": wpid, **dict(load.counts)}
                samples.append(sample)
                if len(samples) % 6 == 1:
                    w = f"{worker:.1f}" if worker is not None else "-"
                    print(f"  {t / 60:5.1f} min  daemon {sample['daemon_mb']:.2f} MiB  worker {w} MiB  "
                          f"mcp {sample['mcp_calls']}  scrapes {sample['scrapes']}  files {sample['files_written']}",
                          file=sys.stderr, flush=True)
                time.sleep(max(0.0, SAMPLE_EVERY * len(samples) - (time.monotonic() - t0)))
        finally:
            if load is not None:
                load.join()
            daemon.terminate()
            try:
                code = daemon.wait(15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                code = daemon.wait()
        counts = db_counts(ops.db)
    end = samples[-1]["t"]
    warm_at = warmup * 60
    rss_warm = window_median(samples, warm_at, warm_at + 60)
    rss_end = window_median(samples, end - 60, end)
    growth = 100 * (rss_end - rss_warm) / rss_warm
    half = [(s["t"], s["daemon_mb"]) for s in samples if s["t"] >= end / 2]
    whalf = [(s["t"], s["worker_mb"]) for s in samples if s["t"] >= end / 2 and s["worker_mb"] is not None]
    pids = {s["worker_pid"] for s in samples if s["worker_pid"]}
    assert load is not None
    c = load.counts
    loaded = (counts["beats"] > 0 and counts["cleanups"].get("succeeded", 0) > 0 and c["mcp_calls"] > 0
              and c["scrapes"] > 0 and c["mcp_failed"] == 0 and c["scrapes_failed"] == 0 and not load.errors)
    return {
        "minutes": minutes, "warmup_minutes": warmup, "samples": len(samples),
        "daemon_rss_mb": {"warmup_end": rss_warm, "end": rss_end, "min": min(s["daemon_mb"] for s in samples),
                          "max": max(s["daemon_mb"] for s in samples), "first": samples[0]["daemon_mb"]},
        "growth_percent": growth, "slope_mb_per_h_second_half": slope_mb_per_h(half),
        "worker_rss_mb": {"warmup_end": window_median(samples, warm_at, warm_at + 60, "worker_mb"),
                          "end": window_median(samples, end - 60, end, "worker_mb"),
                          "slope_mb_per_h_second_half": slope_mb_per_h(whalf), "pids": len(pids)},
        "load": {**c, **counts}, "errors": load.errors, "exit_code": code,
        "series": [{k: s[k] for k in ("t", "daemon_mb", "worker_mb")} for s in samples],
        "target_percent": GROWTH_TARGET_PERCENT, "met": growth < GROWTH_TARGET_PERCENT, "loaded": loaded,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Daemon RSS over a long run at a 1 s pulse under load.")
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the run (default 30)")
    parser.add_argument("--warmup", type=float, default=3.0, help="minutes before the reference RSS (default 3)")
    parser.add_argument("--log-dir", type=Path, help="keep the daemon's log here (default: discarded)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    if args.warmup < 0 or args.minutes < args.warmup + 2:
        parser.error("--warmup must not be negative and --minutes at least --warmup + 2")
    try:
        report = run(args.minutes, args.warmup, args.log_dir)
    except (RuntimeError, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print_json({"bench": "soak", **report})
    else:
        r, load = report["daemon_rss_mb"], report["load"]
        w = report["worker_rss_mb"]
        print(f"soak: {args.minutes:g} min at a 1 s pulse with MCP calls, /metrics scrapes and safe cleanups")
        print("  minute   daemon RSS (MiB)   worker RSS (MiB)")
        for s in report["series"]:
            if round(s["t"]) % 120 < SAMPLE_EVERY or s is report["series"][-1]:
                wm = f"{s['worker_mb']:.2f}" if s["worker_mb"] is not None else "-"
                print(f"  {s['t'] / 60:6.1f}   {s['daemon_mb']:16.2f}   {wm:>16}")
        print(f"  daemon RSS at warm-up end ({args.warmup:g} min) {r['warmup_end']:.2f} MiB, at the end "
              f"{r['end']:.2f} MiB (medians of 1 min); min {r['min']:.2f}, max {r['max']:.2f}")
        print(f"  growth {report['growth_percent']:+.2f} %   target < {GROWTH_TARGET_PERCENT:g} %  "
              f"{verdict(report['met'])}")
        print(f"  slope over the second half {report['slope_mb_per_h_second_half']:+.2f} MiB/h")
        print(f"  MCP worker RSS {w['warmup_end']:.2f} -> {w['end']:.2f} MiB, second-half slope "
              f"{w['slope_mb_per_h_second_half']:+.2f} MiB/h ({w['pids']} worker process(es))")
        print(f"  load: {load['beats']} beats, cleanups {load['cleanups']}, {load['incidents']} incidents, "
              f"{load['events']} events, {load['mcp_calls']} MCP calls ({load['mcp_failed']} failed, "
              f"{load['mcp_sessions']} sessions), {load['scrapes']} scrapes ({load['scrapes_failed']} failed), "
              f"{load['files_written']} files written")
        print(f"  daemon exit code {report['exit_code']}")
        for e in report["errors"]:
            print(f"  error: {e}")
    return 0 if report["met"] and report["loaded"] else 1


if __name__ == "__main__":
    sys.exit(main())
