"""Scale curves of every check kind: beat time and RSS at 1, 10, 100 and 500 checks of each kind,
beside the bare calls those checks make and, where it has an equivalent, Monit.

For every kind of `fazt_agent.pulse.KINDS` and every size N, the daemon runs N checks of that kind
only, against real targets this script makes on loopback and in a temporary directory:

- `system`: N checks with the shipped thresholds; `disk`: N checks of `mounts = ["/"]`;
- `dir_size` / `file_age`: N directories of FILES_PER_DIR 4 KiB files in two subdirectories
  (`*.log`, written now), one per check;
- `cert_file`: N certificate + key files (EC P-256, issued by a CA made here, 89 of 90 days left);
- `tls`: N checks of one local TLS server (this script as `--serve-tls`, a leaf for SNI_NAME issued
  by that CA), `sni` and `ca_bundle` set, so the check validates the chain and the name for real;
- `http`: N checks of the http_scale server (`http_scale.py --serve`), one path each;
- `process`: N checks cycling over PROCS helper processes this script starts (`/bin/sleep` copied
  under names of its own), so every watched name exists;
- `command`: N checks of Debian's `/usr/lib/nagios/plugins/check_dummy 0` (a process per check
  per beat);
- `app`: N apps deployed with the product's deploy (in a helper process, before the daemon starts),
  served by the daemon's own apps plane, and N checks each probing one of them (`apps = ["app-I"]`:
  each check reads the plane's listing of all N apps, then GETs its app: N listings of N apps a
  beat, so this layout's work grows as N squared); `--app-checks one` measures the other layout,
  one check (`apps = ["*"]`) probing all N apps (N is then the apps, one result each).

Why a daemon and not the in-process API (bench/beat_latency.py's way): the owner runs `fazt-agent
run`, so its RSS is the figure that matters, and only a daemon serves the apps plane the `app`
check probes. Each (kind, N) gets a fresh copy of one `fazt-agent init` ops folder and a fresh
`fazt-agent run` process (so the RSS is that configuration's), `[pulse] interval = "1s"` (the
shortest allowed; a beat longer than that makes the scheduler skip ticks until it ends). The
script waits for /healthz, then for one warm-up beat (it imports the lazily loaded modules, opens
the pools, primes counters), then for `--beats` more, polling the `beats` table read-only. After
SIGTERM it reads from the database, per measured beat: the wall time from the beat's start
(`beats.ts`) to its `pulse.beat` event (written in the beat's own transaction after its results:
the checks plus storing N results), the checks' part of it (`beats.duration_ms`), and each check's
own `results.duration_ms`. CPU is the daemon's (its threads' run time from schedstat, in ns; its
reaped children's too: the plugins) over the measured beats, per beat; RSS is psutil's at the last
measured beat (and the maximum, sampled every 0.1 s). The stored history is a handful of beats:
flat in history is history_scale.py's.

Anchors, each in a fresh process of its own, in the same run, never beside the daemon:

- floor (every kind): the same calls the check makes, made directly and one after the other
  (psutil/os calls, a scandir walk, `cryptography` loading the PEM files, a verifying `ssl`
  handshake, `http.client` on one keep-alive connection, a process table scan per check,
  `subprocess.run` of the plugin, the listing + GET through the apps plane); a warm-up round then
  `--beats` rounds, median; peak RSS of the floor process (VmHWM). No asyncio, no storage.
- Monit (Debian's `monit`, scripts/bench-deps): `monit -c RC validate`, one pass over N equivalent
  checks in a fresh process (what each daemon cycle runs, plus reading RC): a warm-up pass, then
  `--beats` passes (at most MONIT_PASSES); wall time (median), CPU from `wait4` (what Monit reaped
  included), peak RSS from GNU time (`/usr/bin/time -f %M`: `ru_maxrss` of a child of this Python
  process would keep this process's size from before the exec). Monit exits 1 after every
  `validate` here, even when every test passed; failed tests are counted from its log
  (`error_lines`). Equivalents: `disk` N
  `check filesystem ... path /` (space and inodes); `file_age` N `check directory` with `if
  timestamp > 1 day` (one stat of the directory, where fazt walks it for the newest `*.log`);
  `http` as http_scale.py; `process` N `check process ... matching`; `command` N `check program`
  of the same plugin (a `validate` pass starts the programs, and no pass judges their exit status:
  a running Monit reads it in a later cycle, so this anchor covers the spawns only); `tls` N `check
  host` with `if failed port P with ssl options {verify: enable, CACertificateFile: CA}` and
  `certificate valid > 14 days` against the same server and CA.
  None for `system` (Monit keeps one `check system`: the last one wins), `dir_size` (no directory
  size test), `cert_file` (no certificate file test) and `app` (no apps plane).

Linearity, per kind (N = 10 the reference when measured, else the smallest size; the largest size
compared with it): the beat's wall time per check at the largest N at most TIME_FACTOR times the
one at the reference, or else the daemon's CPU time per check (a neighbour's load on a shared
machine stretches wall time, hardly CPU time: a wall-time miss counts only when the CPU time per
check grew past the factor too); RSS linear when its growth from the next-largest size to the largest is at
most RSS_FACTOR times what the growth per check from the smallest to the next-largest size
predicts, plus RSS_SLACK_MB (the noise of a fresh process). Per-check cost at small N is inflated by the beat's
fixed cost and deflated by concurrency (10 checks run side by side), so the factor is loose on
purpose: it catches a cost per check that grows with N (quadratic work), not a constant.

Exit code 0 when every measured curve is linear, 1 when one is not, a size was not measured
(`--max-seconds` reached, a run failed), 2 for bad arguments. The machine's load matters: the
load average is printed with the results.

    python bench/kinds_scale.py [--checks 1,10,100,500] [--kinds system,http,...] [--beats 5]
                                [--max-seconds 600] [--no-monit] [--app-checks per-app|one] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import tomli_w

from _common import MB, clean_env, free_port, make_ops, print_json, stats, verdict
from http_scale import BenchError, start_server, stop

HERE = Path(__file__).resolve().parent
INTERVAL = 1                 # [pulse] interval, seconds: the shortest the config allows
FILES_PER_DIR = 20           # files under each dir_size / file_age directory
PROCS = 10                   # helper processes the `process` checks watch
SNI_NAME = "bench.fazt.test"
APP_DOMAIN = "bench.test"
PLUGIN = "/usr/lib/nagios/plugins/check_dummy"
TIME_FACTOR = 2.0            # per-check beat time at the largest N <= this x the reference's
RSS_FACTOR = 2.0             # RSS growth at the top <= this x the growth the lower sizes predict ...
RSS_SLACK_MB = 4.0           # ... + this much
START_TIMEOUT = 60.0
GNU_TIME = "/usr/bin/time"   # Monit's peak RSS: ru_maxrss of a child of a small process (see _vm_hwm_mb)
MONIT_PASSES = 3            # at most this many timed `monit validate` passes (500 tls checks: 12 s each)
MONIT_KINDS = ("disk", "file_age", "http", "process", "command", "tls")
NO_MONIT = {"system": "Monit keeps one `check system` (the last one wins)",
            "dir_size": "Monit has no directory-size test",
            "cert_file": "Monit has no certificate-file test",
            "app": "Monit has no apps plane to probe through"}


# -- the world the checks look at ------------------------------------------------------------

@dataclass
class World:
    """Targets shared by the runs: made once, the largest size's worth."""

    tmp: Path
    template: Path                       # an ops folder from `fazt-agent init`
    http_port: int = 0
    tls_port: int = 0
    ca: Path | None = None
    dirs: list[Path] = field(default_factory=list)
    certs: list[tuple[Path, Path]] = field(default_factory=list)
    procs: list[str] = field(default_factory=list)
    site: Path | None = None
    app_checks: str = "per-app"          # "per-app": N checks of one app each; "one": 1 check of N apps
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spec(self) -> dict[str, Any]:
        """What a floor process needs to reach the same targets."""
        return {"http_port": self.http_port, "tls_port": self.tls_port, "ca": str(self.ca) if self.ca else None,
                "dirs": [str(d) for d in self.dirs], "certs": [[str(c), str(k)] for c, k in self.certs],
                "procs": self.procs}

    def close(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(10)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()


def build_world(tmp: Path, kinds: list[str], size: int) -> World:
    (tmp / "template").mkdir()
    world = World(tmp, make_ops(tmp / "template").dir)
    try:
        if "http" in kinds:
            server, world.http_port = start_server()
            world.children.append(server)
        if {"dir_size", "file_age"} & set(kinds):
            world.dirs = _make_dirs(tmp / "dirs", size)
        if {"cert_file", "tls"} & set(kinds):
            _make_certs(world, tmp / "certs", size if "cert_file" in kinds else 0, serve="tls" in kinds)
        if "process" in kinds:
            world.procs = _start_procs(world, tmp / "bin")
        if "app" in kinds:
            world.site = tmp / "site"
            world.site.mkdir()
            (world.site / "index.html").write_text("<!doctype html><title>bench</title><p>ok</p>\n")
    except BaseException:
        world.close()
        raise
    return world


def _make_dirs(root: Path, n: int) -> list[Path]:
    """N directories of FILES_PER_DIR files (4 KiB, `*.log`) in two subdirectories, dated now."""
    block = b"x" * 4096
    dirs = []
    for i in range(n):
        d = root / f"d{i}"
        for j in range(FILES_PER_DIR):
            sub = d / f"s{j % 2}"
            sub.mkdir(parents=True, exist_ok=True)
            (sub / f"f{j}.log").write_bytes(block)
        dirs.append(d)
    return dirs


def _make_certs(world: World, root: Path, n: int, serve: bool) -> None:
    """A CA; N certificate + key files issued by it; with `serve`, a TLS server for SNI_NAME."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    root.mkdir(parents=True)
    now = datetime.now(timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("kinds_scale CA")).issuer_name(name("kinds_scale CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    world.ca = root / "ca.pem"
    world.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def leaf(dns: str, directory: Path) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(dns)).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=89))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        directory.mkdir(parents=True)
        cert_path, key_path = directory / "fullchain.pem", directory / "privkey.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_path.chmod(0o600)
        return cert_path, key_path

    world.certs = [leaf(f"site{i}.fazt.test", root / f"c{i}") for i in range(n)]
    if serve:
        cert, key = leaf(SNI_NAME, root / "served")
        world.tls_port = free_port()
        proc = subprocess.Popen([sys.executable, str(HERE / "kinds_scale.py"), "--serve-tls", str(world.tls_port),
                                 str(cert), str(key)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=clean_env())
        world.children.append(proc)
        _wait_port(proc, world.tls_port, "the TLS server")


def _start_procs(world: World, bindir: Path) -> list[str]:
    """PROCS long-running processes with names of their own (`/bin/sleep` copied)."""
    bindir.mkdir()
    names = []
    for i in range(PROCS):
        exe = bindir / f"fzb-proc-{i}"
        shutil.copy2("/bin/sleep", exe)
        world.children.append(subprocess.Popen([str(exe), "3600"], stdin=subprocess.DEVNULL,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        names.append(exe.name)
    return names


def _wait_port(proc: subprocess.Popen[bytes], port: int, what: str) -> None:
    import socket

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{what} did not listen within 15 s")


def serve_tls(port: int, cert: str, key: str) -> None:
    """A TLS server on 127.0.0.1:`port` serving `cert`; it writes one line and closes."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"hello\n")
            await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, ssl=context, backlog=4096)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# -- the checks ------------------------------------------------------------------------------

