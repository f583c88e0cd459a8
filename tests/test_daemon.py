"""The daemon as systemd runs it: a real subprocess, sd_notify over a unix datagram socket,
the data-dir lock, /healthz, and a clean stop on SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from conftest import Ops, base_env


class NotifySocket:
    """A unix datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def wait_for(self, prefix: str, timeout: float = 20.0) -> str:
        """Return the first datagram with a line starting with `prefix`, waiting for new ones."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for message in self.messages[seen:]:
                if any(line.startswith(prefix) for line in message.split("\n")):
                    return message
            seen = len(self.messages)
            if time.monotonic() >= deadline:
                raise AssertionError(f"no {prefix!r} from the daemon within {timeout}s; got {self.messages}")
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except socket.timeout:
                pass

    def close(self) -> None:
        self.sock.close()


def start_daemon(ops: Ops, notify: NotifySocket | None = None, **env: str) -> subprocess.Popen[str]:
    extra = dict(env)
    if notify is not None:
        extra["NOTIFY_SOCKET"] = str(notify.path)
    return subprocess.Popen([sys.executable, "-m", "fazt_agent", "--config", str(ops.config), "run"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=base_env(**extra))


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 5.0) -> tuple[int, float, str]:
    t0 = time.monotonic()
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"daemon did not stop within {timeout}s of signal {sig}")
    return proc.returncode, time.monotonic() - t0, err


def test_daemon_notifies_systemd_serves_healthz_and_stops_cleanly_on_sigterm(ops: Ops, notify: NotifySocket) -> None:
    ops.set_config("pulse", "interval", "2s")
    proc = start_daemon(ops, notify, WATCHDOG_USEC="400000")
    try:
        ready = notify.wait_for("READY=1")
        assert any(line.startswith("STATUS=running") for line in ready.split("\n"))
        notify.wait_for("WATCHDOG=1")
        notify.wait_for("STATUS=last beat")  # the first beat runs at once and updates STATUS
        listen = ops.read_config()["http"]["listen"]
        health = httpx.get(f"http://{listen}/healthz", timeout=5)
        assert health.status_code == 200
        assert health.json()["status"] == "ok" and health.json()["last_beat"]
    finally:
        code, elapsed, err = stop(proc)
    assert code == 0, err
    assert elapsed < 5
    notify.wait_for("STOPPING=1", timeout=1)
    types = [e["type"] for e in json.loads(ops.cli("events", "list", "--json").stdout)]
    assert types[0] == "agent.started" and types[-1] == "agent.stopped" and "pulse.beat" in types


def test_a_second_daemon_on_the_same_data_dir_exits_with_a_clear_message(ops: Ops, notify: NotifySocket) -> None:
    first = start_daemon(ops, notify)
    try:
        notify.wait_for("READY=1")
        second = subprocess.run([sys.executable, "-m", "fazt_agent", "--config", str(ops.config), "run"],
                                capture_output=True, text=True, timeout=30, env=base_env())
        assert second.returncode == 1
        assert f"another fazt-agent daemon (pid {first.pid}) is already running" in second.stderr
        assert "Traceback" not in second.stderr
        status = json.loads(ops.cli("status", "--json").stdout)
        assert status["daemon"] == {"running": True, "pid": first.pid}
    finally:
        code, _, err = stop(first)
    assert code == 0, err
    assert json.loads(ops.cli("status", "--json").stdout)["daemon"]["running"] is False


def test_sigint_stops_the_daemon_too(ops: Ops, notify: NotifySocket) -> None:
    proc = start_daemon(ops, notify)
    notify.wait_for("READY=1")
    code, elapsed, err = stop(proc, signal.SIGINT)
    assert code == 0, err
    assert elapsed < 5


def test_a_beat_in_flight_at_sigterm_is_recorded_as_interrupted(ops: Ops, notify: NotifySocket, tmp_path: Path) -> None:
    script = tmp_path / "slow.sh"
    started = tmp_path / "started"
    script.write_text(f"#!/bin/sh\ntouch {started}\nexec sleep 60\n")
    script.chmod(0o755)
    ops.write_pulse("slow", f'[[checks]]\nname = "slow"\nkind = "command"\ncommand = ["{script}"]\ntimeout = "120s"\n')
    proc = start_daemon(ops, notify)
    try:
        notify.wait_for("READY=1")
        deadline = time.monotonic() + 20
        while not started.exists() and time.monotonic() < deadline:
            notify.sock.settimeout(0.05)
            try:
                notify.messages.append(notify.sock.recv(4096).decode())
            except socket.timeout:
                pass
        assert started.exists(), "the slow check never started"
    finally:
        code, elapsed, err = stop(proc)
    assert code == 0, err
    assert elapsed < 5
    events = json.loads(ops.cli("events", "list", "--json").stdout)
    interrupted = [e for e in events if e["type"] == "pulse.beat_interrupted"]
    assert len(interrupted) == 1 and "SIGTERM" in interrupted[0]["data"]["reason"]
    stopped = [e for e in events if e["type"] == "agent.stopped"][0]
    assert stopped["data"]["interrupted"]


def test_a_busy_control_plane_port_is_a_clear_error(ops: Ops) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        ops.set_config("http", "listen", f"127.0.0.1:{busy.getsockname()[1]}")
        result = subprocess.run([sys.executable, "-m", "fazt_agent", "--config", str(ops.config), "run"],
                                capture_output=True, text=True, timeout=30, env=base_env())
    assert result.returncode == 1
    assert "cannot listen on" in result.stderr and "[http] listen" in result.stderr
    assert "Traceback" not in result.stderr


def test_json_logs_never_contain_secrets(ops: Ops, notify: NotifySocket) -> None:
    ops.set_config("notify", "urls", ["json://127.0.0.1:9/${HOOK_TOKEN}"])
    ops.set_config("log", "format", "json")
    ops.set_config("log", "level", "debug")
    proc = start_daemon(ops, notify, HOOK_TOKEN="tok-very-secret-123")
    notify.wait_for("READY=1")
    code, _, err = stop(proc)
    assert code == 0, err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert lines and all({"ts", "level", "msg"} <= set(line) for line in lines)
    assert "tok-very-secret-123" not in err
