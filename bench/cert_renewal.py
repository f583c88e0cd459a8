"""Certificate renewal: from incident to verified renewal against pebble, beside certbot.

One pebble (+ pebble-challtestsrv) serves the whole run. Each round, in alternating order:

- agent loop: a fresh ops folder (`fazt-agent init`), autonomy "medium", a local TLS server
  serving a test certificate with 20 of its 90 days left (in the renewal window), a `tls` check
  on it naming `[[certificates]] web`, standalone HTTP-01 on pebble's port, `verify_tls` on the
  server. In process (`Runtime` + `Engine`, system clock), one beat: the time from the
  `incident.opened` event to `action.succeeded` — a new ACME account, the order, HTTP-01
  validated by pebble, the chain installed, the reload hook, and the endpoint seen serving it;
- agent CLI: `fazt-agent certs renew web` in a new process, on the same kind of setup (wall time,
  interpreter start included, like certbot's);
- certbot: `certbot certonly --standalone` (Debian's certbot) in a new process against the same
  pebble, with a fresh config dir (so it registers an account too) (wall time).

The ratio is agent loop median / certbot median (target: at most 1, the agent is not slower
than issuing by hand with certbot); the CLI ratio is reported beside it. Exit 0 when the target
is met, 1 when it is missed or a round failed, 2 for bad arguments.

    python bench/cert_renewal.py [--rounds 5] [--max-seconds 180] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from _common import clean_env, make_ops, print_json, stats, verdict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _pebble import Pebble, TlsServer, make_ca, make_leaf, start_pebble, write_pair  # noqa: E402

DOMAIN = "bench.fazt.test"


def setup(parent: Path, pebble: Pebble, port: int) -> tuple[Any, Path, Path]:
    """An ops folder whose `tls` check and `[[certificates]] web` watch 127.0.0.1:`port`."""
    ops = make_ops(parent)
    ca = make_ca()
    cert, key = write_pair(parent / "tls", *make_leaf(ca, [DOMAIN], days=20))
    hook = parent / "reload.sh"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)
    for pulse in (ops.dir / "pulse").glob("*.toml"):
        pulse.unlink()
    (ops.dir / "pulse" / "tls.toml").write_text(
        f'[[checks]]\nname = "web"\nkind = "tls"\nhost = "127.0.0.1"\nport = {port}\nsni = "{DOMAIN}"\n'
        f'ca_bundle = "{parent / "trusted.pem"}"\ncertificate = "web"\n')
    (parent / "trusted.pem").write_bytes(ca.pem + pebble.roots())
    (ops.dir / "kernel" / "certs.toml").write_text(
        f'[certs]\ndirectory = "{pebble.directory}"\nacme_ca_bundle = "{pebble.ca_bundle}"\n'
        f'listen = "127.0.0.1:{pebble.http_port}"\n\n[[certificates]]\nname = "web"\ndomains = ["{DOMAIN}"]\n'
        f'cert_path = "{cert}"\nkey_path = "{key}"\nreload = ["{hook}"]\nverify_tls = "127.0.0.1:{port}"\n')
    config = tomllib.loads(ops.config.read_text())
    config.setdefault("agent", {})["autonomy"] = "medium"
    ops.config.write_text(tomli_w.dumps(config))
    return ops, cert, key


async def agent_loop(parent: Path, pebble: Pebble) -> float:
    """Seconds from incident.opened to action.succeeded, in process."""
    from fazt_agent.config import load_config
    from fazt_agent.engine import Engine
    from fazt_agent.runtime import Runtime

    marks: dict[str, float] = {}
    with TlsServer(parent / "tls" / "fullchain.pem", parent / "tls" / "privkey.pem") as server:
        ops, _, _ = setup(parent, pebble, server.port)
        rt = await Runtime.open(load_config(ops.config))
        try:
            rt.events.subscribe(lambda e: marks.setdefault(e.type, time.perf_counter()), "incident.opened")
            rt.events.subscribe(lambda e: marks.setdefault(e.type, time.perf_counter()), "action.*")
            await Engine(rt).on_beat(await rt.pulse.beat(everything=True))
        finally:
            await rt.close()
    if "action.succeeded" not in marks:
        raise RuntimeError(f"the agent did not renew: events seen {sorted(marks)}")
    return marks["action.succeeded"] - marks["incident.opened"]


def agent_cli(parent: Path, pebble: Pebble) -> float:
    with TlsServer(parent / "tls" / "fullchain.pem", parent / "tls" / "privkey.pem") as server:
        ops, _, _ = setup(parent, pebble, server.port)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "fazt_agent", "--config", str(ops.config), "certs", "renew",
                               "web"], capture_output=True, text=True, timeout=120, env=clean_env())
        elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"fazt-agent certs renew failed: {done.stdout.strip()} {done.stderr.strip()[-300:]}")
    return elapsed


def certbot(parent: Path, pebble: Pebble) -> float:
    dirs = [f"--{kind}-dir={parent / 'certbot' / kind}" for kind in ("config", "work", "logs")]
    argv = ["certbot", "certonly", "--standalone", "--non-interactive", "--agree-tos",
            "--register-unsafely-without-email", "--server", pebble.directory, "--http-01-address", "127.0.0.1",
            "--http-01-port", str(pebble.http_port), "-d", DOMAIN, *dirs]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "REQUESTS_CA_BUNDLE": str(pebble.ca_bundle)})
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"certbot failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=180.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    logging.getLogger("fazt_agent").setLevel(logging.ERROR)  # the log channel's notifications
    times: dict[str, list[float]] = {"agent_loop_s": [], "agent_cli_s": [], "certbot_s": []}
    error = None
    deadline = time.monotonic() + args.max_seconds
    with tempfile.TemporaryDirectory(prefix="fazt-bench-certs-") as tmp:
        with start_pebble(Path(tmp)) as pebble:
            for n in range(args.rounds):
                runs = [("agent_loop_s", lambda p: asyncio.run(agent_loop(p, pebble))),
                        ("agent_cli_s", lambda p: agent_cli(p, pebble)), ("certbot_s", lambda p: certbot(p, pebble))]
                for name, run in runs if n % 2 == 0 else reversed(runs):
                    folder = Path(tmp) / f"{name}-{n}"
                    folder.mkdir()
                    try:
                        times[name].append(run(folder))
                    except (RuntimeError, subprocess.TimeoutExpired) as e:
                        error = f"round {n + 1}, {name}: {e}"
                        break
                if error or time.monotonic() > deadline:
                    break
    report: dict[str, Any] = {name: stats(values) for name, values in times.items()}
    certbot_median = report["certbot_s"]["median"]
    report["ratio_loop_to_certbot"] = report["agent_loop_s"]["median"] / certbot_median
    report["ratio_cli_to_certbot"] = report["agent_cli_s"]["median"] / certbot_median
    report["met"] = error is None and report["ratio_loop_to_certbot"] <= 1.0
    report["error"] = error
    if args.json:
        print_json(report)
    else:
        for name in times:
            s = report[name]
            print(f"{name:14} median {s['median']:.3f} s  p95 {s['p95']:.3f} s  min {s['min']:.3f}  "
                  f"max {s['max']:.3f}  (n={s['n']})")
        print(f"ratio agent loop / certbot: {report['ratio_loop_to_certbot']:.3f} (target <= 1: "
              f"{verdict(report['met'])})")
        print(f"ratio agent CLI / certbot:  {report['ratio_cli_to_certbot']:.3f}")
        if error:
            print(f"error: {error}", file=sys.stderr)
    return 0 if report["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
