"""Alertmanager in: a real `prometheus-alertmanager` (Debian) whose receiver is the agent's
/webhooks/alertmanager; alerts posted to its API become incidents that the policy decides on, and
resolve. The webhook itself: bearer token with `operate` scope, dedup by fingerprint, refusals."""

from __future__ import annotations

import json
import subprocess
import uuid
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from _helpers import incidents
from _mcp import create_token, events, listen, start_daemon, stop_process, wait_until
from conftest import Ops, free_port

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"


@pytest.fixture
def daemon(ops: Ops) -> Iterator[subprocess.Popen[str]]:
    ops.set_config("agent", "autonomy", "medium")
    (ops.dir / "policies" / "alerts.toml").write_text(
        '[[rules]]\nname = "alert-notice"\nmatch = { check = ["HighErrorRate"] }\naction = "notify"\n'
        'args = { message = "alert {check} on {target}" }\n')
    proc = start_daemon(ops)
    yield proc
    if proc.poll() is None:
        code, _, err = stop_process(proc)
        assert code == 0, err


def webhook_url(ops: Ops) -> str:
    return f"http://{listen(ops)}/webhooks/alertmanager"


def now() -> datetime:
    return datetime.now(timezone.utc)


def am_now(am: str) -> datetime:
    """The time by Alertmanager's clock (its Date header), which it judges the alerts' times by.

    Alertmanager is a Go program: it reads the clock through the vDSO, so a libfaketime-shifted
    run (scripts/test-any-date) leaves it on the real time while this process is shifted.
    """
    return parsedate_to_datetime(httpx.get(f"{am}/-/ready", timeout=10).headers["Date"])