def checks(kind: str, n: int, world: World, apps_port: int) -> list[dict[str, Any]]:
    """N check definitions of `kind` against the world's targets."""
    def one(i: int) -> dict[str, Any]:
        base: dict[str, Any] = {"name": f"{kind.replace('_', '-')}-{i}", "kind": kind}
        if kind == "disk":
            base["mounts"] = ["/"]
        elif kind == "dir_size":
            base.update(path=str(world.dirs[i]), warning="1GiB")
        elif kind == "file_age":
            base.update(path=str(world.dirs[i]), pattern="*.log", warning="1d", critical="2d")
        elif kind == "cert_file":
            cert, key = world.certs[i]
            base.update(path=str(cert), key=str(key))
        elif kind == "tls":
            base.update(host="127.0.0.1", port=world.tls_port, sni=SNI_NAME, ca_bundle=str(world.ca))
        elif kind == "http":
            base["url"] = f"http://127.0.0.1:{world.http_port}/path{i}"
        elif kind == "process":
            base["process"] = world.procs[i % len(world.procs)]
        elif kind == "command":
            base["command"] = [PLUGIN, "0"]
        elif kind == "app":
            base.update(url=f"http://127.0.0.1:{apps_port}", domain=APP_DOMAIN, apps=[f"app-{i}"])
        return base

    if kind == "app" and world.app_checks == "one":   # one check probing all N apps
        return [{**one(0), "apps": ["*"]}]
    return [one(i) for i in range(n)]


