"""The pulse and status commands through the real CLI, and beat retention."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from conftest import Ops, base_env


@pytest.fixture
def site() -> Iterator[str]:
    """A local web server: / answers 200 'hello fazt', /broken answers 500."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            ok = self.path == "/"
            body = b"hello fazt" if ok else b"oops"
            self.send_response(200 if ok else 500)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_beat_json_reports_every_check_and_http_probes_a_local_server(ops: Ops, site: str) -> None:
    ops.write_pulse("web", f'[[checks]]\nname = "home"\nkind = "http"\nurl = "{site}/"\nexpect_text = "fazt"\n\n'
                           f'[[checks]]\nname = "api"\nkind = "http"\nurl = "{site}/broken"\n')
    result = ops.cli("beat", "--json")
    assert result.returncode == 1  # one probe fails
    beat = json.loads(result.stdout)
    by_check = {r["check"]: r for r in beat["results"]}
    assert by_check["home"]["status"] == "ok" and by_check["home"]["metrics"]["status_code"] == 200
    assert by_check["api"]["status"] == "critical" and "500" in by_check["api"]["message"]
    assert beat["status"] == "critical" and beat["id"] == 1


def test_status_summarises_health_autonomy_and_problems(ops: Ops, tmp_path: Path) -> None:
    before = json.loads(ops.cli("status", "--json").stdout)
    assert before["health"] == "unknown" and before["last_beat"] is None and before["notes"]
    ops.write_pulse("age", f'[[checks]]\nname = "backups"\nkind = "file_age"\npath = "{tmp_path}"\n'
                           'pattern = "*.tar.gz"\nwarning = "1h"\n')
    ops.cli("beat")
    status = json.loads(ops.cli("status", "--json").stdout)
    assert status["health"] == "critical"  # no backup file at all
    assert status["autonomy"] == "low" and status["daemon"]["running"] is False
    assert status["problems"][0]["check"] == "backups"
    text = ops.cli("status").stdout
    assert "health     critical" in text and "backups" in text


def test_pulse_status_history_and_trend(ops: Ops) -> None:
    ops.write_pulse("sys", '[[checks]]\nname = "system"\nkind = "system"\n')
    for _ in range(4):
        ops.cli("beat")
    status = json.loads(ops.cli("pulse", "status", "--json").stdout)
    assert [r["check"] for r in status] == ["system"]
    history = json.loads(ops.cli("pulse", "history", "--hours", "1", "--json").stdout)
    assert len(history) == 4
    trend = ops.cli("pulse", "trend", "system.memory_percent", "--hours", "1")
    assert trend.returncode == 0, trend.stderr
    assert "4 points" in trend.stdout and any(c in trend.stdout for c in "▁▂▃▄▅▆▇█")
    series = json.loads(ops.cli("pulse", "trend", "system.memory_percent", "--json").stdout)
    assert len(series) == 4 and all(0 < p["value"] < 100 for p in series)
    missing = ops.cli("pulse", "trend", "system.no_such_metric")
    assert missing.returncode == 1 and "no values" in missing.stderr
    bad = ops.cli("pulse", "trend", "nonsense")
    assert bad.returncode == 2 and "CHECK.METRIC" in bad.stderr


def test_trend_asks_for_a_target_when_a_check_has_several(ops: Ops, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    ops.write_pulse("disk", '[[checks]]\nname = "disk"\nkind = "disk"\nmounts = ["/", "/dev/shm"]\n')
    ops.cli("beat")
    result = ops.cli("pulse", "trend", "disk.used_percent")
    assert result.returncode == 2 and "several targets" in result.stderr and "disk[/].used_percent" in result.stderr
    assert ops.cli("pulse", "trend", "disk[/].used_percent").returncode == 0


def test_events_tail_prints_new_events_as_they_come(ops: Ops, tmp_path: Path) -> None:
    ops.write_pulse("quiet", f'[[checks]]\nname = "tmp"\nkind = "dir_size"\npath = "{tmp_path}"\n')  # always ok
    ops.cli("beat")
    proc = subprocess.Popen([sys.executable, "-m", "fazt_agent", "--config", str(ops.config), "events", "tail",
                             "--json", "--poll", "0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=base_env())
    try:
        first = json.loads(proc.stdout.readline())
        assert first["type"] == "pulse.beat"
        ops.cli("autonomy", "high")
        later = json.loads(proc.stdout.readline())
        assert later["type"] == "autonomy.changed" and later["data"]["new"] == "high"
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


async def test_beats_older_than_the_retention_are_pruned(ops: Ops) -> None:
    from fazt_agent.config import load_config
    from fazt_agent.runtime import Runtime

    class Clock:
        t = datetime(2026, 1, 1, tzinfo=timezone.utc)

        def now(self) -> datetime:
            return self.t

        def monotonic(self) -> float:
            return self.t.timestamp()

    clock = Clock()
    ops.write_pulse("sys", '[[checks]]\nname = "system"\nkind = "system"\n')
    rt = await Runtime.open(load_config(ops.config), clock=clock)
    try:
        await rt.pulse.beat(everything=True)
        clock.t += timedelta(days=8)
        await rt.pulse.beat(everything=True)
        events, beats = await rt.prune()
        assert beats == 1 and events == 0  # beats keep 7 days, events 90
        assert len(await rt.beats.history(clock.t - timedelta(days=30))) == 1
    finally:
        await rt.close()
