"""Run every benchmark (each in its own process, with --json) and print one summary table.

`make bench` calls this. `--quick` shortens the idle window to 15 s. Exit code 0 when every
benchmark ran and met its target, 1 otherwise, 2 for bad arguments.

    python bench/run_all.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from _common import print_json, verdict

HERE = Path(__file__).resolve().parent


def run(script: str, args: list[str], timeout: float) -> dict[str, Any]:
    """One benchmark's JSON report, or {"error": ...} when it crashed or printed no JSON."""
    print(f"running {' '.join([script, *args])} ...", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    try:
        done = subprocess.run([sys.executable, str(HERE / script), *args, "--json"],
                              capture_output=True, text=True, timeout=timeout, cwd=HERE.parent)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g}s"}
    try:
        report: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit code {done.returncode}: {last}"}
    report["exit_code"] = done.returncode
    report["wall_s"] = time.monotonic() - t0
    return report


# (benchmark, label, how to read the value, target text, met or None when there is no target)
Row = tuple[str, str, Callable[[dict[str, Any]], float], str, Callable[[dict[str, Any]], bool] | None]
ROWS: list[Row] = [
    ("idle", "idle RSS at end (MiB)", lambda r: r["rss_mb_end"], "<= 60", lambda r: r["met"]["rss_mb"]),
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


def _scenario(report: dict[str, Any], scenario: str, metric: str, stat: str) -> float | None:
    """One statistic of one decision_overhead scenario, or None when that scenario failed."""
    return report["scenarios"].get(scenario, {}).get(metric, {}).get(stat)


def _format(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run all fazt-agent benchmarks and summarise them.")
    parser.add_argument("--quick", action="store_true", help="a 15 s idle window instead of 60 s")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)

    idle_seconds = 15 if args.quick else 60
    reports = {
        "idle": run("idle.py", ["--seconds", str(idle_seconds), "--interval", "5s"], timeout=idle_seconds + 120),
        "beat_latency": run("beat_latency.py", [], timeout=300),
        "events_throughput": run("events_throughput.py", [], timeout=300),
        "decision_overhead": run("decision_overhead.py", [], timeout=180),
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
