"""`--server NAME`: commands carried out on another agent through its /mcp with the stored token,
printing what the same command prints on that server; scopes apply with the agent's own words."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from _mcp import create_token, destructive_junk, events, listen, start_daemon, stop_process
from conftest import Ops, base_env, cli, free_port

Fleet = dict[str, tuple[Ops, subprocess.Popen[str]]]


def make_ops(root: Path, name: str) -> Ops:
    assert cli("init", str(root / name)).returncode == 0
    ops = Ops(root / name)
    ops.set_config("http", "listen", f"127.0.0.1:{free_port()}")
    ops.set_config("pulse", "interval", "1h")   # one beat at start: nothing changes between two commands
    for key, value in {"enabled": True, "listen": f"127.0.0.1:{free_port()}", "domain": "apps.test"}.items():
        ops.set_config("apps", key, value)      # each agent's apps plane, for `deploy --to`
    return ops


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def laptop(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI on the laptop: no config.toml of its own, HOME holding ~/.fazt/config.json."""
    empty = home / "elsewhere"
    empty.mkdir(exist_ok=True)
    return cli(*args, env=base_env(HOME=str(home), XDG_DATA_HOME=str(home / "xdg")), cwd=empty)


def add(home: Path, name: str, ops: Ops, token: str) -> None:
    result = laptop(home, "servers", "add", name, "--url", f"http://{listen(ops)}", "--token", token)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def fleet(tmp_path: Path, home: Path) -> Iterator[Fleet]:
    """Two agents, a and b (b at medium autonomy with a cleanup root the policy asks about)."""
    running: Fleet = {}
    try:
        for name in ("a", "b"):
            ops = make_ops(tmp_path, name)
            if name == "b":
                destructive_junk(ops, tmp_path)
            running[name] = (ops, start_daemon(ops))
            add(home, name, ops, create_token(ops, f"laptop-{name}", "operate"))
        yield running
    finally:
        for _, proc in running.values():
            if proc.poll() is None:
                stop_process(proc)


def same(home: Path, ops: Ops, server: str, *args: str) -> str:
    """Run `args` on the server itself and from the laptop with --server; both print the same."""
    remote = laptop(home, *args, "--server", server)
    local = ops.cli(*args)
    assert remote.returncode == local.returncode == 0, (remote.stderr, local.stderr)
    assert remote.stdout == local.stdout, (args, remote.stdout, local.stdout)
    return remote.stdout


def test_reading_commands_print_what_they_print_on_the_server(home: Path, fleet: Fleet) -> None:
    ops_a, _ = fleet["a"]
    ops_b, _ = fleet["b"]
    assert ops_b.cli("actions", "run", "cleanup", "--arg", f"root={ops_b.dir.parent / 'junk'}",
                     "--arg", "older_than=7d").returncode == 0
    status_a = same(home, ops_a, "a", "status")
    status_b = same(home, ops_b, "b", "status")
    assert "autonomy   low" in status_a and "autonomy   medium" in status_b
    assert json.loads(laptop(home, "status", "--json", "--server", "b").stdout) == \
        json.loads(ops_b.cli("status", "--json").stdout)
    halts = same(home, ops_b, "b", "halts", "list")
    assert "pending" in halts and same(home, ops_a, "a", "halts", "list") == "no pending halts\n"
    same(home, ops_b, "b", "events", "list", "--type", "halt.*")
    remote = json.loads(laptop(home, "events", "list", "--type", "decision.*", "--json", "--server", "b").stdout)
    local = json.loads(ops_b.cli("events", "list", "--type", "decision.*", "--json").stdout)
    assert remote == [{k: v for k, v in e.items() if k != "hash"} for e in local] and len(remote) == 1
    same(home, ops_b, "b", "decisions", "list")
    import httpx

    alert = {"status": "firing", "labels": {"alertname": "DiskWillFill", "instance": "db1:9100"},
             "fingerprint": "fp-1"}
    opened = httpx.post(f"http://{listen(ops_b)}/webhooks/alertmanager", json={"version": "4", "alerts": [alert]},
                        headers={"Authorization": f"Bearer {create_token(ops_b, 'am', 'operate')}"}, timeout=10)
    assert opened.json()["opened"] == 1
    assert "DiskWi" in same(home, ops_b, "b", "incidents", "list", "--all")
    incident_id = json.loads(ops_b.cli("incidents", "list", "--json").stdout)[0]["id"]
    assert "decision.made" in same(home, ops_b, "b", "incidents", "show", str(incident_id))
    assert json.loads(laptop(home, "incidents", "show", str(incident_id), "--json", "--server", "b").stdout) == {
        **json.loads(ops_b.cli("incidents", "show", str(incident_id), "--json").stdout),
        "events": [{k: v for k, v in e.items() if k != "hash"}
                   for e in json.loads(ops_b.cli("incidents", "show", str(incident_id), "--json").stdout)["events"]]}
    halt_id = json.loads(ops_b.cli("halts", "list", "--json").stdout)[0]["id"]
    shown = laptop(home, "halts", "show", str(halt_id), "--server", "b")
    assert shown.returncode == 0 and f"halt {halt_id} (pending)" in shown.stdout
    assert f"fazt-agent approve {halt_id} --server b" in shown.stdout
    missing = laptop(home, "incidents", "show", "999", "--server", "a")
    assert missing.returncode == 1 and "no incident 999" in missing.stderr


