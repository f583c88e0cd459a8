"""The apps plane side by side with Debian nginx (the ceiling), plus serverless, deploys and RSS.

One run, one machine: a fresh ops folder (`fazt-agent init`), a static app (the same files nginx
serves from a directory of its own) and a serverless app deployed with the real CLI, the real
daemon serving them, and `wrk` (Debian package) as the load generator:

- static requests/s and p50/p99 latency: apps plane vs nginx (`worker_processes auto`), same file;
- serverless requests/s (`/api` running api/main.js in QuickJS workers); target >= 50 % of the
  apps plane's static rate; each measured after a 1 s warm-up, with the CPU time per request of
  the server process and of its children (nginx's workers, the JS workers), which other load on
  the machine disturbs less than requests/s;
- deploy time of a 1,000-file app (the CLI's wall clock, and the deploy itself as recorded);
- RSS: the daemon with no apps, the daemon with the apps plane up but idle, after the load, and
  its JS worker processes separately. Target: the idle daemon without apps stays <= 40 MiB
  (bench/idle.py's target).

Needs nginx and wrk: `apt-get install nginx wrk` (scripts/bench-deps). Exit code 0 when the
targets are met, 1 otherwise.

    python bench/apps.py [--seconds 5] [--connections 16] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import tomli_w
import tomllib

from _common import MB, clean_env, free_port, make_ops, print_json, terminate, verdict

RSS_TARGET_MB = 40.0   # bench/idle.py's: the apps plane must not move the idle daemon's target
SERVERLESS_SHARE = 0.5
INDEX = "<!doctype html><title>bench</title>" + "<p>fazt apps plane benchmark page</p>" * 100


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fazt_agent", "--config", str(config), *args],
                          capture_output=True, text=True, env=clean_env(), timeout=300)


def wrk(url: str, host: str, seconds: int, connections: int) -> dict[str, float]:
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-H", f"Host: {host}", url],
                         capture_output=True, text=True, timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)

    def lat(q: str) -> float:
        m = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m, out
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    return {"rps": rps, "requests": requests, "p50_ms": lat("50"), "p99_ms": lat("99"), "non_2xx": float(errors.group(1)) if errors else 0.0}


def wait_http(url: str, host: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(urllib.request.Request(url, headers={"Host": host}), timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answers at {url} (Host {host})")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time (user + system) of a process and of its children (nginx's workers, the JS workers)."""
    def used(p: psutil.Process) -> float:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            return 0.0
        return t.user + t.system

    parent = psutil.Process(pid)
    return used(parent), sum(used(c) for c in parent.children())


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / MB


def start_daemon(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "fazt_agent", "--config", str(config), "run"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True, env=clean_env())


