"""MCP tool-call latency over streamable HTTP: `fazt_pulse_status` on the daemon's /mcp beside a bare
`mcp` SDK server with one trivial tool, measured in the same run with the same client.

Makes an ops folder with `fazt-agent init` (a free loopback port), starts `fazt-agent run`, waits for
/healthz and one beat, notes the daemon's RSS, creates a read token with the CLI, and calls
`fazt_pulse_status` with the `mcp` Python client (one session, the 2025-11-25 protocol that Claude
Code and the TypeScript SDK speak; `--mode auto` for 2026-07-28). Each fazt call reads the latest
results from SQLite, checks the token and scope, and appends an `mcp.call` event (one write
transaction). The bare server is this script run as `--bare-server PORT`: `MCPServer` with a tool
that returns "ok", served by the SDK's own `streamable_http_app` under uvicorn, no token. Warm-up
calls first; then `--calls` sequential calls each: p50, p99, mean and calls per second, and the
ratio fazt / bare; the same tool on a standalone `fazt-agent mcp serve --http` (the worker's own
server without the daemon's hop in front) shows what that hop costs.

A second anchor separates what fazt adds from what its answer costs the SDK and the client: the bare
server's tool `pulse_status` returns the very `PulseStatus` the daemon's first call returned (built
once, the same model and output schema), so the client parses and validates the same payload. The
gap to it is fazt's own: the daemon's hop, the token, the store read and the `mcp.call` event.

The three servers are measured in one event loop, interleaved: `--rounds` rounds, each making
calls/rounds calls on every server in turn (the order rotating), so a machine whose load changes
during the run (other processes on shared cores) weighs on all three alike and their ratio holds.
Beside the wall-clock figures, the CPU time each call costs (user + system) is reported per
process: the client (this script), the daemon and its worker, the bare server, the standalone
one. Calls are sequential, so on a busy machine the calls per second follow the CPU a call costs
across the processes it crosses; the CPU ratio is the steadier figure of the two.

The daemon serves /mcp through a worker process that starts at the first request and stops when
idle (`[http] mcp_idle`, 5 s here): also reported are the time of the first call (worker start,
session, call), the daemon's and the worker's RSS after the calls, and the daemon's RSS before /mcp
was used and after the worker stopped. No target: exit 0 when every call succeeded, 1 otherwise,
2 for bad arguments.

    python bench/mcp_latency.py [--calls 500] [--warmup 50] [--rounds 10] [--mode legacy|auto] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import tomllib
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import tomli_w

from _common import MB, clean_env, free_port, make_ops, percentile, print_json

HERE = Path(__file__).resolve().parent


def bare_server(port: int, payload: str | None = None) -> None:
    import uvicorn
    from mcp.server.mcpserver import MCPServer

    from fazt_agent.mcp.models import PulseStatus

    server = MCPServer("bare", log_level="WARNING")

    @server.tool()
    def ping() -> str:
        """Return ok."""
        return "ok"

    if payload:
        status = PulseStatus.model_validate(json.loads(Path(payload).read_text()))

        def pulse_status() -> PulseStatus:
            """The payload fazt_pulse_status returned, built once."""
            return status

        pulse_status.__annotations__["return"] = PulseStatus   # a class, not the name (PEP 563 strings)
        server.tool()(pulse_status)

    uvicorn.run(server.streamable_http_app(), host="127.0.0.1", port=port, log_level="warning")


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout:g}s")


async def measure(servers: dict[str, tuple[str, str | None, str, list[int]]], calls: int, warmup: int, rounds: int,
                  mode: str) -> dict[str, dict[str, Any]]:
    """Each server's calls, interleaved: `servers` maps a name to (url, token, tool, the pids of the
    processes serving it). Per server: p50, p99, mean, calls per second over its own calls, and the
    CPU milliseconds per call of the client and of each serving process."""
    import httpx2
    import psutil
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    def cpu(proc: psutil.Process) -> float:
        t = proc.cpu_times()
        return t.user + t.system

    per_round = max(1, calls // rounds)
    results: dict[str, dict[str, Any]] = {}
    async with AsyncExitStack() as stack:
        clients = {}
        for name, (url, token, tool, pids) in servers.items():
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            http = await stack.enter_async_context(httpx2.AsyncClient(headers=headers, timeout=30))
            clients[name] = await stack.enter_async_context(
                Client(streamable_http_client(url, http_client=http), mode=mode))
            for _ in range(warmup):
                await clients[name].call_tool(tool, {})
            results[name] = {"times": [], "wall": 0.0, "failed": 0, "client_cpu": 0.0, "server_cpu": [0.0] * len(pids),
                             "procs": [psutil.Process(pid) for pid in pids]}
        names = list(servers)
        for n in range(rounds):
            for name in names[n % len(names):] + names[:n % len(names)]:
                tool, r, client = servers[name][2], results[name], clients[name]
                before = [cpu(proc) for proc in r["procs"]]
                c0, t_all = time.process_time(), time.perf_counter()
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    result = await client.call_tool(tool, {})
                    r["times"].append((time.perf_counter() - t0) * 1000)
                    r["failed"] += bool(result.is_error)
                r["wall"] += time.perf_counter() - t_all
                r["client_cpu"] += time.process_time() - c0
                r["server_cpu"] = [s + cpu(proc) - b for s, proc, b in zip(r["server_cpu"], r["procs"], before)]
    out = {}
    for name, r in results.items():
        times, done = r["times"], len(r["times"])
        out[name] = {"tool": servers[name][2], "calls": done, "failed": r["failed"], "p50_ms": percentile(times, 50),
                     "p99_ms": percentile(times, 99), "mean_ms": sum(times) / done, "calls_per_s": done / r["wall"],
                     "cpu_ms_per_call": {"client": r["client_cpu"] * 1000 / done,
                                         "servers": [c * 1000 / done for c in r["server_cpu"]]}}
    return out


def cpu_total(r: dict[str, Any]) -> float:
    """CPU milliseconds one call costs across the client and every serving process."""
    return r["cpu_ms_per_call"]["client"] + sum(r["cpu_ms_per_call"]["servers"])


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / MB


def worker_pid(port: int) -> int | None:
    import httpx

    return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()["mcp_worker_pid"]


async def first_call(url: str, token: str) -> tuple[float, dict[str, Any]]:
    """Milliseconds from nothing running to the first result (worker start, session, call), and
    the result's structured content."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    t0 = time.perf_counter()
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            result = await client.call_tool("fazt_pulse_status", {})
            assert result.structured_content is not None and not result.is_error
            return (time.perf_counter() - t0) * 1000, result.structured_content