def test_remote_approve_runs_the_plan_on_that_server_once(home: Path, fleet: Fleet, tmp_path: Path) -> None:
    ops_b, _ = fleet["b"]
    root = tmp_path / "junk"
    assert ops_b.cli("actions", "run", "cleanup", "--arg", f"root={root}", "--arg", "older_than=7d").returncode == 0
    [halt] = json.loads(ops_b.cli("halts", "list", "--json").stdout)
    assert len(list(root.iterdir())) == 5
    wrong = laptop(home, "approve", str(halt["id"]), "--server", "a")   # a has no such halt
    assert wrong.returncode == 1 and wrong.stderr == f"error: there is no halt #{halt['id']}\n"
    approved = laptop(home, "approve", str(halt["id"]), "--server", "b", "--note", "old logs")
    assert approved.returncode == 0, approved.stderr
    assert approved.stdout.startswith(f"halt {halt['id']}: approve; done: ")
    assert list(root.iterdir()) == []
    again = laptop(home, "approve", str(halt["id"]), "--server", "b")
    assert again.returncode == 1 and "already" in again.stderr
    started = events(ops_b, "action.started")
    assert len(started) == 1 and started[0]["data"]["action"] == "cleanup"
    answered = events(ops_b, "halt.answered")
    assert [(e["data"]["option"], e["data"]["by"], e["data"]["note"]) for e in answered] == [
        ("approve", "mcp:laptop-b", "old logs")]
    assert events(fleet["a"][0], "action.*") == []


def test_a_read_token_is_refused_for_approve_with_the_scope_named(home: Path, fleet: Fleet, tmp_path: Path) -> None:
    ops_b, _ = fleet["b"]
    add(home, "b-read", ops_b, create_token(ops_b, "laptop-read", "read"))
    assert ops_b.cli("actions", "run", "cleanup", "--arg", f"root={tmp_path / 'junk'}",
                     "--arg", "older_than=7d").returncode == 0
    [halt] = json.loads(ops_b.cli("halts", "list", "--json").stdout)
    refused = laptop(home, "approve", str(halt["id"]), "--server", "b-read")
    assert refused.returncode == 1
    assert "fazt_halt_answer needs the 'operate' scope; the token 'laptop-read' has 'read'" in refused.stderr
    assert json.loads(ops_b.cli("halts", "list", "--json").stdout)[0]["status"] == "pending"
    assert laptop(home, "halts", "list", "--server", "b-read").returncode == 0   # reading is allowed


def test_an_unknown_or_stopped_server_is_a_clear_error(home: Path, fleet: Fleet) -> None:
    unknown = laptop(home, "status", "--server", "nope")
    assert unknown.returncode == 2 and "no server named 'nope'" in unknown.stderr
    ops_a, proc_a = fleet["a"]
    assert stop_process(proc_a)[0] == 0
    stopped = laptop(home, "status", "--server", "a")
    assert stopped.returncode == 1
    assert f"server 'a' is unreachable at http://{listen(ops_a)}" in stopped.stderr
    assert "Traceback" not in stopped.stderr


def test_only_server_loads_the_mcp_client(home: Path, fleet: Fleet) -> None:
    """The CLI's start-up stays light: the MCP client is imported for --server only."""
    import sys

    ops_a, _ = fleet["a"]
    code = ("import sys, runpy; sys.argv = ['fazt-agent', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('fazt_agent', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('MCP' if any(m == 'mcp' or m.startswith(('mcp.', 'httpx2')) for m in sys.modules) else 'none')")

    def modules(*args: str) -> list[str]:
        result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                                env=base_env(HOME=str(home)), timeout=60)
        return result.stdout.strip().splitlines()

    assert modules("--config", str(ops_a.config), "incidents", "list") == ["no open incidents", "none"]
    assert modules("incidents", "list", "--server", "a") == ["no open incidents", "MCP"]


def served(ops: Ops, app: str, path: str = "/") -> Any:
    """What `ops`'s apps plane serves for APP (as tests/test_apps_deploy.py fetches it: by Host)."""
    import httpx

    return httpx.get(f"http://{ops.read_config()['apps']['listen']}{path}", headers={"host": f"{app}.apps.test"},
                     timeout=10)


