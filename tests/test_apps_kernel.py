"""Apps, slice 3 (issue 13): kernel actions deploy / app.rollback / app.delete through the policy
gate, the `app` check probing through the apps plane, and the shipped rule that rolls back an app
failing soon after its deploy. Real CLI, real daemon, real HTTP."""

from __future__ import annotations

import json
import subprocess
import time
from functools import partial
from pathlib import Path

import _helpers
from _helpers import events, run_daemon, stop_daemon
from conftest import Ops
from test_apps_deploy import Plane, configure, deploy, plane, site  # noqa: F401 (plane is a fixture)

V1 = {"index.html": "v1", "health.txt": "ok", "fazt.toml": 'health = "/health.txt"\n'}
V2 = {"index.html": "v2", "fazt.toml": 'health = "/api/health"\n',
      "api/main.js": "request.path === '/api/break' ? fazt.app.kv.set('broken', true) :"
                     " fazt.app.kv.get('broken') ? respond(500, {ok: false}) : respond(200, {ok: true})"}


def app_check(ops: Ops, port: int) -> None:
    ops.write_pulse("apps", f'[[checks]]\nname = "apps"\nkind = "app"\nurl = "http://127.0.0.1:{port}"\n'
                            'domain = "apps.test"\n')


wait_until = partial(_helpers.wait_until, interval=0.3)


def test_the_app_check_probes_each_app_through_the_apps_plane(plane: Plane, tmp_path: Path) -> None:
    assert deploy(plane.ops, site(tmp_path / "a", V1), "alpha").returncode == 0
    assert deploy(plane.ops, site(tmp_path / "b", {"index.html": "b"}), "beta").returncode == 0
    app_check(plane.ops, plane.port)
    r = plane.ops.cli("beat", "--json")
    assert r.returncode == 0, r.stderr
    results = {x["target"]: x for x in json.loads(r.stdout)["results"] if x["kind"] == "app"}
    assert set(results) == {"alpha", "beta"}
    assert results["alpha"]["status"] == "ok" and results["alpha"]["details"]["path"] == "/health.txt"
    assert results["alpha"]["details"]["release"] == 1 and results["alpha"]["details"]["since_deploy_s"] < 60
    # a directory listing is only for loopback clients at a host that is no app
    assert plane.get("alpha", "/.well-known/fazt-apps").status_code == 404
    # nor behind a reverse proxy (a loopback client, but a domain Host)
    assert plane.client.get("/.well-known/fazt-apps", headers={"host": "x.example.org"}).status_code == 404
    listing = plane.client.get("/.well-known/fazt-apps", headers={"host": f"127.0.0.1:{plane.port}"}).json()
    assert [(a["name"], a["health"]) for a in listing] == [("alpha", "/health.txt"), ("beta", None)]


def test_an_app_failing_soon_after_a_deploy_is_rolled_back_at_medium(plane: Plane, tmp_path: Path) -> None:
    ops = plane.ops
    assert deploy(ops, site(tmp_path / "v1", V1), "shop").returncode == 0
    assert deploy(ops, site(tmp_path / "v2", V2), "shop").returncode == 0
    assert plane.get("shop", "/api/health").status_code == 200
    # the daemon re-reads pulse/ only at start: restart it with the check, at medium autonomy
    app_check(ops, plane.port)
    ops.set_config("pulse", "interval", "1s")
    ops.set_config("agent", "autonomy", "medium")
    stop_daemon(plane.proc, 10, check=False)
    plane.proc = run_daemon(ops, stdout=subprocess.PIPE)
    plane.wait_listening()
    time.sleep(2)
    assert plane.get("shop", "/api/break").status_code == 200     # v2 starts failing
    assert plane.get("shop", "/api/health").status_code == 500
    wait_until("the rollback", lambda: plane.get("shop").text == "v1")
    [done] = wait_until("action.succeeded", lambda: events(ops, "action.succeeded"))
    assert done["data"]["action"] == "app.rollback"
    [rolled] = events(ops, "app.rolled_back")
    assert (rolled["data"]["from_release"], rolled["data"]["to_release"]) == (2, 1)
    assert json.loads(ops.cli("apps", "info", "shop", "--json").stdout)["release"] == 1
    wait_until("the incident resolved", lambda: events(ops, "incident.resolved"))


def test_low_autonomy_only_notifies_and_an_old_release_is_not_rolled_back(ops: Ops, tmp_path: Path) -> None:
    configure(ops)
    assert deploy(ops, site(tmp_path / "v1", V1), "shop").returncode == 0
    assert deploy(ops, site(tmp_path / "v2", V2), "shop").returncode == 0
    # the rule's plan: a release deployed long ago (within = 0s here) is reported, not rolled back
    r = ops.cli("actions", "run", "app.rollback", "--arg", "app=shop", "--arg", "within=0s", "--json")
    out = json.loads(r.stdout)
    assert out["verdict"] == "notify" and "not rolled back" in out["plan"]["summary"], out
    ops.set_config("agent", "autonomy", "low")
    r = ops.cli("actions", "run", "app.rollback", "--arg", "app=shop", "--json")
    assert json.loads(r.stdout)["verdict"] == "notify"
    assert json.loads(ops.cli("apps", "info", "shop", "--json").stdout)["release"] == 2


def test_kernel_deploy_and_rollback_act_and_app_delete_always_asks(ops: Ops, tmp_path: Path) -> None:
    configure(ops)
    ops.set_config("agent", "autonomy", "high")
    src = site(tmp_path / "v1", V1)
    r = ops.cli("actions", "run", "deploy", "--arg", "app=kapp", "--arg", f"source={src}", "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["verdict"] == "act" and out["outcome"]["ok"] is True, r.stdout + r.stderr
    assert out["plan"]["risk"] == "safe" and out["plan"]["reversible"] is True
    assert deploy(ops, site(tmp_path / "v2", {"index.html": "v2"}), "kapp").returncode == 0
    r = ops.cli("actions", "run", "app.rollback", "--arg", "app=kapp", "--json")
    assert json.loads(r.stdout)["outcome"]["ok"] is True
    assert json.loads(ops.cli("apps", "info", "kapp", "--json").stdout)["release"] == 1
    r = ops.cli("actions", "run", "app.delete", "--arg", "app=kapp", "--json")
    out = json.loads(r.stdout)
    assert out["verdict"] == "ask" and out["plan"]["risk"] == "destructive" and out["plan"]["deletes"] is True
    assert json.loads(ops.cli("apps", "info", "kapp", "--json").stdout)["release"] == 1   # still there
    halt = out["halt_id"]
    assert ops.cli("approve", str(halt)).returncode == 0, "approve"
    assert json.loads(ops.cli("apps", "list", "--json").stdout) == []
