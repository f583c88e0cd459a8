"""Beat latency of the shipped checks, in process, beside the raw psutil calls they make.

Opens a Runtime on a fresh ops folder (the default pulse/*.toml: `system` and `disk`) and runs
`pulse.beat(everything=True)` N times, timing each call (checks + storing the beat + the
`pulse.beat` event) and reading the beat's own `duration_ms` (checks only). One cold beat runs
first and is reported apart: it primes psutil's CPU counter (a 0.1 s measurement) and starts
the thread pool. The floor is the same psutil/os calls made directly, N rounds, no asyncio.

Target: beat median <= 50 ms. Exit code 0 when met, 1 when missed, 2 for bad arguments.

    python bench/beat_latency.py [--beats 50] [--max-seconds 120] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import psutil

from _common import make_ops, print_json, stats, verdict

TARGET_MEDIAN_MS = 50.0


async def beats(config_path: Path, n: int, deadline: float) -> dict[str, Any]:
    from fazt_agent.config import load_config
    from fazt_agent.runtime import Runtime

    rt = await Runtime.open(load_config(config_path))
    try:
        t0 = time.perf_counter()
        cold = await rt.pulse.beat(everything=True)
        cold_ms = (time.perf_counter() - t0) * 1000
        walls: list[float] = []
        checks: list[float] = []
        per_target: dict[str, list[float]] = {}
        for _ in range(n):
            if time.monotonic() > deadline:
                break
            t0 = time.perf_counter()
            beat = await rt.pulse.beat(everything=True)
            walls.append((time.perf_counter() - t0) * 1000)
            checks.append(beat.duration_ms)
            for r in beat.results:
                per_target.setdefault(f"{r.check}[{r.target}]" if r.target else r.check, []).append(r.duration_ms)
    finally:
        await rt.close()
    return {
        "checks": [c.name for c in rt.pulse.checks],
        "results_per_beat": len(cold.results),
        "cold_beat_ms": cold_ms, "cold_checks_ms": cold.duration_ms,
        "beat_ms": stats(walls), "checks_ms": stats(checks),
        "store_and_event_ms": stats([w - c for w, c in zip(walls, checks)]),
        "per_target_ms": {k: stats(v) for k, v in per_target.items()},
    }


def floor(n: int, deadline: float) -> dict[str, Any]:
    """The psutil/os calls of the `system` and `disk` checks, timed directly over N rounds."""
    from fazt_agent.pulse.disk import real_mounts

    mounts = real_mounts()  # which mounts the disk check measures; chosen once, outside the timing
    calls: list[tuple[str, Callable[[], object]]] = [
        ("cpu_percent", lambda: psutil.cpu_percent(None)),
        ("getloadavg", psutil.getloadavg),
        ("cpu_count", psutil.cpu_count),
        ("virtual_memory", psutil.virtual_memory),
        ("swap_memory", psutil.swap_memory),
        ("boot_time", psutil.boot_time),
        ("disk_partitions", lambda: psutil.disk_partitions(all=False)),
    ]
    for m in mounts:
        calls.append((f"disk_usage+statvfs({m})", lambda m=m: (psutil.disk_usage(m), os.statvfs(m))))
    psutil.cpu_percent(None)  # prime the baseline, as the check's first beat does
    rounds: list[float] = []
    per_call: dict[str, list[float]] = {name: [] for name, _ in calls}
    for _ in range(n):
        if time.monotonic() > deadline:
            break
        start = time.perf_counter()
        for name, fn in calls:
            t0 = time.perf_counter()
            fn()
            per_call[name].append((time.perf_counter() - t0) * 1000)
        rounds.append((time.perf_counter() - start) * 1000)
    return {"mounts": mounts, "round_ms": stats(rounds), "per_call_ms": {k: stats(v) for k, v in per_call.items()}}


def _row(label: str, s: dict[str, float]) -> str:
    return f"  {label:32} {s['median']:8.3f} {s['p95']:8.3f} {s['min']:8.3f} {s['max']:8.3f}   n={s['n']}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Beat latency of the shipped checks.")
    parser.add_argument("--beats", type=int, default=50, help="beats (and floor rounds) to time (default 50)")
    parser.add_argument("--max-seconds", type=float, default=120.0,
                        help="stop early after this long, reporting what was measured (default 120)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    if args.beats < 1 or args.max_seconds <= 0:
        parser.error("--beats must be at least 1 and --max-seconds positive")

    deadline = time.monotonic() + args.max_seconds
    with tempfile.TemporaryDirectory(prefix="fazt-bench-beat-") as tmp:
        try:
            ops = make_ops(Path(tmp))
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        result = asyncio.run(beats(ops.config, args.beats, deadline))
    raw = floor(args.beats, deadline + args.max_seconds / 4)
    ok = result["beat_ms"]["median"] <= TARGET_MEDIAN_MS
    report = {"bench": "beat_latency", "beats": args.beats, **result, "floor": raw,
              "target": {"beat_median_ms": TARGET_MEDIAN_MS}, "met": ok}
    if args.json:
        print_json(report)
        return 0 if ok else 1

    print(f"beat latency: checks {result['checks']} ({result['results_per_beat']} results per beat), "
          f"mounts {raw['mounts']}")
    print(f"  cold first beat: {result['cold_beat_ms']:.1f} ms ({result['cold_checks_ms']:.1f} ms checks), "
          "not counted below")
    print(f"  {'ms':32} {'median':>8} {'p95':>8} {'min':>8} {'max':>8}")
    print(_row("beat (checks + store + event)", result["beat_ms"]))
    print(_row("checks only", result["checks_ms"]))
    print(_row("store + event (beat - checks)", result["store_and_event_ms"]))
    print(_row("raw psutil floor", raw["round_ms"]))
    print("  per check target (inside the beat):")
    for name, s in result["per_target_ms"].items():
        print(_row("  " + name, s))
    print("  per raw call:")
    for name, s in raw["per_call_ms"].items():
        print(_row("  " + name, s))
    print(f"  target: beat median <= {TARGET_MEDIAN_MS:g} ms  {verdict(ok)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
