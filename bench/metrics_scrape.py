"""GET /metrics latency and its cost to the daemon's memory.

Makes an ops folder with `fazt-agent init` (the shipped checks, a free loopback port, a 5 s
pulse), starts `fazt-agent run`, waits for two beats, creates a read token with the CLI, then
scrapes /metrics `--scrapes` times over one keep-alive connection (as Prometheus does): p50, p99,
the body size and series count, and the daemon's RSS before the first scrape and after the last.
No target: exit 0 when every scrape answered 200, 1 otherwise, 2 for bad arguments.

    python bench/metrics_scrape.py [--scrapes 500] [--json]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import MB, clean_env, make_ops, percentile, print_json


def run(scrapes: int) -> dict[str, Any]:
    import httpx
    import psutil

    with tempfile.TemporaryDirectory(prefix="fazt-bench-metrics-") as tmp:
        ops = make_ops(Path(tmp), pulse_interval="5s")
        cli = [sys.executable, "-m", "fazt_agent", "--config", str(ops.config)]
        daemon = subprocess.Popen([*cli, "run"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env=clean_env(), cwd=ops.dir)
        try:
            base = f"http://127.0.0.1:{ops.port}"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).json().get("last_beat"):
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            time.sleep(5)   # a second beat and its writes settle
            token = subprocess.run([*cli, "tokens", "create", "bench", "--scope", "read"], capture_output=True,
                                   text=True, check=True, env=clean_env()).stdout.strip()
            proc = psutil.Process(daemon.pid)
            before = proc.memory_info().rss / MB
            times, failed, body = [], 0, ""
            with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=10) as client:
                for _ in range(scrapes):
                    t0 = time.perf_counter()
                    response = client.get(f"{base}/metrics")
                    times.append((time.perf_counter() - t0) * 1000)
                    failed += response.status_code != 200
                    body = response.text
            after = proc.memory_info().rss / MB
        finally:
            daemon.terminate()
            daemon.wait(10)
    series = [line for line in body.splitlines() if line and not line.startswith("#")]
    return {"scrapes": scrapes, "failed": failed, "p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99),
            "body_bytes": len(body.encode()), "series": len(series),
            "daemon_rss_mb": {"before": before, "after": after}, "ok": failed == 0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="GET /metrics latency and the daemon's memory.")
    parser.add_argument("--scrapes", type=int, default=500, help="sequential scrapes")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    if args.scrapes < 10:
        parser.error("--scrapes must be at least 10")
    report = run(args.scrapes)
    if args.json:
        print_json(report)
    else:
        rss = report["daemon_rss_mb"]
        print(f"GET /metrics, {report['scrapes']} scrapes on one connection ({report['failed']} failed):")
        print(f"  p50 {report['p50_ms']:.2f} ms  p99 {report['p99_ms']:.2f} ms  "
              f"({report['series']} series, {report['body_bytes']} bytes)")
        print(f"  daemon RSS {rss['before']:.1f} MiB before, {rss['after']:.1f} MiB after")
        print("  no target: reported for the record")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