def run(calls: int, warmup: int, rounds: int, mode: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fazt-bench-mcp-") as tmp:
        ops = make_ops(Path(tmp), pulse_interval="60s")
        config = tomllib.loads(ops.config.read_text())
        config["http"]["mcp_idle"] = "5s"
        ops.config.write_text(tomli_w.dumps(config))
        cli = [sys.executable, "-m", "fazt_agent", "--config", str(ops.config)]
        daemon = subprocess.Popen([*cli, "run"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env=clean_env(), cwd=ops.dir)
        bare_port = free_port()
        bare: subprocess.Popen[bytes] | None = None
        direct_port = free_port()
        direct = subprocess.Popen([*cli, "mcp", "serve", "--http", "--listen", f"127.0.0.1:{direct_port}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_env(), cwd=ops.dir)
        try:
            wait_http(f"http://127.0.0.1:{ops.port}/healthz", daemon)
            wait_http(f"http://127.0.0.1:{direct_port}/healthz", direct)
            time.sleep(3)   # the first beat and its writes settle
            before = rss_mb(daemon.pid)
            token = subprocess.run([*cli, "tokens", "create", "bench", "--scope", "read"], capture_output=True,
                                   text=True, check=True, env=clean_env()).stdout.strip()
            url = f"http://127.0.0.1:{ops.port}/mcp"
            cold, payload = asyncio.run(first_call(url, token))
            (Path(tmp) / "payload.json").write_text(json.dumps(payload))
            bare = subprocess.Popen([sys.executable, str(HERE / "mcp_latency.py"), "--bare-server", str(bare_port),
                                     "--payload", str(Path(tmp) / "payload.json")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_env())
            wait_http(f"http://127.0.0.1:{bare_port}/mcp", bare)
            pid = worker_pid(ops.port)
            if pid is None:
                raise RuntimeError("the daemon's MCP worker is not running after the first call")
            measured = asyncio.run(measure({
                "fazt": (url, token, "fazt_pulse_status", [daemon.pid, pid]),
                "bare": (f"http://127.0.0.1:{bare_port}/mcp", None, "ping", [bare.pid]),
                "bare_payload": (f"http://127.0.0.1:{bare_port}/mcp", None, "pulse_status", [bare.pid]),
                "standalone": (f"http://127.0.0.1:{direct_port}/mcp", token, "fazt_pulse_status", [direct.pid]),
            }, calls, warmup, rounds, mode))
            fazt, base, standalone = measured["fazt"], measured["bare"], measured["standalone"]
            same = measured["bare_payload"]
            after = rss_mb(daemon.pid)
            pid = worker_pid(ops.port)
            worker = rss_mb(pid) if pid else float("nan")
            deadline = time.monotonic() + 30
            while worker_pid(ops.port) is not None and time.monotonic() < deadline:
                time.sleep(0.2)
            stopped = rss_mb(daemon.pid)
        finally:
            for proc in (daemon, bare, direct):
                if proc is not None:
                    proc.terminate()
                    proc.wait(10)
    return {"mode": mode, "rounds": rounds, "fazt": fazt, "bare": base, "bare_payload": same, "standalone": standalone,
            "worker_hop_p50_ms": fazt["p50_ms"] - standalone["p50_ms"],
            "ratio_p50": fazt["p50_ms"] / base["p50_ms"], "ratio_p99": fazt["p99_ms"] / base["p99_ms"],
            "ratio_calls_per_s": fazt["calls_per_s"] / base["calls_per_s"],
            "ratio_calls_per_s_same_payload": fazt["calls_per_s"] / same["calls_per_s"],
            "ratio_cpu": cpu_total(base) / cpu_total(fazt),
            "ratio_cpu_standalone": cpu_total(base) / cpu_total(standalone),
            "ratio_cpu_same_payload": cpu_total(same) / cpu_total(fazt),
            "first_call_ms": cold,
            "rss_mb": {"daemon_before_first_mcp_call": before, "daemon_after_calls": after,
                       "worker_after_calls": worker, "daemon_after_worker_stopped": stopped},
            "ok": not any(r["failed"] for r in (fazt, base, same, standalone))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="MCP tool-call latency: fazt_pulse_status vs a bare SDK server.")
    parser.add_argument("--calls", type=int, default=500, help="measured calls per server")
    parser.add_argument("--warmup", type=int, default=50, help="calls before measuring")
    parser.add_argument("--rounds", type=int, default=10, help="rounds the calls of each server are interleaved in")
    parser.add_argument("--mode", choices=["legacy", "auto"], default="legacy",
                        help="legacy: 2025-11-25 sessions (Claude Code, TypeScript SDK); auto: 2026-07-28")
    parser.add_argument("--bare-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--payload", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    if args.bare_server:
        bare_server(args.bare_server, args.payload)
        return 0
    if args.calls < 10 or args.warmup < 0 or not 1 <= args.rounds <= args.calls:
        parser.error("--calls must be at least 10, --warmup not negative, --rounds from 1 to --calls")
    report = run(args.calls, args.warmup, args.rounds, args.mode)
    if args.json:
        print_json(report)
    else:
        print(f"MCP over streamable HTTP ({report['mode']} protocol), {report['fazt']['calls']} sequential calls "
              f"each, interleaved in {report['rounds']} rounds:")
        rows = (("fazt_pulse_status on /mcp", report["fazt"]), ("bare SDK server, trivial tool", report["bare"]),
                ("bare SDK server, same payload", report["bare_payload"]),
                ("same, mcp serve --http", report["standalone"]))
        for label, r in rows:
            print(f"  {label:30} p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  "
                  f"{r['calls_per_s']:7.1f} calls/s  ({r['failed']} failed)")
        print(f"  ratio fazt/bare: p50 {report['ratio_p50']:.2f}x, p99 {report['ratio_p99']:.2f}x, "
              f"throughput {report['ratio_calls_per_s']:.2f}x "
              f"(against the same payload: {report['ratio_calls_per_s_same_payload']:.2f}x)")
        cpu = {name: report[name]["cpu_ms_per_call"] for name in ("fazt", "bare", "bare_payload", "standalone")}
        print(f"  CPU per call: fazt {cpu_total(report['fazt']):.2f} ms (client {cpu['fazt']['client']:.2f}, "
              f"daemon {cpu['fazt']['servers'][0]:.2f}, worker {cpu['fazt']['servers'][1]:.2f}), "
              f"bare {cpu_total(report['bare']):.2f} ms (client {cpu['bare']['client']:.2f}, "
              f"server {cpu['bare']['servers'][0]:.2f}), same payload {cpu_total(report['bare_payload']):.2f} ms "
              f"(client {cpu['bare_payload']['client']:.2f}, server {cpu['bare_payload']['servers'][0]:.2f}), "
              f"mcp serve --http {cpu_total(report['standalone']):.2f} ms "
              f"(client {cpu['standalone']['client']:.2f}, server {cpu['standalone']['servers'][0]:.2f})")
        print(f"  ratio bare/fazt of CPU per call: {report['ratio_cpu']:.2f} "
              f"(same payload: {report['ratio_cpu_same_payload']:.2f}; mcp serve --http: "
              f"{report['ratio_cpu_standalone']:.2f})")
        rss = report["rss_mb"]
        print(f"  the daemon's hop to its worker: p50 +{report['worker_hop_p50_ms']:.2f} ms "
              "(fazt_pulse_status on /mcp minus on `mcp serve --http`)")
        print(f"  first call (worker start + session + call): {report['first_call_ms']:.0f} ms")
        print(f"  daemon RSS: {rss['daemon_before_first_mcp_call']:.1f} MiB before /mcp was used, "
              f"{rss['daemon_after_calls']:.1f} MiB after the calls, "
              f"{rss['daemon_after_worker_stopped']:.1f} MiB once the idle worker stopped")
        print(f"  worker RSS after the calls: {rss['worker_after_calls']:.1f} MiB")
        print("  no target: reported for the record")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