def site(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


def test_deploy_to_a_server_deploys_there_only_and_apps_list_matches(home: Path, fleet: Fleet,
                                                                     tmp_path: Path) -> None:
    import re

    ops_a, _ = fleet["a"]
    ops_b, _ = fleet["b"]
    src = site(tmp_path / "blog", {"index.html": "<h1>from the laptop</h1>", "css/site.css": "body{}",
                                   "fazt.toml": "spa = true\n"})
    deployed = laptop(home, "deploy", str(src), "--name", "blog", "--to", "b")
    assert deployed.returncode == 0, deployed.stderr
    assert re.fullmatch(r"blog: release 1 live, 3 files, \d+ B \(3 new\) in \d+\.\d\d s at http://blog\.apps\.test/\n",
                        deployed.stdout), deployed.stdout
    assert served(ops_b, "blog").text == "<h1>from the laptop</h1>"
    assert served(ops_b, "blog", "/a/client/route").text == "<h1>from the laptop</h1>"   # its fazt.toml applies
    assert served(ops_a, "blog").status_code == 404
    assert "blog" in same(home, ops_b, "b", "apps", "list")
    assert same(home, ops_a, "a", "apps", "list") == "no apps yet: `fazt-agent deploy DIR --name APP`\n"
    assert json.loads(laptop(home, "apps", "list", "--json", "--server", "b").stdout) == \
        json.loads(ops_b.cli("apps", "list", "--json").stdout)
    [event] = events(ops_b, "app.deployed")
    assert event["data"]["source"] == "mcp:laptop-b" and events(ops_a, "app.*") == []

    (src / "index.html").write_text("v2")
    again = laptop(home, "deploy", str(src), "--name", "blog", "--server", "b", "--json")
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert (result["release"], result["previous"], result["new_blobs"], result["healthy"]) == (2, 1, 1, True)
    assert served(ops_b, "blog").text == "v2"


def test_deploy_to_a_server_refuses_what_a_local_deploy_refuses_before_sending(home: Path, fleet: Fleet,
                                                                               tmp_path: Path) -> None:
    ops_b, _ = fleet["b"]
    linked = site(tmp_path / "linked", {"index.html": "hi"})
    (linked / "secret").symlink_to("/etc/hostname")
    refused = laptop(home, "deploy", str(linked), "--name", "blog", "--to", "b")
    assert (refused.returncode, refused.stderr) == (1, "error: refused 'secret': symlinks are not allowed\n")
    archive = tmp_path / "escape.zip"
    import zipfile

    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("../outside.html", "x")
    escaped = laptop(home, "deploy", str(archive), "--name", "blog", "--to", "b")
    assert escaped.returncode == 1 and "refused path '../outside.html': '..' is not allowed" in escaped.stderr
    big = site(tmp_path / "big", {"index.html": "hi"})
    with open(big / "huge.txt", "wb") as f:
        f.truncate(100 * 1024 * 1024 + 1)
    oversized = laptop(home, "deploy", str(big), "--name", "blog", "--to", "b")
    assert oversized.returncode == 1 and "upload too large: 100.0 MiB (limit 100.0 MiB" in oversized.stderr
    bad_name = laptop(home, "deploy", str(big), "--name", "Blog!", "--to", "b")
    assert bad_name.returncode == 1 and "invalid app name 'Blog!'" in bad_name.stderr
    assert "Traceback" not in refused.stderr + escaped.stderr + oversized.stderr + bad_name.stderr
    assert ops_b.cli("apps", "list").stdout.startswith("no apps yet") and events(ops_b, "app.*") == []
    assert served(ops_b, "blog").status_code == 404


def test_deploy_to_a_server_carries_binary_files(home: Path, fleet: Fleet, tmp_path: Path) -> None:
    """An image is not text: it travels base64-encoded and is served byte for byte."""
    ops_b, _ = fleet["b"]
    logo = b"\x89PNG\r\n\x1a\n\xff\x00" + bytes(range(256))
    binary = site(tmp_path / "binary", {"index.html": "hi", "img/logo.png": logo})
    r = laptop(home, "deploy", str(binary), "--name", "blog", "--to", "b")
    assert r.returncode == 0, r.stderr
    assert served(ops_b, "blog", "/img/logo.png").content == logo


def test_a_read_token_is_refused_for_deploy_with_the_scope_named(home: Path, fleet: Fleet, tmp_path: Path) -> None:
    ops_b, _ = fleet["b"]
    add(home, "b-read", ops_b, create_token(ops_b, "laptop-read", "read"))
    refused = laptop(home, "deploy", str(site(tmp_path / "s", {"index.html": "hi"})), "--name", "blog",
                     "--to", "b-read")
    assert refused.returncode == 1
    assert "fazt_deploy needs the 'operate' scope; the token 'laptop-read' has 'read'" in refused.stderr
    assert served(ops_b, "blog").status_code == 404 and events(ops_b, "app.deployed") == []
    assert laptop(home, "apps", "list", "--server", "b-read").stdout.startswith("no apps yet")   # reading is allowed