def monit_checks(kind: str, n: int, world: World) -> str:
    """N Monit services equivalent to N checks of `kind` (see the module docstring)."""
    def one(i: int) -> str:
        if kind == "disk":
            return (f"check filesystem fs{i} with path /\n    if space usage > 85% then alert\n"
                    "    if inode usage > 85% then alert\n")
        if kind == "file_age":
            return f"check directory d{i} with path {world.dirs[i]}\n    if timestamp > 1 day then alert\n"
        if kind == "http":
            return (f"check host h{i} with address 127.0.0.1\n"
                    f'    if failed port {world.http_port} protocol http request "/path{i}" then alert\n')
        if kind == "process":
            return (f'check process p{i} matching "/{world.procs[i % len(world.procs)]} "\n'
                    "    if does not exist then alert\n")
        if kind == "command":
            return f'check program c{i} with path "{PLUGIN} 0"\n    if status != 0 then alert\n'
        if kind == "tls":
            return (f"check host t{i} with address 127.0.0.1\n"
                    f"    if failed port {world.tls_port} with ssl options {{verify: enable, "
                    f'CACertificateFile: "{world.ca}"}} and certificate valid > 14 days then alert\n')
        raise ValueError(kind)

    return "".join(one(i) for i in range(n))


# -- fazt-agent ------------------------------------------------------------------------------

def prepare_ops(world: World, kind: str, n: int, where: Path) -> tuple[Path, int, int]:
    """A copy of the template ops folder with N checks of `kind` only: (config, http port, apps port)."""
    ops = where / "ops"
    shutil.copytree(world.template, ops)
    config = ops / "config.toml"
    data = tomllib.loads(config.read_text())
    port, apps_port = free_port(), 0
    data["http"]["listen"] = f"127.0.0.1:{port}"
    data["pulse"]["interval"] = f"{INTERVAL}s"
    if kind == "app":
        apps_port = free_port()
        data["apps"].update(enabled=True, listen=f"127.0.0.1:{apps_port}", domain=APP_DOMAIN)
    config.write_text(tomli_w.dumps(data))
    for old in (ops / "pulse").glob("*.toml"):
        old.unlink()
    (ops / "pulse" / "bench.toml").write_text(tomli_w.dumps({"checks": checks(kind, n, world, apps_port)}))
    return config, port, apps_port


def deploy_apps(config: Path, n: int, site: Path, deadline: float) -> float:
    """N apps deployed from `site` with the product's deploy (this script as `--deploy-apps`)."""
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, str(HERE / "kinds_scale.py"), "--deploy-apps", str(config), str(n),
                           str(site)], capture_output=True, text=True, env=clean_env(),
                          timeout=max(1.0, deadline - time.monotonic()))
    if done.returncode != 0:
        raise BenchError(f"deploying {n} apps failed: {done.stderr.strip()[-500:]}")
    return time.monotonic() - t0


