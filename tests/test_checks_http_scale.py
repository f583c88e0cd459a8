"""`http` checks at scale: many checks share keep-alive connections (one pool per Pulse, a TLS
context per verify setting, closed when the daemon stops), a server that never answers does not
make the healthy checks unknown, a huge body is read only up to a limit, a kept connection the
server closed meanwhile is retried, and when the agent itself cannot run a check in time (no free
slot of `[pulse] max_concurrency`, or its event loop blocked) the result says so and opens no
incident about the target.

Real servers on loopback (ThreadingHTTPServer speaking HTTP/1.1, plain or TLS, and a socket that
accepts and never answers), the real CLI (`fazt-agent beat`) and a real daemon; no timing is
asserted.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from _helpers import incidents, run_daemon, stop_daemon
from _pebble import make_ca, make_leaf, write_pair
from conftest import Ops, base_env
from fazt_agent.clock import SystemClock
from fazt_agent.incidents import transitions
from fazt_agent.pulse import CHECKS
from fazt_agent.pulse.base import OVERLOADED, Check, CheckContext, CheckResult, Shared
from fazt_agent.pulse.runner import run_checks

HUGE_CAP = 256 * 1024 * 1024   # the /huge handler gives up after this much (a client that never closes)


class Site(ThreadingHTTPServer):
    """A keep-alive HTTP/1.1 server that counts connections, requests and what /huge managed to send."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.tls = tls
        self.lock = threading.Lock()
        self.connections = 0
        self.closed = 0
        self.requests: list[str] = []
        self.huge_sent: list[int] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def get_request(self) -> tuple[socket.socket, object]:
        sock, address = super().get_request()
        if self.tls is not None:  # the handshake happens in the connection's thread
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30   # an idle kept-alive connection is dropped after this long
    server: Site

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.lock:
                self.server.closed += 1

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.requests.append(self.path)
        if self.path.startswith("/slow"):
            time.sleep(0.8)
            self.reply(b"finally")
        elif self.path.startswith("/huge"):
            self.huge()
        else:
            self.reply(b"healthy")

    def reply(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def huge(self) -> None:
        """An endless chunked body: sent until the client closes (or HUGE_CAP)."""
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b"x" * 65536
        frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        sent = 0
        self.connection.settimeout(10)
        try:
            while sent < HUGE_CAP:
                self.wfile.write(frame)
                sent += len(chunk)
        except OSError:  # the client closed: what we want
            pass
        finally:
            with self.server.lock:
                self.server.huge_sent.append(sent)
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def site() -> Iterator[Site]:
    server = Site()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


class Silent:
    """A server that accepts connections and never answers (nor closes them)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def silent() -> Iterator[Silent]:
    server = Silent()
    yield server
    server.close()


def checks_toml(*checks: dict[str, str]) -> str:
    return "\n".join("[[checks]]\n" + "".join(f'{k} = "{v}"\n' for k, v in c.items()) for c in checks)


def beat(ops: Ops) -> dict:
    # ResourceWarnings shown: a connection left open at exit would print "unclosed transport"
    result = ops.cli("beat", "--json", env=base_env(PYTHONWARNINGS="always::ResourceWarning"), timeout=120)
    assert result.returncode in (0, 1), result.stderr
    assert "unclosed" not in result.stderr.lower() and "Traceback" not in result.stderr, result.stderr
    return json.loads(result.stdout)


def test_200_http_checks_in_one_beat_are_all_ok_over_a_few_connections(ops: Ops, site: Site) -> None:
    ops.write_pulse("web", checks_toml(*({"name": f"page-{i}", "kind": "http", "url": f"{site.url}/page/{i}",
                                          "expect_text": "healthy"} for i in range(200))))
    result = beat(ops)
    statuses = {r["check"]: r["status"] for r in result["results"]}
    assert len(statuses) == 200 and set(statuses.values()) == {"ok"}, [
        r for r in result["results"] if r["status"] != "ok"][:3]
    assert sorted(site.requests) == sorted(f"/page/{i}" for i in range(200))
    # one shared pool: at most a lane's share of [pulse] max_concurrency (64 // 4) at once to one server
    assert site.connections <= 16, site.connections


def test_the_daemon_reuses_its_connections_beat_after_beat_and_closes_them_when_it_stops(
        ops: Ops, site: Site) -> None:
    ops.set_config("pulse", "interval", "1s")
    ops.write_pulse("web", checks_toml(*({"name": f"page-{i}", "kind": "http", "url": f"{site.url}/page/{i}"}
                                         for i in range(20))))
    proc = run_daemon(ops, stdout=subprocess.PIPE)
    db = ops.data_dir / "fazt-agent.db"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _count(db, "SELECT COUNT(*) FROM beats") < 4:
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.2)
    finally:
        err = stop_daemon(proc, check=False)
    assert proc.returncode == 0, err
    beats = _count(db, "SELECT COUNT(*) FROM beats")
    assert beats >= 4
    rows = _rows(db, "SELECT status, message FROM results")
    assert len(rows) == 20 * beats and {status for status, _ in rows} == {"ok"}, rows[:3]
    assert len(site.requests) == 20 * beats
    assert site.connections <= 16, (site.connections, len(site.requests))   # not one per request
    deadline = time.monotonic() + 10
    while site.closed < site.connections and time.monotonic() < deadline:
        time.sleep(0.05)
    assert site.closed == site.connections   # the daemon closed them when it stopped


def test_a_server_that_never_answers_does_not_make_the_healthy_checks_unknown(
        ops: Ops, site: Site, silent: Silent) -> None:
    stuck = [{"name": f"stuck-{i}", "kind": "http", "url": f"{silent.url}/{i}", "timeout": "2s",
              "request_timeout": "1s"} for i in range(100)]
    healthy = [{"name": f"page-{i}", "kind": "http", "url": f"{site.url}/page/{i}", "timeout": "2s",
                "request_timeout": "1s", "expect_text": "healthy"} for i in range(50)]
    ops.write_pulse("web", checks_toml(*stuck, *healthy))
    result = beat(ops)
    by_check = {r["check"]: r for r in result["results"]}
    assert {by_check[c["name"]]["status"] for c in healthy} == {"ok"}, [
        by_check[c["name"]] for c in healthy if by_check[c["name"]]["status"] != "ok"][:3]
    for c in stuck:
        r = by_check[c["name"]]
        # measured (critical) or, once its server's slots were all taken for its whole timeout, not run
        assert (r["status"], r["message"]) == ("critical", "no answer within 1s") or (
            r["status"] == "unknown" and r["details"]["cause"] == OVERLOADED), r
    assert sum(by_check[c["name"]]["status"] == "critical" for c in stuck) >= 16
    opened = {(i["check"], i["target"]) for i in incidents(ops)}
    assert all(name.startswith("stuck-") for name, _ in opened)
    assert not any(by_check[name]["status"] == "unknown" for name, _ in opened)


def test_overload_says_so_and_opens_no_incident_about_the_target(ops: Ops, site: Site) -> None:
    ops.set_config("pulse", "max_concurrency", 1)
    checks = [{"name": f"slow-{i}", "kind": "http", "url": f"{site.url}/slow/{i}", "timeout": "3s",
               "request_timeout": "2s"} for i in range(8)]
    ops.write_pulse("web", checks_toml(*checks))
    result = beat(ops)
    late = [r for r in result["results"] if r["status"] != "ok"]
    assert late and len(late) < 8   # the first ran; each one after waited for the single slot
    for r in late:
        assert r["status"] == "unknown" and r["details"]["cause"] == OVERLOADED, r
        assert r["message"].startswith("not measured in time, the agent was overloaded: no check slot was free "
                                       "within "), r["message"]
        assert "[pulse] max_concurrency = 1" in r["message"]
        assert r["target"] == f"{site.url}/slow/{r['check'].split('-')[1]}"
    assert incidents(ops) == []
    assert len(site.requests) == 8 - len(late)   # what was not run did not reach the server
    events = json.loads(ops.cli("events", "list", "--json").stdout)
    assert not [e for e in events if e["type"].startswith("incident.")]


def test_a_huge_body_is_read_only_up_to_a_limit_and_a_small_one_keeps_the_connection(ops: Ops, site: Site) -> None:
    ops.set_config("pulse", "max_concurrency", 1)   # one at a time, in order: connection reuse is visible
    checks = [
        *({"name": f"before-{i}", "kind": "http", "url": f"{site.url}/page/{i}"} for i in range(5)),
        {"name": "huge", "kind": "http", "url": f"{site.url}/huge/1"},
        {"name": "huge-text", "kind": "http", "url": f"{site.url}/huge/2", "expect_text": "needle"},
        *({"name": f"after-{i}", "kind": "http", "url": f"{site.url}/page/{i}"} for i in range(5)),
    ]
    ops.write_pulse("web", checks_toml(*checks))
    result = beat(ops)
    by_check = {r["check"]: r for r in result["results"]}
    assert by_check["huge"]["status"] == "ok" and by_check["huge"]["message"].startswith("200 OK in ")
    assert by_check["huge-text"]["status"] == "critical"
    assert by_check["huge-text"]["message"] == "status 200 OK but the body lacks 'needle'"
    assert by_check["huge-text"]["details"]["body_snippet"] == "x" * 200
    assert {by_check[f"{w}-{i}"]["status"] for w in ("before", "after") for i in range(5)} == {"ok"}
    deadline = time.monotonic() + 10
    while len(site.huge_sent) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    # both huge answers were cut off by the client closing, long before the server's cap
    assert len(site.huge_sent) == 2 and max(site.huge_sent) < 64 * 1024 * 1024, site.huge_sent
    # the five small answers before share a connection, which the unread huge body then closes; the
    # huge text check has its own, the five after share a new one
    assert site.connections == 3, site.connections


def test_https_checks_share_a_pool_per_verify_setting_and_use_the_system_trust_store(
        ops: Ops, tmp_path: Path) -> None:
    ca = make_ca()
    cert, key = write_pair(tmp_path / "tls", *make_leaf(ca, ["localhost"]))
    trusted = tmp_path / "ca.pem"
    trusted.write_bytes(ca.pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = Site(context)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        ops.write_pulse("web", checks_toml(
            *({"name": f"named-{i}", "kind": "http", "url": f"https://localhost:{port}/named/{i}",
               "expect_text": "healthy"} for i in range(5)),
            *({"name": f"unverified-{i}", "kind": "http", "url": f"https://127.0.0.1:{port}/ip/{i}",
               "verify_tls": "false"} for i in range(5)),
            {"name": "mismatch", "kind": "http", "url": f"https://127.0.0.1:{port}/ip/x"}).replace(
                'verify_tls = "false"', "verify_tls = false"))
        # the system trust store, as OpenSSL reads it (SSL_CERT_FILE here), decides what is trusted
        result = ops.cli("beat", "--json", env=base_env(SSL_CERT_FILE=str(trusted),
                                                        PYTHONWARNINGS="always::ResourceWarning"))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert result.returncode == 1 and "unclosed" not in result.stderr.lower(), result.stderr
    by_check = {r["check"]: r for r in json.loads(result.stdout)["results"]}
    assert {by_check[f"{kind}-{i}"]["status"] for kind in ("named", "unverified") for i in range(5)} == {"ok"}
    mismatch = by_check["mismatch"]
    assert mismatch["status"] == "critical"
    assert mismatch["message"].startswith(f"request failed: ConnectError: TLS certificate of 127.0.0.1:{port} "
                                          "not trusted: "), mismatch["message"]
    assert sorted(server.requests) == sorted([*(f"/named/{i}" for i in range(5)), *(f"/ip/{i}" for i in range(5))])


class OneShot(ThreadingHTTPServer):
    """Answers the first request of each connection with keep-alive, then closes the connection
    when the next request comes, without an answer: a server whose keep-alive timeout ran out just
    as the agent reused the connection."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), OneShotHandler)
        self.connections = 0
        self.unanswered = 0


class OneShotHandler(BaseHTTPRequestHandler):
    server: OneShot

    def handle(self) -> None:
        self.server.connections += 1
        self.connection.settimeout(10)
        try:
            self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            if self.rfile.readline():   # the next request: the connection is closed unanswered
                self.server.unanswered += 1
        except OSError:
            pass


def test_a_kept_connection_the_server_closed_meanwhile_is_retried_on_a_new_one(ops: Ops) -> None:
    server = OneShot()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        ops.set_config("pulse", "max_concurrency", 1)   # one after the other: the second reuses the first's
        ops.write_pulse("web", checks_toml(*({"name": f"page-{i}", "kind": "http", "url": f"{url}/{i}"}
                                             for i in range(3))))
        result = beat(ops)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert [(r["check"], r["status"]) for r in result["results"]] == [(f"page-{i}", "ok") for i in range(3)], (
        result["results"])
    # page-1 and page-2 each went first on the connection kept from the one before, which the server
    # closed unanswered, then on a new one
    assert (server.connections, server.unanswered) == (3, 2)


def test_max_concurrency_and_header_values_are_checked_with_the_file_and_key(ops: Ops, site: Site) -> None:
    ops.set_config("pulse", "max_concurrency", 0)
    result = ops.cli("config", "check")
    assert result.returncode == 2
    assert "config.toml:pulse.max_concurrency: " in result.stderr and "greater than or equal to 1" in result.stderr
    ops.set_config("pulse", "max_concurrency", 8)
    ops.write_pulse("web", '[[checks]]\nname = "web"\nkind = "http"\n'
                           f'url = "{site.url}/"\nheaders = {{ X-Token = "a\\r\\nX-Injected: 1" }}\n')
    result = ops.cli("config", "check")
    assert result.returncode == 2
    assert "web.toml" in result.stderr and "holds a line break or control character" in result.stderr


class Blocker(Check):
    """Blocks the event loop (as a buggy or CPU-bound piece of the agent would), then reports a
    problem of its own that is not about time."""

    kind = "test-blocker"

    async def collect(self, ctx: CheckContext) -> list[CheckResult]:
        time.sleep(1.2)
        return [self.result("thing", "warning", "found something")]


async def test_a_problem_about_time_measured_while_the_loop_was_blocked_is_not_believed(site: Site) -> None:
    http = CHECKS["http"]

    def check(**config: str) -> Check:
        return http(http.Config.model_validate({"kind": "http", **config}))

    slow_judge = check(name="web", url=f"{site.url}/page/1", latency_critical="500ms")
    refused = check(name="refused", url=f"http://127.0.0.1:{_closed_port()}/")
    blocker = Blocker(http.Config.model_validate({"kind": "http", "name": "blocker", "url": site.url}))
    shared = Shared()
    try:
        results = await run_checks([slow_judge, refused, blocker], CheckContext(SystemClock(), shared=shared), 10.0)
    finally:
        await shared.aclose()
    web, closed, own = results
    # the answer came at once but was read after the block: the latency measured the agent
    assert web.status == "unknown" and web.details["cause"] == OVERLOADED, web
    assert web.details["measured"]["status"] == "critical"
    assert web.message.startswith("not measured in time, the agent was overloaded: its event loop stalled ")
    # problems that are not about time stand, the blocking check's own too
    assert closed.status == "critical" and closed.message.startswith("request failed: ConnectError: "), closed
    assert (own.status, own.message) == ("warning", "found something")
    assert [(t.change, t.result.check) for t in transitions({}, results)] == [("opened", "refused"),
                                                                              ("opened", "blocker")]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _count(db, sql: str) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:  # not migrated yet
        return 0


def _rows(db, sql: str) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        return conn.execute(sql).fetchall()


def test_headers_that_frame_the_request_are_refused_with_the_file_and_key(ops: Ops, site: Site) -> None:
    # the request has no body: h11 writes its framing, a configured one would make the server wait
    for name in ("Content-Length", "transfer-encoding"):
        ops.write_pulse("web", f'[[checks]]\nname = "web"\nkind = "http"\nurl = "{site.url}/"\n'
                               f'headers = {{ {name} = "5" }}\n')
        result = ops.cli("config", "check")
        assert result.returncode == 2, result.stdout
        assert "web.toml" in result.stderr and f"header '{name}' is set by the agent" in result.stderr, result.stderr
    ops.write_pulse("web", f'[[checks]]\nname = "web"\nkind = "http"\nurl = "{site.url}/"\n'
                           'headers = { X-Token = " padded\\t" }\n')
    assert ops.cli("config", "check").returncode == 0
    [r] = beat(ops)["results"]
    assert r["status"] == "ok", r
