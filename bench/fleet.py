"""The fleet: `servers ping` to 3 agents in parallel, Alertmanager's webhook, a fleet MCP call's overhead.

Makes 3 ops folders with `fazt-agent init` (free loopback ports), starts `fazt-agent run` on each,
creates a read token on each with the CLI, and writes them into a temporary HOME's
`~/.fazt/config.json` with `fazt-agent servers add`. Then:

- `servers ping`: `--pings` rounds of `fleet.ping.ping_all` over the 3 servers (in process: the
  parallel GETs of /metrics alone), p50 and p95 of a round beside p50 of one server pinged alone
  (parallel ≈ the slowest one, not the sum); and the wall time of `fazt-agent servers ping` as a
  subprocess (interpreter start included), `--cli` runs.
- webhook: `--alerts` POSTs of one new firing alert each to /webhooks/alertmanager of the first
  agent (an operate token): each opens an incident, which the shipped policy decides on (notify at
  low autonomy), then a resolved POST closes it; p50/p95 of the firing POST.

- fleet call: `--calls` calls of `fazt_system_status` on the first agent, directly on its /mcp
  (one streamable-HTTP session, the way Claude Code would use it) and through `fazt-agent mcp serve
  --stdio --fleet` (the client's stdio session; the fleet opens a session to the agent's /mcp per
  call): p50 of each, the overhead and the ratio.

No target: exit 0 when every ping, POST and call succeeded, 1 otherwise, 2 for bad arguments.

    python bench/fleet.py [--pings 50] [--cli 5] [--alerts 50] [--calls 50] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import clean_env, make_ops, percentile, print_json

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cli(ops_config: Path | None, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    front = ["--config", str(ops_config)] if ops_config else []
    return subprocess.run([sys.executable, "-m", "fazt_agent", *front, *args], capture_output=True, text=True,
                          timeout=120, env=env or clean_env(), cwd=ROOT)


def start(config: Path, port: int) -> subprocess.Popen[bytes]:
    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "fazt_agent", "--config", str(config), "run"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_env())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited with {proc.returncode}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError("the daemon did not answer /healthz within 60 s")


def token(config: Path, name: str, scope: str) -> str:
    done = cli(config, "tokens", "create", name, "--scope", scope)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return done.stdout.strip()


def bench_ping(home: Path, pings: int, cli_runs: int) -> dict[str, Any]:
    os.environ["HOME"] = str(home)
    from fazt_agent.fleet.config import ClientConfig
    from fazt_agent.fleet.ping import ping, ping_all

    servers = list(ClientConfig.load().servers.values())
    failed = 0
    rounds, alone = [], []
    for _ in range(3):
        ping_all(servers)   # warm-up
    for _ in range(pings):
        t0 = time.perf_counter()
        pongs = ping_all(servers)
        rounds.append((time.perf_counter() - t0) * 1000)
        failed += sum(not p.ok for p in pongs)
        t0 = time.perf_counter()
        failed += not ping(servers[0]).ok
        alone.append((time.perf_counter() - t0) * 1000)
    walls = []
    env = {**clean_env(), "HOME": str(home)}
    for _ in range(cli_runs):
        t0 = time.perf_counter()
        done = cli(None, "servers", "ping", env=env)
        walls.append((time.perf_counter() - t0) * 1000)
        failed += done.returncode != 0
    return {"servers": len(servers), "rounds": pings, "failed": failed,
            "parallel_3_p50_ms": percentile(rounds, 50), "parallel_3_p95_ms": percentile(rounds, 95),
            "one_server_p50_ms": percentile(alone, 50), "cli_wall_p50_ms": percentile(walls, 50)}


def bench_webhook(port: int, secret: str, alerts: int) -> dict[str, Any]:
    import httpx

    url = f"http://127.0.0.1:{port}/webhooks/alertmanager"
    headers = {"Authorization": f"Bearer {secret}"}
    times, failed = [], 0

    def body(i: int, status: str) -> dict[str, Any]:
        return {"version": "4", "status": status, "receiver": "bench", "groupKey": "{}", "alerts": [{
            "status": status, "labels": {"alertname": "BenchAlert", "instance": f"host-{i}:9100"},
            "annotations": {"summary": "bench"}, "fingerprint": f"bench-{i}"}]}

    with httpx.Client(timeout=30) as http:
        for i in range(alerts):
            t0 = time.perf_counter()
            r = http.post(url, json=body(i, "firing"), headers=headers)
            times.append((time.perf_counter() - t0) * 1000)
            failed += r.status_code != 200 or r.json().get("opened") != 1
            r = http.post(url, json=body(i, "resolved"), headers=headers)
            failed += r.status_code != 200 or r.json().get("resolved") != 1
    return {"alerts": alerts, "failed": failed, "firing_post_p50_ms": percentile(times, 50),
            "firing_post_p95_ms": percentile(times, 95)}


async def _calls(client: Any, tool: str, args: dict[str, Any], calls: int) -> tuple[list[float], int]:
    times, failed = [], 0
    for _ in range(5):
        await client.call_tool(tool, args)   # warm-up
    for _ in range(calls):
        t0 = time.perf_counter()
        result = await client.call_tool(tool, args)
        times.append((time.perf_counter() - t0) * 1000)
        failed += bool(result.is_error)
    return times, failed


async def bench_fleet_call(home: Path, port: int, secret: str, calls: int) -> dict[str, Any]:
    """`fazt_system_status` on agent a: directly on its /mcp (one session) and through
    `mcp serve --stdio --fleet` (stdio session; each call opens a session to a's /mcp)."""
    import httpx2
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters
    from mcp.client.streamable_http import streamable_http_client

    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {secret}"}, timeout=30) as http:
        async with Client(streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http)) as client:
            direct, failed_direct = await _calls(client, "fazt_system_status", {}, calls)
    params = StdioServerParameters(command=sys.executable, cwd=str(home), env={**clean_env(), "HOME": str(home)},
                                   args=["-m", "fazt_agent", "mcp", "serve", "--stdio", "--fleet"])
    async with Client(params) as client:
        fleet, failed_fleet = await _calls(client, "fazt_system_status", {"server": "a"}, calls)
    p50_direct, p50_fleet = percentile(direct, 50), percentile(fleet, 50)
    return {"calls": calls, "failed": failed_direct + failed_fleet, "direct_p50_ms": p50_direct,
            "fleet_p50_ms": p50_fleet, "overhead_p50_ms": p50_fleet - p50_direct, "ratio": p50_fleet / p50_direct}