async def _deploy(config: Path, n: int, site: Path) -> None:
    from fazt_agent.apps import bundle
    from fazt_agent.apps.deploy import deploy
    from fazt_agent.config import load_config
    from fazt_agent.runtime import Runtime

    rt = await Runtime.open(load_config(config))
    try:
        section = rt.config.file.apps
        b = bundle.read(site, max_files=section.max_files, max_bytes=section.max_upload)
        for i in range(n):
            result = await deploy(rt, f"app-{i}", b, str(site))
            if not result["healthy"]:
                raise SystemExit(f"app-{i}: {result.get('problem')}")
    finally:
        await rt.close()


def start_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "fazt_agent", "--config", str(config), "run"],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=clean_env(),
                                cwd=config.parent)


def wait_healthy(proc: subprocess.Popen[bytes], port: int, log: Path, deadline: float) -> None:
    end = min(deadline, time.monotonic() + START_TIMEOUT)
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise BenchError(f"the daemon exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise BenchError(f"/healthz did not answer 200 in time:\n{_tail(log)}")


def _tail(log: Path, lines: int = 8) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def _beat_count(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM beats").fetchone()[0])
    except sqlite3.Error:
        return 0   # not created yet, or busy for a moment


def _cpu(p: Any) -> float:
    """CPU seconds of the daemon: its threads' run time (schedstat, in ns: /proc/PID/stat counts 10 ms
    ticks, too coarse for a 4 ms beat) plus its reaped children's (the plugins; in ticks)."""
    t = p.cpu_times()
    children = t.children_user + t.children_system
    tasks = Path(f"/proc/{p.pid}/task")
    if not (tasks / str(p.pid) / "schedstat").exists():
        return t.user + t.system + children
    ns = 0
    for task in tasks.iterdir():
        try:
            ns += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue   # a thread that ended meanwhile
    return ns / 1e9 + children


def run_fazt(world: World, kind: str, n: int, beats: int, deadline: float) -> dict[str, Any]:
    """The daemon with N checks of `kind`: one warm-up beat, then `beats` measured ones."""
    import psutil

    where = Path(tempfile.mkdtemp(prefix=f"run-{kind}-{n}-", dir=world.tmp))
    try:
        config, port, apps_port = prepare_ops(world, kind, n, where)
        deploy_s = deploy_apps(config, n, world.site, deadline) if kind == "app" else None   # type: ignore[arg-type]
        db = config.parent / "data" / "fazt-agent.db"
        log = where / "daemon.log"
        floor = None
        t0 = time.monotonic()
        proc = start_daemon(config, log)
        try:
            wait_healthy(proc, port, log, deadline)
            startup_s = time.monotonic() - t0
            p = psutil.Process(proc.pid)
            _wait_beats(proc, db, 1, deadline, log)
            cpu0, wall0 = _cpu(p), time.monotonic()
            rss_max = p.memory_info().rss
            while (seen := _beat_count(db)) < 1 + beats:
                if proc.poll() is not None:
                    raise BenchError(f"the daemon exited with {proc.returncode}:\n{_tail(log)}")
                if time.monotonic() > deadline:
                    raise BenchError(f"cut by --max-seconds after {seen - 1} of {beats} measured beats")
                rss_max = max(rss_max, p.memory_info().rss)
                time.sleep(0.1)
            cpu1, wall1 = _cpu(p), time.monotonic()
            rss_end = p.memory_info().rss
        finally:
            code = stop(proc)
        if kind == "app":    # the floor needs the apps plane: the daemon again, without checks
            floor = _app_floor(config, port, {"apps_port": apps_port, "app_checks": world.app_checks}, n, beats,
                               deadline, where)
        measured = _read_beats(db, beats)
        return {"n": n, **measured, "startup_s": startup_s, "deploy_s": deploy_s,
                "cpu_ms_per_beat": 1000 * (cpu1 - cpu0) / beats, "window_s": wall1 - wall0,
                "rss_mb_end": rss_end / MB, "rss_mb_max": max(rss_max, rss_end) / MB, "exit_code": code,
                "log_tail": _tail(log, 5) if code != 0 else "", **({"floor": floor} if floor else {})}
    finally:
        shutil.rmtree(where, ignore_errors=True)


def _wait_beats(proc: subprocess.Popen[bytes], db: Path, count: int, deadline: float, log: Path) -> None:
    while _beat_count(db) < count:
        if proc.poll() is not None:
            raise BenchError(f"the daemon exited with {proc.returncode}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise BenchError("cut by --max-seconds before the warm-up beat was stored")
        time.sleep(0.05)


def _read_beats(db: Path, beats: int) -> dict[str, Any]:
    """The measured beats (after the warm-up one): wall to their event, checks part, per-check times."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT b.id, b.ts, b.duration_ms, e.ts FROM beats b LEFT JOIN events e ON e.type = 'pulse.beat' "
            "AND json_extract(e.data, '$.beat_id') = b.id ORDER BY b.id LIMIT ? OFFSET 1", (beats,)).fetchall()
        ids = [r[0] for r in rows]
        marks = ",".join("?" * len(ids))
        results = conn.execute(f"SELECT beat_id, status, duration_ms FROM results WHERE beat_id IN ({marks})",
                               ids).fetchall()
    walls = [(_parse(e) - _parse(b)).total_seconds() * 1000 for _, b, _, e in rows if e]
    counts: dict[str, int] = {}
    for _, status, _ in results:
        counts[status] = counts.get(status, 0) + 1
    per_check = [r[2] for r in results]
    return {"beats": len(rows), "beat_wall_ms": stats(walls), "beat_checks_ms": stats([r[2] for r in rows]),
            "check_ms": stats(per_check), "results": len(results), "results_ok": counts.get("ok", 0),
            "statuses": counts}


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def _app_floor(config: Path, port: int, spec: dict[str, Any], n: int, beats: int, deadline: float,
               where: Path) -> dict[str, Any]:
    """The `app` floor against the same apps plane: the daemon restarted with no checks."""
    (config.parent / "pulse" / "bench.toml").unlink()
    log = where / "plane.log"
    proc = start_daemon(config, log)
    try:
        wait_healthy(proc, port, log, deadline)
        return run_floor("app", n, spec, beats, deadline, where)
    finally:
        stop(proc)


# -- the anchors -----------------------------------------------------------------------------

def run_floor(kind: str, n: int, spec: dict[str, Any], beats: int, deadline: float, where: Path) -> dict[str, Any]:
    """The bare calls of N checks of `kind`, in a fresh process (this script as `--floor`)."""
    spec_file = where / f"floor-{kind}.json"
    spec_file.write_text(json.dumps(spec))
    done = subprocess.run([sys.executable, str(HERE / "kinds_scale.py"), "--floor", kind, str(n), str(spec_file),
                           str(beats)], capture_output=True, text=True, env=clean_env(),
                          timeout=max(1.0, deadline - time.monotonic()))
    if done.returncode != 0:
        raise BenchError(f"the {kind} floor failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def floor_main(kind: str, n: int, spec: dict[str, Any], rounds: int) -> dict[str, Any]:
    """A warm-up round, then `rounds` rounds of the bare calls; their times and this process's peak RSS."""
    call = _floor_call(kind, spec)
    call(n)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        call(n)
        times.append((time.perf_counter() - t0) * 1000)
    return {"round_ms": stats(times), "rss_mb_peak": _vm_hwm_mb()}


def _vm_hwm_mb() -> float:
    """This process's peak RSS since its exec (VmHWM). Not `ru_maxrss`: that one keeps the peak of
    the forked parent from before the exec, the orchestrator's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _floor_call(kind: str, spec: dict[str, Any]) -> Callable[[int], None]:
    """One round of the bare calls of N checks of `kind` (what each check calls, nothing else)."""
    if kind in ("system", "disk", "process"):
        import psutil
    if kind == "system":
        def system(n: int) -> None:
            for _ in range(n):
                psutil.cpu_times(), psutil.boot_time(), os.getloadavg(), psutil.cpu_count()
                psutil.virtual_memory(), psutil.swap_memory(), time.clock_gettime(time.CLOCK_BOOTTIME)
        return system
    if kind == "disk":
        def disk(n: int) -> None:
            for _ in range(n):
                psutil.disk_usage("/"), os.statvfs("/")
        return disk
    if kind in ("dir_size", "file_age"):
        from fnmatch import fnmatchcase

        def walk(n: int) -> None:
            for d in spec["dirs"][:n]:
                stack, size, newest = [d], 0, 0.0
                while stack:
                    with os.scandir(stack.pop()) as entries:
                        for e in entries:
                            if e.is_dir(follow_symlinks=False):
                                stack.append(e.path)
                            elif e.is_file(follow_symlinks=False):
                                st = e.stat(follow_symlinks=False)
                                size += st.st_size
                                if kind == "file_age" and fnmatchcase(e.name, "*.log"):
                                    newest = max(newest, st.st_mtime)
        return walk
    if kind == "cert_file":
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

        def certs(n: int) -> None:
            for cert_path, key_path in spec["certs"][:n]:
                cert = x509.load_pem_x509_certificates(Path(cert_path).read_bytes())[0]
                key = serialization.load_pem_private_key(Path(key_path).read_bytes(), None)
                cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)
                cert.not_valid_after_utc
        return certs
    if kind == "tls":
        import socket

        from cryptography import x509

        context = ssl.create_default_context(cafile=spec["ca"])

        def tls(n: int) -> None:
            for _ in range(n):
                with socket.create_connection(("127.0.0.1", spec["tls_port"]), timeout=10) as raw:
                    with context.wrap_socket(raw, server_hostname=SNI_NAME) as s:
                        x509.load_der_x509_certificate(s.getpeercert(binary_form=True)).not_valid_after_utc
        return tls
    if kind in ("http", "app"):
        import http.client

        port = spec["http_port"] if kind == "http" else spec["apps_port"]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

        def get(path: str, host: str | None = None) -> bytes:
            conn.request("GET", path, headers={"Host": host} if host else {})
            reply = conn.getresponse()
            body = reply.read()
            if reply.status >= 400:
                raise RuntimeError(f"GET {path}: {reply.status}")
            return body

        def http_round(n: int) -> None:
            for i in range(n):
                if kind == "http":
                    get(f"/path{i}")
                    continue
                if i == 0 or spec["app_checks"] == "per-app":   # the listing: once per check
                    json.loads(get("/.well-known/fazt-apps", f"127.0.0.1:{port}"))
                get("/", f"app-{i}.{APP_DOMAIN}")
        return http_round
    if kind == "process":
        def process(n: int) -> None:
            names = spec["procs"]
            for i in range(n):
                for p in psutil.process_iter(["name", "cmdline"]):
                    if p.info["name"] == names[i % len(names)]:
                        with p.oneshot():
                            p.memory_info(), p.cpu_percent(None)
        return process
    if kind == "command":
        def command(n: int) -> None:
            for _ in range(n):
                subprocess.run([PLUGIN, "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True)
        return command
    raise ValueError(kind)


def run_monit(world: World, kind: str, n: int, passes: int, deadline: float) -> dict[str, Any]:
    """`monit -c RC validate` over N equivalent checks: a warm-up pass, then `passes` passes."""
    monit = shutil.which("monit") or "/usr/bin/monit"
    work = Path(tempfile.mkdtemp(prefix=f"monit-{kind}-{n}-", dir=world.tmp))
    try:
        log = work / "monit.log"
        rc = work / "monitrc"
        rc.write_text(f"set daemon {INTERVAL}\nset logfile {log}\nset pidfile {work / 'monit.pid'}\n"
                      f"set idfile {work / 'monit.id'}\nset statefile {work / 'monit.state'}\n\n"
                      + monit_checks(kind, n, world))
        rc.chmod(0o600)
        walls, cpus, rss, codes = [], [], [], []
        for i in range(1 + passes):
            if time.monotonic() > deadline:
                raise BenchError("cut by --max-seconds")
            t0 = time.perf_counter()
            proc = subprocess.Popen([GNU_TIME, "-f", "%M", "-o", str(work / "maxrss"), monit, "-c", str(rc),
                                     "validate"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    stdin=subprocess.DEVNULL, env=clean_env(), cwd=work)
            _, status, usage = os.wait4(proc.pid, 0)   # CPU of time + monit + what monit reaped
            proc.returncode = os.waitstatus_to_exitcode(status)
            if i == 0:
                continue
            walls.append((time.perf_counter() - t0) * 1000)
            cpus.append((usage.ru_utime + usage.ru_stime) * 1000)
            rss.append(int((work / "maxrss").read_text().split()[-1]) / 1024)
            codes.append(proc.returncode)
        text = log.read_text(errors="replace") if log.exists() else ""
        failed = sum(1 for line in text.splitlines() if "] error" in line)
        return {"n": n, "pass_ms": stats(walls), "cpu_ms": stats(cpus), "rss_mb_peak": max(rss),
                "exit_codes": sorted(set(codes)), "error_lines": failed}
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- verdicts --------------------------------------------------------------------------------

def linearity(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether one kind's curve is linear (see the module docstring); None parts when too few sizes."""
    good = sorted((r for r in rows if "error" not in r["fazt"] and r["fazt"]["beats"]), key=lambda r: r["n"])
    out: dict[str, Any] = {"time_ratio": None, "cpu_ratio": None, "time_ok": None, "rss_kib_per_check": None,
                           "rss_ok": None}
    if len(good) >= 2:
        ref = next((r for r in good if r["n"] == 10), good[0])
        top = good[-1]
        if top["n"] > ref["n"]:
            per = {r["n"]: r["fazt"]["beat_wall_ms"]["median"] / r["n"] for r in (ref, top)}
            cpu = {r["n"]: r["fazt"]["cpu_ms_per_beat"] / r["n"] for r in (ref, top)}
            out.update(ref_n=ref["n"], top_n=top["n"], ms_per_check_ref=per[ref["n"]], ms_per_check_top=per[top["n"]],
                       time_ratio=per[top["n"]] / per[ref["n"]],
                       cpu_ratio=cpu[top["n"]] / cpu[ref["n"]] if cpu[ref["n"]] > 0 else None)
            # a neighbour's load stretches wall time, hardly CPU time: a wall-time miss counts only
            # when the daemon's CPU time per check grew past the factor too
            out["time_ok"] = out["time_ratio"] <= TIME_FACTOR or (
                out["cpu_ratio"] is not None and out["cpu_ratio"] <= TIME_FACTOR)
        lo, hi = good[0], good[-1]
        grown = hi["fazt"]["rss_mb_end"] - lo["fazt"]["rss_mb_end"]
        out["rss_kib_per_check"] = grown * 1024 / max(hi["n"] - lo["n"], 1)
    if len(good) >= 3:
        lo, mid, hi = good[0], good[-2], good[-1]
        rss = {r["n"]: r["fazt"]["rss_mb_end"] for r in (lo, mid, hi)}
        slope = max(rss[mid["n"]] - rss[lo["n"]], 0.0) / (mid["n"] - lo["n"])
        allowed = RSS_FACTOR * slope * (hi["n"] - mid["n"]) + RSS_SLACK_MB
        out.update(rss_growth_top_mb=rss[hi["n"]] - rss[mid["n"]], rss_growth_allowed_mb=allowed)
        out["rss_ok"] = out["rss_growth_top_mb"] <= allowed
    return out


# -- the run ---------------------------------------------------------------------------------

def run(kinds: list[str], sizes: list[int], beats: int, max_seconds: float, monit: bool,
        app_checks: str) -> dict[str, Any]:
    deadline = time.monotonic() + max_seconds
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fazt-bench-kinds-") as tmp:
        os.chmod(tmp, 0o755)
        world = build_world(Path(tmp), kinds, max(sizes))
        world.app_checks = app_checks
        try:
            for kind in kinds:
                rows = []
                for n in sizes:
                    row: dict[str, Any] = {"n": n}
                    row["fazt"] = _attempt(f"{kind} x {n}: fazt-agent", deadline,
                                           lambda: run_fazt(world, kind, n, beats, deadline))
                    if kind == "app":
                        row["floor"] = row["fazt"].pop("floor", None) or {"error": "the daemon run failed"}
                    else:
                        row["floor"] = _attempt(f"{kind} x {n}: floor", deadline,
                                                lambda: run_floor(kind, n, world.spec(), beats, deadline, world.tmp))
                    if monit and kind in MONIT_KINDS:
                        row["monit"] = _attempt(f"{kind} x {n}: monit", deadline,
                                                lambda: run_monit(world, kind, n, min(beats, MONIT_PASSES), deadline))
                    rows.append(row)
                report[kind] = {"rows": rows, "linear": linearity(rows)}
        finally:
            world.close()
    return report


def _attempt(what: str, deadline: float, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One run's report, or {"error": ...} when it failed or the time is up (the other runs still go on)."""
    if time.monotonic() > deadline:
        return {"error": "skipped: --max-seconds reached"}
    print(f"  {what} ...", file=sys.stderr, flush=True)
    try:
        return measure()
    except (BenchError, RuntimeError, OSError, subprocess.TimeoutExpired, sqlite3.Error) as e:
        print(f"  error: {e}", file=sys.stderr, flush=True)
        return {"error": str(e)}


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.2f}"


def print_table(report: dict[str, Any], beats: int, load: tuple[float, ...], monit: bool, app_checks: str) -> None:
    print(f"check kinds at scale: fazt-agent run, [pulse] interval {INTERVAL} s, median of {beats} beats after 1 "
          f"warm-up; load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    print("  beat = start to its pulse.beat event (checks + storing); checks = beats.duration_ms; check = one "
          "check's duration_ms (median);\n  CPU = the daemon's per beat (plugins included); RSS at the last beat; "
          "ok = ok results / results;\n  floor = the bare calls, serial, and its peak RSS; Monit = one `monit "
          "validate` pass, its CPU and peak RSS")
    if "app" in report:
        print("  app: " + ("N checks, each of one of N deployed apps (the floor reads the listing of all N per check)"
                           if app_checks == "per-app" else "one check (apps = [\"*\"]) of N deployed apps"))
    head = (f"{'kind':10} {'N':>4} | {'beat ms':>7} {'checks':>7} {'ms/check':>8} {'check ms':>8} {'CPU ms':>7} "
            f"{'RSS MiB':>7} {'ok':>9} | {'floor ms':>8} {'MiB':>5}")
    if monit:
        head += f" | {'Monit ms':>8} {'CPU ms':>7} {'MiB':>5}"
    print(head)
    for kind, data in report.items():
        for r in data["rows"]:
            f, fl, m = r["fazt"], r.get("floor") or {}, r.get("monit")
            if "error" in f:
                line = f"{kind:10} {r['n']:>4} | error: {f['error'].splitlines()[0][:70]}"
                print(line)
                continue
            line = (f"{kind:10} {r['n']:>4} | {_ms(f['beat_wall_ms']['median']):>7} "
                    f"{_ms(f['beat_checks_ms']['median']):>7} "
                    f"{f['beat_wall_ms']['median'] / r['n']:8.3f} {_ms(f['check_ms']['median']):>8} "
                    f"{_ms(f['cpu_ms_per_beat']):>7} {f['rss_mb_end']:7.1f} {f['results_ok']:>4}/{f['results']:<4} | ")
            line += (f"{'error':>8} {'':5}" if not fl or "error" in fl
                     else f"{_ms(fl['round_ms']['median']):>8} {fl['rss_mb_peak']:5.1f}")
            if monit:
                if m is None:
                    line += f" | {'none':>8}"
                elif "error" in m:
                    line += f" | error: {m['error'].splitlines()[0][:40]}"
                else:
                    line += (f" | {_ms(m['pass_ms']['median']):>8} {_ms(m['cpu_ms']['median']):>7} "
                             f"{m['rss_mb_peak']:5.1f}")
            print(line)
    print(f"linearity: beat ms per check at the largest N <= {TIME_FACTOR:g} x at N = 10 (a miss counts when the "
          f"daemon's CPU per check grew past {TIME_FACTOR:g} x too);\n  RSS growth from the next-largest to the "
          f"largest N <= {RSS_FACTOR:g} x what the lower sizes predict + {RSS_SLACK_MB:g} MiB")
    for kind, data in report.items():
        lin = data["linear"]
        if lin["time_ok"] is None:
            print(f"  {kind:10} not enough sizes measured: NOT SHOWN LINEAR")
            continue
        rss_text = ("" if lin["rss_ok"] is None else
                    f"; RSS {lin['rss_growth_top_mb']:+.1f} MiB at the top "
                    f"(allowed {lin['rss_growth_allowed_mb']:.1f}) {verdict(lin['rss_ok'])}")
        cpu_text = "" if lin["cpu_ratio"] is None else f", CPU/check x{lin['cpu_ratio']:.2f}"
        print(f"  {kind:10} {lin['ms_per_check_top']:.3f} ms/check at {lin['top_n']} vs {lin['ms_per_check_ref']:.3f} "
              f"at {lin['ref_n']}: x{lin['time_ratio']:.2f}{cpu_text} {verdict(lin['time_ok'])}; RSS "
              f"{lin['rss_kib_per_check']:+.1f} KiB/check{rss_text}")
    missing = [f"{k} ({why})" for k, why in NO_MONIT.items() if k in report]
    if monit and missing:
        print("no Monit anchor: " + "; ".join(missing))
    for kind, data in report.items():
        for r in data["rows"]:
            if r["fazt"].get("log_tail"):
                print(f"daemon log tail, {kind} x {r['n']}:\n{r['fazt']['log_tail']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Beat time and RSS of every check kind at 1 to 500 checks.")
    parser.add_argument("--checks", default="1,10,100,500", help="comma-separated sizes (default 1,10,100,500)")
    parser.add_argument("--kinds", default="", help="comma-separated kinds (default: every kind)")
    parser.add_argument("--beats", type=int, default=5, help="measured beats per run, after 1 warm-up (default 5)")
    parser.add_argument("--max-seconds", type=float, default=600.0,
                        help="stop after this long; what was not measured by then counts as not linear (default 600)")
    parser.add_argument("--no-monit", action="store_true", help="skip the Monit anchors")
    parser.add_argument("--app-checks", choices=("per-app", "one"), default="per-app",
                        help="app: N checks of one app each (default), or one check of all N apps")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--serve-tls", nargs=3, metavar=("PORT", "CERT", "KEY"), help=argparse.SUPPRESS)
    parser.add_argument("--floor", nargs=4, metavar=("KIND", "N", "SPEC", "ROUNDS"), help=argparse.SUPPRESS)
    parser.add_argument("--deploy-apps", nargs=3, metavar=("CONFIG", "N", "SITE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_tls:
        serve_tls(int(args.serve_tls[0]), args.serve_tls[1], args.serve_tls[2])
        return 0
    if args.floor:
        kind, n, spec, rounds = args.floor
        print(json.dumps(floor_main(kind, int(n), json.loads(Path(spec).read_text()), int(rounds))))
        return 0
    if args.deploy_apps:
        asyncio.run(_deploy(Path(args.deploy_apps[0]), int(args.deploy_apps[1]), Path(args.deploy_apps[2])))
        return 0

    from fazt_agent.pulse import KINDS

    try:
        sizes = sorted({int(s) for s in args.checks.split(",") if s.strip()})
    except ValueError:
        parser.error(f"--checks expects sizes like 1,10,100,500, got {args.checks!r}")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()] or list(KINDS)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        parser.error(f"--kinds: unknown kind(s) {', '.join(unknown)}; known: {', '.join(KINDS)}")
    if not sizes or sizes[0] < 1 or args.beats < 1 or args.max_seconds <= 0:
        parser.error("--checks must be positive, --beats at least 1, --max-seconds positive")
    if "command" in kinds and not os.access(PLUGIN, os.X_OK):
        print(f"error: {PLUGIN} is missing: apt-get install monitoring-plugins-basic", file=sys.stderr)
        return 1
    monit = not args.no_monit
    if monit and not shutil.which("monit") and not os.path.exists("/usr/bin/monit"):
        print("error: monit is not installed: run scripts/bench-deps (or pass --no-monit)", file=sys.stderr)
        return 1
    if monit and not os.access(GNU_TIME, os.X_OK):
        print(f"error: {GNU_TIME} is missing: run scripts/bench-deps (or pass --no-monit)", file=sys.stderr)
        return 1
    load = os.getloadavg()
    t0 = time.monotonic()
    try:
        report = run(kinds, sizes, args.beats, args.max_seconds, monit, args.app_checks)
    except (BenchError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    failed = [f"{kind} x {r['n']}" for kind, data in report.items() for r in data["rows"]
              if "error" in r["fazt"] or r["fazt"].get("exit_code") != 0]
    linear = all(d["linear"]["time_ok"] is not False and d["linear"]["rss_ok"] is not False
                 for d in report.values())
    shown = all(d["linear"]["time_ok"] is not None for d in report.values()) or len(sizes) < 2
    ok = linear and shown and not failed
    result = {"bench": "kinds_scale", "interval_s": INTERVAL, "beats": args.beats, "sizes": sizes,
              "app_checks": args.app_checks,
              "load_before": list(load), "load_after": list(os.getloadavg()), "cpus": os.cpu_count(),
              "wall_s": time.monotonic() - t0, "kinds": report, "no_monit": {k: v for k, v in NO_MONIT.items()
                                                                             if k in kinds},
              "factors": {"time": TIME_FACTOR, "rss": RSS_FACTOR, "rss_slack_mb": RSS_SLACK_MB},
              "failed": failed, "ok": ok}
    if args.json:
        print_json(result)
        return 0 if ok else 1
    print_table(report, args.beats, load, monit, args.app_checks)
    after = os.getloadavg()
    print(f"took {result['wall_s']:.0f} s; load average after {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}")
    if failed:
        print(f"runs that failed or were not measured: {', '.join(failed)}")
    print("every curve linear" if ok else "some curve NOT linear, or not measured")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