def stamp(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


@pytest.fixture
def alertmanager(ops: Ops, daemon: Any, tmp_path: Path) -> Iterator[str]:
    """Alertmanager in the foreground, its only receiver the agent's webhook (operate token)."""
    token = create_token(ops, "alertmanager", "operate")
    folder = tmp_path / "am"
    folder.mkdir()
    config = folder / "alertmanager.yml"
    config.write_text(json.dumps({   # YAML is a superset of JSON
        "route": {"receiver": "agent", "group_by": ["alertname", "instance"], "group_wait": "1s",
                  "group_interval": "1s", "repeat_interval": "1h"},
        "receivers": [{"name": "agent", "webhook_configs": [{
            "url": webhook_url(ops), "send_resolved": True,
            "http_config": {"authorization": {"type": "Bearer", "credentials": token}}}]}]}))
    port = free_port()
    proc = subprocess.Popen([ALERTMANAGER, f"--config.file={config}", f"--storage.path={folder / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"alertmanager exited with {proc.returncode}: {proc.stderr.read()}")
        try:
            return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until("alertmanager's /-/ready", ready)
        yield url
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def post_alert(am: str, *, resolved: bool = False, **labels: str) -> None:
    start = am_now(am) - timedelta(minutes=5)
    alert: dict[str, Any] = {"labels": labels, "annotations": {"summary": "5xx above 5 %"},
                             "startsAt": stamp(start), "generatorURL": "http://prometheus.example/graph"}
    if resolved:
        alert["endsAt"] = stamp(am_now(am) - timedelta(seconds=1))
    r = httpx.post(f"{am}/api/v2/alerts", json=[alert], timeout=10)
    assert r.status_code == 200, r.text


def test_alerts_posted_to_alertmanager_open_an_incident_the_policy_acts_on_and_resolve_it(
        ops: Ops, alertmanager: str) -> None:
    labels = {"alertname": "HighErrorRate", "instance": "web1:9100", "severity": "critical", "service": "nginx.service"}
    post_alert(alertmanager, **labels)
    wait_until("the incident from Alertmanager", lambda: len(incidents(ops)) == 1, timeout=60)
    [incident] = incidents(ops)
    assert {k: incident[k] for k in ("check", "kind", "target", "status", "severity")} == {
        "check": "HighErrorRate", "kind": "alertmanager", "target": "web1:9100", "status": "open",
        "severity": "critical"}
    assert incident["message"] == "HighErrorRate: 5xx above 5 % (Alertmanager)"
    assert incident["details"]["service"] == "nginx.service" and incident["details"]["fingerprint"]
    wait_until("the decision", lambda: len(events(ops, "decision.made")) == 1)
    [decision] = events(ops, "decision.made")
    assert decision["incident_id"] == incident["id"]
    assert (decision["data"]["rule"], decision["data"]["action"], decision["data"]["verdict"]) == (
        "alert-notice", "notify", "act")
    assert decision["data"]["args"] == {"message": "alert HighErrorRate on web1:9100"}

    post_alert(alertmanager, resolved=True, **labels)
    wait_until("the incident resolved", lambda: incidents(ops)[0]["status"] == "resolved", timeout=60)
    assert len(incidents(ops)) == 1 and len(events(ops, "decision.made")) == 1
    assert [e["incident_id"] for e in events(ops, "incident.resolved")] == [incident["id"]]


def alert(status: str = "firing", fingerprint: str = "fp-1", **labels: str) -> dict[str, Any]:
    return {"status": status, "labels": {"alertname": "DiskWillFill", "instance": "db1:9100", **labels},
            "annotations": {}, "startsAt": stamp(now()), "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "", "fingerprint": fingerprint}


def notification(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {"version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0, "status": "firing", "receiver": "agent",
            "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am",
            "alerts": list(alerts)}


def send(ops: Ops, body: Any, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(webhook_url(ops), content=content, headers={"Content-Type": "application/json", **headers},
                      timeout=10)


def test_a_repeated_alert_is_one_incident_and_one_decision_and_only_its_fingerprint_resolves_it(
        ops: Ops, daemon: Any) -> None:
    token = create_token(ops, "am", "operate")
    for _ in range(3):
        r = send(ops, notification(alert(severity="warning")), token)
        assert r.status_code == 200, r.text
    assert [(i["check"], i["target"], i["severity"]) for i in incidents(ops)] == [
        ("DiskWillFill", "db1:9100", "warning")]
    assert len(events(ops, "decision.made")) == 1 and len(events(ops, "incident.opened")) == 1
    worse = send(ops, notification(alert(severity="page")), token).json()
    assert worse == {"alerts": 1, "opened": 0, "resolved": 0, "ignored": 0}
    assert incidents(ops)[0]["severity"] == "critical" and len(events(ops, "decision.made")) == 2
    other = send(ops, notification(alert("resolved", fingerprint="fp-other")), token).json()
    assert other == {"alerts": 1, "opened": 0, "resolved": 0, "ignored": 1}
    assert incidents(ops)[0]["status"] == "open"
    assert send(ops, notification(alert("resolved")), token).json()["resolved"] == 1
    assert incidents(ops)[0]["status"] == "resolved"
    # without instance or job, the target is the fingerprint: never the whole-check target ""
    fp = uuid.uuid4().hex[:16]
    r = send(ops, notification({**alert(fingerprint=fp), "labels": {"alertname": "NoTarget"}}), token)
    assert r.status_code == 200 and incidents(ops)[0]["target"] == fp


def test_alertmanager_incidents_stay_open_across_a_daemon_restart(ops: Ops, daemon: Any) -> None:
    token = create_token(ops, "am", "operate")
    assert send(ops, notification(alert()), token).status_code == 200
    assert stop_process(daemon)[0] == 0
    proc = start_daemon(ops)   # reconcile resolves incidents of checks no longer configured: not these
    try:
        wait_until("a beat after the restart", lambda: len(events(ops, "pulse.beat")) >= 2)
        assert [(i["check"], i["status"]) for i in incidents(ops)] == [("DiskWillFill", "open")]
        assert send(ops, notification(alert("resolved")), token).json()["resolved"] == 1
    finally:
        assert stop_process(proc)[0] == 0


def test_unauthenticated_or_malformed_bodies_get_4xx_record_no_incident_and_a_refusal_event(
        ops: Ops, daemon: Any) -> None:
    read = create_token(ops, "prometheus", "read")
    operate = create_token(ops, "am", "operate")
    good = notification(alert())
    cases: list[tuple[Any, str | None, int, str]] = [
        (good, None, 401, "no bearer token"),
        (good, "fzt_" + "x" * 43, 401, "unknown or revoked token"),
        (good, read, 403, "'operate' scope"),
        (b"{not json", operate, 400, "not JSON"),
        ({**good, "version": "3"}, operate, 422, "version '3' is not supported"),
        ({"version": "4"}, operate, 422, "alerts: Field required"),
        (notification({**alert(), "status": "burning"}), operate, 422, "alerts.0.status"),
        (notification({**alert(), "fingerprint": ""}), operate, 422, "alerts.0.fingerprint"),
        ([good], operate, 422, "not an Alertmanager notification"),
        (b"x" * (1024 * 1024 + 1), operate, 413, "1 MiB"),
    ]
    for body, token, status, message in cases:
        r = send(ops, body, token)
        assert r.status_code == status and message in r.json()["error"], (status, r.status_code, r.text)
    assert httpx.get(webhook_url(ops), headers={"Authorization": f"Bearer {operate}"}, timeout=10).status_code == 405
    assert incidents(ops) == [] and events(ops, "incident.*") == []
    refused = [e["data"] for e in events(ops, "webhook.refused")]
    assert [e["status"] for e in refused] == [status for _, _, status, _ in cases] + [405]
    assert refused[2]["token"] == "prometheus" and all(e["source"] == "alertmanager" for e in refused)
    log = ops.cli("events", "list", "--type", "webhook.refused", "--limit", "100", "--json").stdout
    assert read not in log and operate not in log
    assert send(ops, good, operate).status_code == 200 and len(incidents(ops)) == 1