def run(pings: int, cli_runs: int, alerts: int, calls: int = 50) -> dict[str, Any]:
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="fazt-bench-fleet-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        try:
            opses = []
            for name in ("a", "b", "c"):
                folder = Path(tmp) / name
                folder.mkdir()
                ops = make_ops(folder, pulse_interval="60s")
                opses.append(ops)
                procs.append(start(ops.config, ops.port))
                secret = token(ops.config, "laptop", "read")
                done = cli(None, "servers", "add", name, "--url", f"http://127.0.0.1:{ops.port}", "--token", secret,
                           env={**clean_env(), "HOME": str(home)})
                if done.returncode != 0:
                    raise RuntimeError(done.stderr)
            report = {"ping": bench_ping(home, pings, cli_runs)}
            report["webhook"] = bench_webhook(opses[0].port, token(opses[0].config, "am", "operate"), alerts)
            import asyncio

            report["fleet_call"] = asyncio.run(bench_fleet_call(home, opses[0].port,
                                                                token(opses[0].config, "direct", "read"), calls))
            return report
        finally:
            for p in procs:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pings", type=int, default=50)
    parser.add_argument("--cli", type=int, default=5)
    parser.add_argument("--alerts", type=int, default=50)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if min(args.pings, args.cli, args.alerts, args.calls) < 1:
        parser.error("--pings, --cli, --alerts and --calls must be at least 1")
    report = run(args.pings, args.cli, args.alerts, args.calls)
    failed = sum(part["failed"] for part in report.values())
    if args.json:
        print_json(report)
    else:
        p, w = report["ping"], report["webhook"]
        print(f"servers ping, 3 servers in parallel: p50 {p['parallel_3_p50_ms']:.1f} ms, "
              f"p95 {p['parallel_3_p95_ms']:.1f} ms (one server alone: p50 {p['one_server_p50_ms']:.1f} ms); "
              f"`fazt-agent servers ping` wall p50 {p['cli_wall_p50_ms']:.0f} ms")
        print(f"alertmanager webhook, one new firing alert (incident + decision): p50 {w['firing_post_p50_ms']:.1f} ms, "
              f"p95 {w['firing_post_p95_ms']:.1f} ms")
        f = report["fleet_call"]
        print(f"fazt_system_status, {f['calls']} calls: direct /mcp p50 {f['direct_p50_ms']:.1f} ms, through the fleet "
              f"p50 {f['fleet_p50_ms']:.1f} ms (overhead {f['overhead_p50_ms']:.1f} ms, ratio {f['ratio']:.2f})")
        print(f"no target: reported for the record; {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
