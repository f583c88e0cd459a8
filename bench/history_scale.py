"""History scale: reads of stored beats and events as the history grows, beside raw sqlite3.

Beats (in process). An ops folder from `fazt-agent init` (the shipped checks, `system` and
`disk`) and one real `fazt-agent beat` give the rows a beat stores. The store then holds 0, 10k,
120k (a week at a 5 s interval) and 500k beats, dated every 5 s from the real now backwards
(raw sqlite3 inserts of copies of that beat's results, ok but for a warning in 1 beat of 100;
ids in time order). At each size, median
of `--repeat` calls on one open `Store` (aiosqlite, rows decoded into results, as status, MCP and
/metrics read them): `BeatStore.latest()`, `latest(since=...)` with the `status` horizon (1 h), and
`history(1h)`. Beside them, in the same run and on the same file, plain sqlite3 running the same
SQL with nothing decoded (the anchor), and the query `latest()` ran before (a GROUP BY of every
stored result).

Events (processes). A second ops folder holds a week of beats (120k) and 10k, 100k, then 1M
events (a valid hash chain, 90 % `pulse.beat`, dated every 0.5 s up to now). At each size, median
of `--runs` runs of `fazt-agent status` and `fazt-agent events list --limit 50` as processes,
beside the `sqlite3` command-line tool reading the same rows from the same file (the anchor for
the query; `python -c pass` for the interpreter).

Targets: `latest()` <= 2 ms at every size (the same with 0 and 500k beats), `history(1h)` <= 10 ms
at 500k beats. Exit code 0 when met, 1 when missed, 2 for bad arguments.

    python bench/history_scale.py [--beats 0,10000,120000,500000] [--events 10000,100000,1000000]
                                  [--repeat 20] [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from _common import Ops, clean_env, make_ops, print_json, stats, verdict

from fazt_agent._sql import LATEST

LATEST_TARGET_MS = 2.0
HISTORY_TARGET_MS = 10.0
STEP_S = 5.0            # the beat interval of the filled history
EVENT_STEP_S = 0.5
PROBLEM_EVERY = 100     # one beat in this many has a problem (what history() returns with each beat)
STATUS_HORIZON = timedelta(hours=1)   # status: max(3 intervals, 1 h)

# What the reads run, for the anchor (plain sqlite3, the same file, nothing decoded).
LATEST_SQL = LATEST   # fazt_agent._sql's, as the Runtime and the CLI run it
OLD_LATEST_SQL = ("SELECT *, MAX(ts) AS newest FROM results {where} GROUP BY check_name, target "
                  "ORDER BY check_name, target")
HISTORY_SQL = ("SELECT * FROM beats WHERE ts >= ? ORDER BY +id",
               "SELECT * FROM results WHERE ts >= ? AND status != 'ok' ORDER BY +beat_id, +rowid")
EVENTS_LIST_SQL = "SELECT * FROM events ORDER BY id DESC LIMIT 50"
RESULT_COLUMNS = "beat_id, ts, check_name, kind, target, status, message, metrics, details, duration_ms"


def iso(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def cli(ops: Ops, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fazt_agent", "--config", str(ops.config), *args],
                          capture_output=True, text=True, timeout=timeout, env=clean_env(), cwd=ops.dir)


def real_beat(ops: Ops) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:
    """One real beat through the CLI; returns its beat row and result rows (status ok: this
    machine's state must not decide how many problems the history holds), and empties the store."""
    done = cli(ops, "beat")
    if done.returncode not in (0, 1):   # 1: something on this machine is not ok, still a beat
        raise RuntimeError(f"fazt-agent beat failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    with sqlite3.connect(ops.db) as conn:
        beat = conn.execute("SELECT status, duration_ms, host FROM beats ORDER BY id DESC LIMIT 1").fetchone()
        results = conn.execute("SELECT check_name, kind, target, 'ok', message, metrics, details, duration_ms "
                               "FROM results WHERE beat_id = (SELECT MAX(id) FROM beats)").fetchall()
        for table in ("results", "beats", "events"):
            conn.execute(f"DELETE FROM {table}")
    return beat, results


def fill_beats(db: Path, now: datetime, have: int, want: int, total: int,
               beat: tuple[Any, ...], results: list[tuple[Any, ...]]) -> float:
    """Add beats so the newest `want` of `total` (every 5 s up to `now`) are stored; `have` already
    are. Beat k (1 = the oldest of `total`) has id k, so ids follow time. Returns seconds taken."""
    t0 = time.perf_counter()
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("BEGIN")
        for k in range(total - want + 1, total - have + 1):
            ts = iso(now - timedelta(seconds=STEP_S * (total - k)))
            problem = k % PROBLEM_EVERY == 0   # the first check warns in 1 beat of PROBLEM_EVERY
            conn.execute("INSERT INTO beats(id, ts, status, duration_ms, host) VALUES (?, ?, ?, ?, ?)",
                         (k, ts, "warning" if problem else "ok", *beat[1:]))
            conn.executemany(f"INSERT INTO results({RESULT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             [(k, ts, *r[:3], "warning" if problem and i == 0 else "ok", *r[4:])
                              for i, r in enumerate(results)])
        conn.execute("COMMIT")
    finally:
        conn.close()
    return time.perf_counter() - t0


def fill_events(db: Path, now: datetime, have: int, want: int, total: int, prev: str) -> tuple[str, float]:
    """Append events `have`+1..`want` (of `total`, dated every 0.5 s up to `now`) with a valid
    chain after `prev`; returns the last hash and the seconds taken."""
    from fazt_agent.events import _canonical, _hash

    t0 = time.perf_counter()
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("BEGIN")
        rows = []
        for k in range(have + 1, want + 1):
            ts = iso(now - timedelta(seconds=EVENT_STEP_S * (total - k)))
            if k % 10:
                type_, source, incident = "pulse.beat", "pulse", None
                data = {"beat_id": k, "counts": {"ok": 2}, "duration_ms": 3.1, "problems": [], "status": "ok"}
            else:
                type_, source, incident = "incident.opened", "engine", k // 10
                data = {"check": "disk", "kind": "disk", "message": "/ 91 % used", "previous": None,
                        "severity": "warning", "target": "/"}
            text = _canonical(data)
            h = _hash(prev, k, ts, type_, source, incident, text)
            rows.append((k, ts, type_, source, incident, text, prev, h))
            prev = h
            if len(rows) >= 10000:
                conn.executemany("INSERT INTO events(id, ts, type, source, incident_id, data, prev_hash, hash) "
                                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
                rows = []
        conn.executemany("INSERT INTO events(id, ts, type, source, incident_id, data, prev_hash, hash) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
    finally:
        conn.close()
    return prev, time.perf_counter() - t0


def timed_ms(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return stats(samples)


async def reads(db: Path, now: datetime, repeat: int) -> dict[str, Any]:
    """latest(), latest(since) and history(1h) through the product's store, median of `repeat`."""
    from fazt_agent.pulse.beats import BeatStore
    from fazt_agent.store import Store

    store = await Store.open(db)
    try:
        beats = BeatStore(store)
        out: dict[str, Any] = {}
        calls = {"latest": lambda: beats.latest(), "latest_since": lambda: beats.latest(since=now - STATUS_HORIZON),
                 "history_1h": lambda: beats.history(now - timedelta(hours=1))}
        for name, call in calls.items():
            await call()
            samples = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                rows = await call()
                samples.append((time.perf_counter() - t0) * 1000)
            out[name] = {**stats(samples), "rows": len(rows)}
        return out
    finally:
        await store.close()


def anchors(db: Path, now: datetime, repeat: int, old_repeat: int) -> dict[str, Any]:
    """The same SQL with plain sqlite3 on the same file (nothing decoded), and the earlier GROUP BY."""
    conn = sqlite3.connect(db)
    try:
        hour = (iso(now - timedelta(hours=1)),)
        since = (iso(now - STATUS_HORIZON),)
        return {
            "latest": timed_ms(lambda: conn.execute(LATEST_SQL).fetchall(), repeat),
            "latest_since": timed_ms(lambda: conn.execute(LATEST_SQL + " WHERE r.ts >= ?", since).fetchall(), repeat),
            "history_1h": timed_ms(lambda: [conn.execute(sql, hour).fetchall() for sql in HISTORY_SQL], repeat),
            "old_latest": timed_ms(lambda: conn.execute(OLD_LATEST_SQL.format(where="")).fetchall(), old_repeat),
            "old_latest_since": timed_ms(
                lambda: conn.execute(OLD_LATEST_SQL.format(where="WHERE ts >= ?"), since).fetchall(), old_repeat),
        }
    finally:
        conn.close()


def process_ms(argv: list[str], cwd: Path, runs: int) -> dict[str, Any]:
    """Median wall time of `argv` as a process (one warm-up run first); its exit code."""
    code = subprocess.run(argv, capture_output=True, env=clean_env(), cwd=cwd, timeout=120).returncode
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, capture_output=True, env=clean_env(), cwd=cwd, timeout=120)
        samples.append((time.perf_counter() - t0) * 1000)
    return {**stats(samples), "exit_code": code}


def beat_curve(tmp: Path, sizes: list[int], repeat: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    (tmp / "beats").mkdir()
    ops = make_ops(tmp / "beats", pulse_interval="5s")
    beat, results = real_beat(ops)
    now, total, have = datetime.now(timezone.utc), max(sizes), 0
    rows = []
    for size in sizes:
        fill_s = fill_beats(ops.db, now, have, size, total, beat, results) if size > have else 0.0
        have = size
        log(f"{size} beats stored ({fill_s:.1f} s to fill); timing reads")
        rows.append({"beats": size, "results": size * len(results), "fill_s": fill_s,
                     "fazt": asyncio.run(reads(ops.db, now, repeat)),
                     "raw": anchors(ops.db, now, repeat, 3 if size >= 100_000 else repeat)})
    return rows


def event_curve(tmp: Path, sizes: list[int], beats: int, runs: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    from fazt_agent.events import GENESIS

    (tmp / "events").mkdir()
    ops = make_ops(tmp / "events", pulse_interval="5s")
    beat, results = real_beat(ops)
    now = datetime.now(timezone.utc)
    log(f"{beats} beats for status to read")
    fill_beats(ops.db, now, 0, beats, beats, beat, results)
    sqlite_tool = shutil.which("sqlite3")
    fazt = [sys.executable, "-m", "fazt_agent", "--config", str(ops.config)]
    prev, have, total, rows = GENESIS, 0, max(sizes), []
    status_sql = (f"{LATEST_SQL} WHERE r.ts >= '{iso(now - STATUS_HORIZON)}'; "
                  "SELECT * FROM beats ORDER BY id DESC LIMIT 1; SELECT * FROM settings;")
    for size in sizes:
        prev, fill_s = fill_events(ops.db, now, have, size, total, prev)
        have = size
        log(f"{size} events stored ({fill_s:.1f} s to fill); timing processes")
        row: dict[str, Any] = {"events": size, "fill_s": fill_s,
                               "status": process_ms([*fazt, "status"], ops.dir, runs),
                               "events_list": process_ms([*fazt, "events", "list", "--limit", "50"], ops.dir, runs),
                               "python_pass": process_ms([sys.executable, "-c", "pass"], ops.dir, runs)}
        if sqlite_tool:
            row["sqlite3_status"] = process_ms([sqlite_tool, "-readonly", str(ops.db), status_sql], ops.dir, runs)
            row["sqlite3_events_list"] = process_ms([sqlite_tool, "-readonly", str(ops.db), EVENTS_LIST_SQL],
                                                    ops.dir, runs)
        rows.append(row)
    verify = cli(ops, "events", "verify", timeout=600)
    return rows if verify.returncode == 0 else [*rows, {"error": f"events verify: {verify.stderr.strip()}"}]


def _sizes(text: str) -> list[int]:
    values = sorted({int(v) for v in text.split(",") if v.strip()})
    if not values or values[0] < 0:
        raise ValueError(text)
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Reads of beats and events as the stored history grows.")
    parser.add_argument("--beats", default="0,10000,120000,500000", help="beat counts (default 0,10000,120000,500000)")
    parser.add_argument("--events", default="10000,100000,1000000", help="event counts (default 10000,100000,1000000)")
    parser.add_argument("--status-beats", type=int, default=120_960, help="beats stored for the process runs "
                        "(default 120960: a week at 5 s)")
    parser.add_argument("--repeat", type=int, default=20, help="in-process calls per read and size (default 20)")
    parser.add_argument("--runs", type=int, default=5, help="process runs per command and size (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    try:
        beat_sizes, event_sizes = _sizes(args.beats), _sizes(args.events)
    except ValueError:
        parser.error("--beats and --events take comma-separated counts, e.g. 0,10000")
    if min(args.repeat, args.runs) < 1 or args.status_beats < 0 or event_sizes[0] < 1:
        parser.error("--repeat and --runs must be at least 1, event counts at least 1")

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="fazt-bench-history-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            beat_rows = beat_curve(tmp, beat_sizes, args.repeat, log)
            shutil.rmtree(tmp / "beats")
            event_rows = event_curve(tmp, event_sizes, args.status_beats, args.runs, log)
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    errors = [r["error"] for r in event_rows if "error" in r]
    event_rows = [r for r in event_rows if "error" not in r]
    latest_worst = max(r["fazt"]["latest"]["median"] for r in beat_rows)
    biggest = beat_rows[-1]
    met = {"latest_ms": latest_worst <= LATEST_TARGET_MS,
           "history_ms": biggest["fazt"]["history_1h"]["median"] <= HISTORY_TARGET_MS,
           "chain": not errors}
    ok = all(met.values())
    report = {"bench": "history_scale", "beats": beat_rows, "events": event_rows, "errors": errors,
              "target": {"latest_ms": LATEST_TARGET_MS, "history_1h_ms_at_most_beats": HISTORY_TARGET_MS},
              "met": met, "ok": ok}
    if args.json:
        print_json(report)
        return 0 if ok else 1

    print("beats stored vs. reads in process (median ms of "
          f"{args.repeat}; raw = plain sqlite3, same SQL, same file; before = the earlier GROUP BY)")
    print(f"  {'beats':>8} {'results':>9} | {'latest()':>9} {'raw':>7} {'before':>9} | {'since 1h':>9} "
          f"{'raw':>7} {'before':>9} | {'history(1h)':>11} {'raw':>7} {'rows':>5}")
    for r in beat_rows:
        f, a = r["fazt"], r["raw"]
        print(f"  {r['beats']:>8,} {r['results']:>9,} | {f['latest']['median']:>9.2f} {a['latest']['median']:>7.2f} "
              f"{a['old_latest']['median']:>9.1f} | {f['latest_since']['median']:>9.2f} "
              f"{a['latest_since']['median']:>7.2f} {a['old_latest_since']['median']:>9.1f} | "
              f"{f['history_1h']['median']:>11.2f} {a['history_1h']['median']:>7.2f} {f['history_1h']['rows']:>5}")
    print(f"\nevents stored vs. commands as processes ({args.status_beats:,} beats stored; median ms of {args.runs})")
    print(f"  {'events':>9} | {'status':>8} {'sqlite3':>8} | {'events list':>11} {'sqlite3':>8} | "
          f"{'python -c pass':>14}")
    for r in event_rows:
        tool = {k: r.get(f"sqlite3_{k}", {}).get("median", float("nan")) for k in ("status", "events_list")}
        print(f"  {r['events']:>9,} | {r['status']['median']:>8.1f} {tool['status']:>8.1f} | "
              f"{r['events_list']['median']:>11.1f} {tool['events_list']:>8.1f} | {r['python_pass']['median']:>14.1f}")
    for e in errors:
        print(f"  FAILED: {e}")
    print(f"  target: latest() <= {LATEST_TARGET_MS:g} ms at every size ({latest_worst:.2f})  "
          f"{verdict(met['latest_ms'])}; history(1h) <= {HISTORY_TARGET_MS:g} ms at {biggest['beats']:,} beats "
          f"({biggest['fazt']['history_1h']['median']:.2f})  {verdict(met['history_ms'])}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