def nginx(root: Path, tmp: Path, port: int) -> subprocess.Popen[str]:
    conf = tmp / "nginx.conf"
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf.write_text(f"""{user}daemon off; worker_processes auto; pid {tmp}/nginx.pid; error_log {tmp}/error.log;
events {{ worker_connections 1024; }}
http {{ include /etc/nginx/mime.types; access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fcgi;
  uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  server {{ listen 127.0.0.1:{port}; root {root}; index index.html; }} }}
""")
    return subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, text=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    missing = [tool for tool in ("nginx", "wrk") if shutil.which(tool) is None]
    if missing:
        print(f"error: needs {', '.join(missing)}: apt-get install nginx wrk (scripts/bench-deps)", file=sys.stderr)
        return 1
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        os.chmod(tmp, 0o755)
        ops = make_ops(tmp)
        port = free_port()
        data = tomllib.loads(ops.config.read_text())
        data["apps"] = {"listen": f"127.0.0.1:{port}", "domain": "bench.test", "workers": 2}
        ops.config.write_text(tomli_w.dumps(data))
        site = tmp / "site"
        site.mkdir()
        (site / "index.html").write_text(INDEX)
        fn = tmp / "fn"
        (fn / "api").mkdir(parents=True)
        (fn / "index.html").write_text("fn")
        (fn / "api" / "main.js").write_text("respond(200, {ok: true, n: request.query.n || null})")

        # the daemon without apps: its RSS is the idle target's
        proc = start_daemon(ops.config)
        wait_http(f"http://127.0.0.1:{ops.port}/healthz", f"127.0.0.1:{ops.port}")
        time.sleep(3)
        result["rss_no_apps_mb"] = rss_mb(proc.pid)
        terminate(proc)

        for source, name in ((site, "site"), (fn, "fn")):
            done = cli(ops.config, "deploy", str(source), "--name", name, "--json")
            if done.returncode != 0:
                raise RuntimeError(done.stderr)
        many = tmp / "many"
        for i in range(1000):
            (many / f"d{i % 20}").mkdir(parents=True, exist_ok=True)
            (many / f"d{i % 20}" / f"f{i}.txt").write_text(f"file {i}\n" * 100)
        (many / "index.html").write_text("many")
        t0 = time.monotonic()
        done = cli(ops.config, "deploy", str(many), "--name", "many", "--json")
        wall = time.monotonic() - t0
        if done.returncode != 0:
            raise RuntimeError(done.stderr)
        result["deploy_1000_files"] = {"cli_wall_s": wall, "deploy_ms": json.loads(done.stdout)["duration_ms"]}
        (many / "index.html").write_text("many again")   # a second release: one new blob
        t0 = time.monotonic()
        done = cli(ops.config, "deploy", str(many), "--name", "many", "--json")
        result["redeploy_1000_files_1_changed"] = {"cli_wall_s": time.monotonic() - t0,
                                                   "deploy_ms": json.loads(done.stdout)["duration_ms"],
                                                   "new_blobs": json.loads(done.stdout)["new_blobs"]}

        proc = start_daemon(ops.config)
        ng = nginx(site, tmp, nginx_port := free_port())
        try:
            url = f"http://127.0.0.1:{port}/"
            wait_http(url, "site.bench.test")
            wait_http(f"http://127.0.0.1:{nginx_port}/", "localhost")
            time.sleep(2)
            result["rss_apps_idle_mb"] = rss_mb(proc.pid)
            targets = {"nginx_static": (f"http://127.0.0.1:{nginx_port}/", "localhost"),
                       "apps_static": (url, "site.bench.test"), "apps_serverless": (f"{url}api?n=1", "fn.bench.test")}
            for key, (where, host) in targets.items():   # warm: the JS workers started, the caches filled
                wrk(where, host, 1, args.connections)
                server = ng.pid if key == "nginx_static" else proc.pid
                before = cpu_seconds(server)
                result[key] = wrk(where, host, args.seconds, args.connections)
                after = cpu_seconds(server)
                # CPU per request, which a busy machine disturbs less than requests/s
                n = result[key]["requests"]
                result[key]["server_cpu_us"] = (after[0] - before[0]) / n * 1e6
                result[key]["workers_cpu_us"] = (after[1] - before[1]) / n * 1e6
            result["rss_after_load_mb"] = rss_mb(proc.pid)
            workers = [c for c in psutil.Process(proc.pid).children() if "fazt_agent.apps.worker" in " ".join(c.cmdline())]
            result["js_workers"] = {"count": len(workers), "rss_mb_each": [w.memory_info().rss / MB for w in workers]}
        finally:
            ng.send_signal(signal.SIGQUIT)
            ng.wait(10)
            terminate(proc)
    share = result["apps_serverless"]["rps"] / result["apps_static"]["rps"]
    result["serverless_share_of_static"] = share
    result["static_share_of_nginx"] = result["apps_static"]["rps"] / result["nginx_static"]["rps"]
    result["targets"] = {"serverless_share": verdict(share >= SERVERLESS_SHARE),
                         "rss_no_apps": verdict(result["rss_no_apps_mb"] <= RSS_TARGET_MB)}
    ok = all(v == "ok" for v in result["targets"].values())
    if args.json:
        print_json(result)
    else:
        for key in ("nginx_static", "apps_static", "apps_serverless"):
            r = result[key]
            print(f"{key:16} {r['rps']:9.0f} req/s  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  CPU per "
                  f"request: server {r['server_cpu_us']:.0f} us, its workers {r['workers_cpu_us']:.0f} us"
                  f"{'  non-2xx ' + str(int(r['non_2xx'])) if r['non_2xx'] else ''}")
        print(f"apps plane static = {result['static_share_of_nginx']:.0%} of nginx; serverless = {share:.0%} of "
              f"static (target >= {SERVERLESS_SHARE:.0%}): {result['targets']['serverless_share']}")
        d = result["deploy_1000_files"]
        print(f"deploy of 1,000 files: {d['deploy_ms']:.0f} ms (CLI wall clock {d['cli_wall_s']:.2f} s); "
              f"again with 1 changed: {result['redeploy_1000_files_1_changed']['deploy_ms']:.0f} ms")
        print(f"daemon RSS: no apps {result['rss_no_apps_mb']:.1f} MiB ({result['targets']['rss_no_apps']}), apps "
              f"plane idle {result['rss_apps_idle_mb']:.1f} MiB, after load {result['rss_after_load_mb']:.1f} MiB; "
              f"JS workers: {result['js_workers']['count']} x "
              f"{', '.join(f'{x:.1f}' for x in result['js_workers']['rss_mb_each'])} MiB")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
