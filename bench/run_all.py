"""Run every benchmark (each in its own process, with --json) and print one summary table.

`make bench` calls this. `--quick` shortens the idle window to 15 s, runs http_scale at 500
checks only, with a 10 s window, and kinds_scale at 1, 10 and 100 checks. Exit code 0 when every
benchmark ran and met its target, 1 otherwise, 2 for bad arguments.

    python bench/run_all.py [--quick] [--json] [--reports FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from _common import print_json, verdict

HERE = Path(__file__).resolve().parent


def run(script: str, args: list[str], timeout: float) -> dict[str, Any]:
    """One benchmark's JSON report, or {"error": ...} when it crashed, printed no JSON or ran out of
    time. The benchmark runs in a session of its own, so a timeout ends what it started too (its
    daemon, Monit, node_exporter), not only the benchmark's own process."""
    print(f"running {' '.join([script, *args])} ...", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(HERE / script), *args, "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=HERE.parent, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g}s"}
    finally:
        _kill_session(proc)   # anything it left behind
    try:
        report: dict[str, Any] = json.loads(stdout)
    except json.JSONDecodeError:
        last = (stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit code {proc.returncode}: {last}"}
    report["exit_code"] = proc.returncode
    report["wall_s"] = time.monotonic() - t0
    return report


def _kill_session(proc: subprocess.Popen[str]) -> None:
    """SIGKILL to every process still in the benchmark's session, then reap the benchmark."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


# (benchmark, label, how to read the value, target text, met or None when there is no target)
Row = tuple[str, str, Callable[[dict[str, Any]], float], str, Callable[[dict[str, Any]], bool] | None]
ROWS: list[Row] = [
    ("idle", "idle RSS at end (MiB)", lambda r: r["rss_mb_end"], "<= 40", lambda r: r["met"]["rss_mb"]),
    ("idle", "idle: node_exporter RSS (MiB)", lambda r: r["anchors"]["node_exporter"]["rss_mb_end"], "", None),
    ("idle", "idle: Monit RSS (MiB)", lambda r: r["anchors"]["monit"]["rss_mb_end"], "", None),
    ("idle", "idle USS at end (MiB)", lambda r: r["uss_mb_end"], "", None),
    ("idle", "idle CPU (%)", lambda r: r["cpu_percent"], "<= 0.5", lambda r: r["met"]["cpu_percent"]),
    ("idle", "SIGTERM to exit (s)", lambda r: r["stop_s"], "exit 0", lambda r: r["exit_code"] == 0),
    ("beat_latency", "beat median (ms)", lambda r: r["beat_ms"]["median"], "<= 50", lambda r: r["met"]),
    ("beat_latency", "beat p95 (ms)", lambda r: r["beat_ms"]["p95"], "", None),
    ("beat_latency", "checks only median (ms)", lambda r: r["checks_ms"]["median"], "", None),
    ("beat_latency", "raw psutil floor median (ms)", lambda r: r["floor"]["round_ms"]["median"], "", None),
    ("events_throughput", "emit_many batched (events/s)", lambda r: r["batched"]["per_s"], ">= 10000",
     lambda r: r["met"]),
    ("events_throughput", "emit single (events/s)", lambda r: r["single"]["per_s"], "", None),
    ("events_throughput", "raw sqlite3 plain (events/s)", lambda r: r["raw_sqlite_plain"]["per_s"], "", None),
    ("events_throughput", "verify (rows/s)", lambda r: r["verify"]["per_s"], "chain ok", lambda r: r["verify"]["ok"]),
    ("events_throughput", "emit_many / raw executemany", lambda r: r["ratio_to_raw_indexed"], ">= 0.5",
     lambda r: r["ratio_to_raw_indexed"] >= 0.5),
    ("history_scale", "latest() worst size (ms)", lambda r: max(b["fazt"]["latest"]["median"] for b in r["beats"]),
     "<= 2", lambda r: r["met"]["latest_ms"]),
    ("history_scale", "history(1h) most beats (ms)", lambda r: r["beats"][-1]["fazt"]["history_1h"]["median"],
     "<= 10", lambda r: r["met"]["history_ms"]),
    ("history_scale", "status process, most events (ms)", lambda r: r["events"][-1]["status"]["median"], "", None),
    ("history_scale", "events list, most events (ms)", lambda r: r["events"][-1]["events_list"]["median"], "", None),
    ("http_scale", "500 http: beat median (ms)", lambda r: _http(r, 500, "fazt", "beat_ms_median"), "<= 1000",
     lambda r: bool(r["met"]) and r["met"]["beat_ms"]),
    ("http_scale", "500 http: results ok (%)", lambda r: _http_ok(r, 500), "100",
     lambda r: bool(r["met"]) and r["met"]["all_ok"]),
    ("http_scale", "500 http: daemon RSS max (MiB)", lambda r: _http(r, 500, "fazt", "rss_mb_max"), "<= 70",
     lambda r: bool(r["met"]) and r["met"]["rss_mb"]),
    ("http_scale", "500 http: daemon CPU (%)", lambda r: _http(r, 500, "fazt", "cpu_percent"), "<= 5",
     lambda r: bool(r["met"]) and r["met"]["cpu_percent"]),
    ("http_scale", "500 http: Monit RSS max (MiB)", lambda r: _http(r, 500, "monit", "rss_mb_max"), "", None),
    ("http_scale", "500 http: Monit CPU (%)", lambda r: _http(r, 500, "monit", "cpu_percent"), "", None),
    # one row per check kind: ms per check at the largest N / at N = 10; met: time and RSS linear
    *[("kinds_scale", f"{kind}: ms/check, top / N=10", lambda r, k=kind: _kind(r, k, "time_ratio"), "<=2 or CPU",
       lambda r, k=kind: _kind(r, k, "time_ok") is True and _kind(r, k, "rss_ok") is not False)
      for kind in ("app", "cert_file", "command", "dir_size", "disk", "file_age", "http", "process", "system", "tls")],
    ("kinds_scale", "kinds: daemon RSS, top N, max (MiB)", lambda r: _kinds_rss(r), "", None),
    ("cli_latency", "python -c pass median (ms)", lambda r: _cli(r, "python -c pass"), "", None),
    ("cli_latency", "monit status median (ms)", lambda r: _cli(r, "monit status"), "", None),
    ("cli_latency", "floor: asyncio+pydantic (ms)", lambda r: _cli(r, "floor: asyncio, sqlite3, pydantic"), "", None),
    ("cli_latency", "status median (ms)", lambda r: _cli(r, "status"), "<= 100", lambda r: r["met"]["status"]),
    ("cli_latency", "events list --limit 50 med (ms)", lambda r: _cli(r, "events list"), "<= 100",
     lambda r: r["met"]["events list"]),
    ("cli_latency", "halts list median (ms)", lambda r: _cli(r, "halts list"), "<= 100",
     lambda r: r["met"]["halts list"]),
    ("cli_latency", "approve N median (ms)", lambda r: _cli(r, "approve"), "<= 100", lambda r: r["met"]["approve"]),
    ("cli_latency", "run to /healthz 200 med (ms)", lambda r: r["starts_ms"]["fazt-agent run → /healthz"]["median"],
     "<= 200", lambda r: r["met"]["cold start"]),
    ("cli_latency", "run to READY=1 med (ms)", lambda r: r["starts_ms"]["fazt-agent run → READY=1"]["median"],
     "", None),
    ("cli_latency", "run, no snapshot, to /healthz (ms)",
     lambda r: r["starts_ms"]["fazt-agent run → /healthz, no snapshot"]["median"], "", None),
    ("cli_latency", "node_exporter to /metrics (ms)", lambda r: r["starts_ms"]["node_exporter → /metrics"]["median"],
     "", None),
    ("decision_overhead", "decide 1: apply started med (ms)", lambda r: _scenario(r, "n1", "apply_last_ms", "median"),
     "rounds ok", lambda r: r["ok"]),
    ("decision_overhead", "decide 1: apply started p95 (ms)", lambda r: _scenario(r, "n1", "apply_last_ms", "p95"),
     "", None),
    ("decision_overhead", "decide 100: last apply med (ms)",
     lambda r: _scenario(r, "n100", "apply_last_ms", "median"), "", None),
    ("decision_overhead", "decide 100: last apply p95 (ms)", lambda r: _scenario(r, "n100", "apply_last_ms", "p95"),
     "", None),
    ("decision_overhead", "decide 100: ms per incident med",
     lambda r: _scenario(r, "n100", "per_incident_ms", "median"), "", None),
]


def _cli(report: dict[str, Any], name: str) -> float:
    """The median wall time of one process of cli_latency."""
    return float(report["commands"][name]["wall_ms"]["median"])


def _scenario(report: dict[str, Any], scenario: str, metric: str, stat: str) -> float | None:
    """One statistic of one decision_overhead scenario, or None when that scenario failed."""
    return report["scenarios"].get(scenario, {}).get(metric, {}).get(stat)


def _http(report: dict[str, Any], n: int, who: str, metric: str) -> float | None:
    """One figure of http_scale at `n` checks, of fazt-agent or of Monit; None when that run failed."""
    row = next((r for r in report["rows"] if r["n"] == n), None)
    side = row and row.get(who)
    return side.get(metric) if side else None


def _kind(report: dict[str, Any], kind: str, key: str) -> Any:
    """One figure of kinds_scale's linearity verdict of `kind`; None when that kind was not measured."""
    return report["kinds"].get(kind, {}).get("linear", {}).get(key)


def _kinds_rss(report: dict[str, Any]) -> float | None:
    """The largest daemon RSS of kinds_scale at its largest size, over every kind."""
    tops = [data["rows"][-1]["fazt"].get("rss_mb_end") for data in report["kinds"].values() if data["rows"]]
    return max((t for t in tops if t is not None), default=None)


def _http_ok(report: dict[str, Any], n: int) -> float | None:
    results, ok = _http(report, n, "fazt", "results"), _http(report, n, "fazt", "results_ok")
    return 100 * ok / results if results and ok is not None else None


def _format(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run all fazt-agent benchmarks and summarise them.")
    parser.add_argument("--quick", action="store_true", help="a 15 s idle window instead of 60 s")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--reports", type=Path, metavar="FILE",
                        help="also write every benchmark's whole report (its scale curves) to FILE as JSON")
    args = parser.parse_args(argv)

    idle_seconds = 15 if args.quick else 60
    reports = {
        # three windows one after the other (the daemon, node_exporter, Monit), each after a 5 s warm-up
        "idle": run("idle.py", ["--seconds", str(idle_seconds), "--interval", "5s"],
                    timeout=3 * (idle_seconds + 5) + 120),
        "beat_latency": run("beat_latency.py", [], timeout=300),
        "events_throughput": run("events_throughput.py", [], timeout=300),
        # --quick: up to a week of beats (120k) and 100k events
        "history_scale": run("history_scale.py", ["--beats", "0,10000,120000", "--events", "10000,100000",
                                                  "--runs", "3"] if args.quick else [], timeout=900),
        "decision_overhead": run("decision_overhead.py", [], timeout=180),
        # beside `python -c pass`, Monit and node_exporter (scripts/bench-deps installs them)
        "cli_latency": run("cli_latency.py", ["--runs", "10", "--starts", "5"] if args.quick else [], timeout=900),
        # beside Monit (scripts/bench-deps installs it); --quick: 500 checks only, a 10 s window
        "http_scale": run("http_scale.py", ["--checks", "500", "--seconds", "10"] if args.quick else [],
                          timeout=300 if args.quick else 900),
        # every check kind at 1/10/100/500 checks, beside Monit and the bare calls; --quick: up to 100
        "kinds_scale": run("kinds_scale.py", ["--checks", "1,10,100", "--beats", "3", "--max-seconds", "300"]
                           if args.quick else [], timeout=420 if args.quick else 720),
    }
    table = []
    all_ok = True
    for bench, label, value, target, met in ROWS:
        report = reports[bench]
        if "error" in report:
            continue
        ok = met(report) if met else None
        all_ok &= ok is not False
        table.append({"bench": bench, "metric": label, "value": value(report), "target": target, "ok": ok})
    errors = {name: r["error"] for name, r in reports.items() if "error" in r}
    all_ok &= not errors
    if args.reports is not None:
        args.reports.write_text(json.dumps(reports, indent=1, default=str) + "\n")
    if args.json:
        print_json({"quick": args.quick, "ok": all_ok, "summary": table, "errors": errors, "reports": reports})
        return 0 if all_ok else 1

    print(f"{'metric':32} {'value':>12}  {'target':10} result")
    for row in table:
        result = "" if row["ok"] is None else verdict(row["ok"])
        print(f"{row['metric']:32} {_format(row['value']):>12}  {row['target']:10} {result}")
    if "idle" in reports and "modules" in reports["idle"]:
        print(f"heavy modules loaded by the daemon: {reports['idle']['modules']['heavy']}")
    for name, error in errors.items():
        print(f"{name}: FAILED: {error}")
    print("all targets met" if all_ok else "some targets MISSED or a benchmark failed")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
