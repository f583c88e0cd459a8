"""GET /metrics on a real daemon: bearer tokens, and what it says read back by the Prometheus
client library's own parser of the text format."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from _mcp import create_token, fill, listen, start_daemon, stop_process, wait_until
from conftest import Ops


@pytest.fixture
def daemon(ops: Ops, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Medium autonomy, a cleanup root with a quote and a backslash in its name, above its
    dir_size threshold, whose cleanup is destructive: a halt waits for the owner."""
    root = tmp_path / 'logs "old" \\ weird'
    root.mkdir()
    fill(root, 10)
    (ops.dir / "policies" / "local.toml").write_text(f"[constraints]\ncleanup_roots = [{json.dumps(str(root))}]\n")
    (ops.dir / "kernel" / "actions.toml").write_text('[cleanup]\ndestructive_above = "1KB"\n')
    ops.write_pulse("junk", f'[[checks]]\nname = "junk"\nkind = "dir_size"\npath = {json.dumps(str(root))}\n'
                            'warning = "20KB"\n')
    ops.set_config("agent", "autonomy", "medium")
    proc = start_daemon(ops)
    yield proc
    if proc.poll() is None:
        code, _, err = stop_process(proc)
        assert code == 0, err


def scrape(ops: Ops, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"http://{listen(ops)}/metrics", headers=headers, timeout=10)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(parsed: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return parsed[(name, frozenset(labels.items()))]


def test_metrics_need_a_token_and_describe_checks_incidents_and_halts(ops: Ops, daemon: subprocess.Popen[str],
                                                                      tmp_path: Path) -> None:
    root = str(tmp_path / 'logs "old" \\ weird')
    assert scrape(ops, None).status_code == 401
    assert scrape(ops, "fzt_not-a-token").status_code == 401
    token = create_token(ops, "prometheus", "read")
    wait_until("the halt", lambda: json.loads(ops.cli("halts", "list", "--json").stdout) != [])
    response = scrape(ops, token)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain; version=0.0.4")
    parsed = samples(response.text)
    assert value(parsed, "fazt_agent_autonomy", level="medium") == 1
    assert value(parsed, "fazt_agent_paused") == 0
    assert value(parsed, "fazt_agent_check_status", check="junk", kind="dir_size", target=root) == 1   # warning
    assert value(parsed, "fazt_agent_check_value", check="junk", kind="dir_size", target=root,
                 metric="size_bytes") == 10 * 4096
    assert value(parsed, "fazt_agent_incidents_open", severity="warning") == 1
    assert value(parsed, "fazt_agent_halts_pending") == 1
    events = json.loads(ops.cli("events", "list", "--limit", "1000", "--json").stdout)
    assert value(parsed, "fazt_agent_events_total") >= len(events) > 0
    assert value(parsed, "fazt_agent_last_beat_duration_seconds") > 0

    assert ops.cli("pause").returncode == 0
    assert value(samples(scrape(ops, token).text), "fazt_agent_paused") == 1
    assert httpx.post(f"http://{listen(ops)}/metrics", timeout=10).status_code == 405
    assert ops.cli("tokens", "revoke", "prometheus").returncode == 0
    assert scrape(ops, token).status_code == 401
