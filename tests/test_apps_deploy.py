"""Apps, slice 1 (issue 13): releases, deploys, rollback and static hosting, through the real CLI,
a real daemon subprocess and a real HTTP client on loopback."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from _helpers import events, run_daemon, stop_daemon
from conftest import Ops, base_env, free_port


class Plane:
    """A running daemon with the apps plane on its own port."""

    def __init__(self, ops: Ops, port: int, proc: subprocess.Popen[str]):
        self.ops, self.port, self.proc = ops, port, proc
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)

    def get(self, app: str, path: str = "/", **headers: str) -> httpx.Response:
        return self.client.get(path, headers={"host": f"{app}.apps.test", **headers})

    def wait_listening(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.client.get("/", headers={"host": "none.apps.test"})
                return
            except httpx.TransportError:
                assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
                time.sleep(0.1)
        raise AssertionError(f"the apps plane did not listen on {self.port} within {timeout}s")


def configure(ops: Ops, **apps: Any) -> int:
    port = free_port()
    for key, value in {"listen": f"127.0.0.1:{port}", "domain": "apps.test", **apps}.items():
        ops.set_config("apps", key, value)
    ops.write_pulse("none", "")
    return port


@pytest.fixture
def plane(ops: Ops) -> Iterator[Plane]:
    port = configure(ops, enabled=True)
    p = Plane(ops, port, run_daemon(ops, stdout=subprocess.PIPE))
    try:
        p.wait_listening()
        yield p
    finally:
        p.client.close()
        # a test may have restarted the daemon: stop the one running now
        stop_daemon(p.proc, 10, check=False, must_stop=False)


def site(root: Path, files: dict[str, str | bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


def deploy(ops: Ops, source: Path, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return ops.cli("deploy", str(source), "--name", name, "--json", *extra)


def test_static_app_served_by_host_with_types_etag_304_and_spa(plane: Plane, tmp_path: Path) -> None:
    src = site(tmp_path / "blog", {"index.html": "<h1>home</h1>", "css/site.css": "body{}", "docs/index.html": "docs",
                                   "app.js": "let x = 1;", "fazt.toml": "spa = true\n"})
    r = deploy(plane.ops, src, "blog")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["release"] == 1 and out["files"] == 5 and out["healthy"] is True

    home = plane.get("blog")
    assert home.status_code == 200 and home.text == "<h1>home</h1>"
    assert home.headers["content-type"] == "text/html; charset=utf-8"
    assert plane.get("blog", "/css/site.css").headers["content-type"] == "text/css; charset=utf-8"
    assert plane.get("blog", "/app.js").headers["content-type"].startswith("application/javascript")
    assert plane.get("blog", "/docs/").text == "docs" and plane.get("blog", "/docs").text == "docs"
    etag = home.headers["etag"]
    again = plane.get("blog", "/", **{"if-none-match": etag})
    assert again.status_code == 304 and again.content == b""
    assert plane.get("blog", "/some/client/route").text == "<h1>home</h1>"   # spa fallback
    assert plane.get("other").status_code == 404                            # unknown app
    assert plane.client.post("/", headers={"host": "blog.apps.test"}).status_code == 405

    src2 = site(tmp_path / "plain", {"index.html": "plain"})
    assert deploy(plane.ops, src2, "plain").returncode == 0
    assert plane.get("plain", "/nope").status_code == 404                   # no spa: a real 404


def test_first_deploy_starts_the_apps_plane_of_a_daemon_without_apps(ops: Ops, tmp_path: Path) -> None:
    port = configure(ops)   # [apps] not enabled, no apps: no listener
    proc = run_daemon(ops, stdout=subprocess.PIPE)
    p = Plane(ops, port, proc)
    try:
        time.sleep(2.5)
        with pytest.raises(httpx.ConnectError):
            p.get("blog")
        assert not (ops.data_dir / "apps").exists()
        assert deploy(ops, site(tmp_path / "s", {"index.html": "hi"}), "blog").returncode == 0
        p.wait_listening(10)
        assert p.get("blog").text == "hi"
    finally:
        stop_daemon(proc, 10, check=False)
        p.client.close()


def test_releases_rollback_by_cli_and_keep_last_n(plane: Plane, tmp_path: Path) -> None:
    plane.ops.set_config("apps", "keep_releases", 3)
    for n in range(1, 6):
        r = deploy(plane.ops, site(tmp_path / f"v{n}", {"index.html": f"version {n}", "shared.txt": "same"}), "blog")
        assert r.returncode == 0, r.stderr
    assert plane.get("blog").text == "version 5"
    rel = json.loads(plane.ops.cli("apps", "releases", "blog", "--json").stdout)
    assert [x["number"] for x in rel] == [5, 4, 3] and [x["current"] for x in rel] == [True, False, False]
    blobs = [p for p in (plane.ops.data_dir / "apps" / "blobs").rglob("*") if p.is_file()]
    assert len(blobs) == 4   # versions 3..5 and the shared file, stored once

    r = plane.ops.cli("apps", "rollback", "blog", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"app": "blog", "from_release": 5, "to_release": 4}
    assert plane.get("blog").text == "version 4"
    assert json.loads(plane.ops.cli("apps", "rollback", "blog", "--to", "3", "--json").stdout)["to_release"] == 3
    assert plane.get("blog").text == "version 3"
    bad = plane.ops.cli("apps", "rollback", "blog", "--to", "1")
    assert bad.returncode == 1 and "no release 1" in bad.stderr
    assert json.loads(plane.ops.cli("apps", "info", "blog", "--json").stdout)["release"] == 3
    kinds = [(e["data"]["from_release"], e["data"]["to_release"], e["data"]["automatic"])
             for e in events(plane.ops, "app.rolled_back")]
    assert kinds == [(5, 4, False), (4, 3, False)]
    assert [e["data"]["release"] for e in events(plane.ops, "app.deployed")] == [1, 2, 3, 4, 5]


def test_a_release_failing_its_health_check_rolls_back_and_tells_the_owner(plane: Plane, tmp_path: Path) -> None:
    assert deploy(plane.ops, site(tmp_path / "good", {"index.html": "good", "health.txt": "ok",
                                                      "fazt.toml": 'health = "/health.txt"\n'}), "blog").returncode == 0
    r = deploy(plane.ops, site(tmp_path / "bad", {"index.html": "bad", "fazt.toml": 'health = "/health.txt"\n'}), "blog")
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert out["rolled_back"] is True and out["serving"] == 1 and "GET /health.txt answered 404" in out["problem"]
    assert plane.get("blog").text == "good"
    rel = json.loads(plane.ops.cli("apps", "releases", "blog", "--json").stdout)
    assert [(x["number"], x["status"], x["current"]) for x in rel] == [(2, "failed", False), (1, "live", True)]
    [event] = events(plane.ops, "app.rolled_back")
    assert event["data"]["automatic"] is True and event["data"]["from_release"] == 2
    with sqlite3.connect(plane.ops.data_dir / "fazt-agent.db") as db:
        titles = [row[0] for row in db.execute("SELECT title FROM notifications")]
    assert "app blog: release 2 rolled back" in titles
    # a later manual rollback skips the failed release
    assert deploy(plane.ops, site(tmp_path / "v3", {"index.html": "three"}), "blog").returncode == 0
    assert json.loads(plane.ops.cli("apps", "rollback", "blog", "--json").stdout)["to_release"] == 1


def _zip(path: Path, entries: list[tuple[str, bytes]], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries:
            z.writestr(name, data)
        if symlink is not None:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)
            z.writestr(info, "/etc/passwd")
    return path


def test_zip_deploys_and_refuses_escapes_symlinks_and_oversized_uploads(ops: Ops, tmp_path: Path) -> None:
    configure(ops, max_upload="1KiB")
    ok = _zip(tmp_path / "ok.zip", [("index.html", b"zipped"), ("./sub/a.txt", b"a")])
    r = deploy(ops, ok, "zipped")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["files"] == 2
    cases = {
        "dots": (_zip(tmp_path / "dots.zip", [("index.html", b"x"), ("../evil.txt", b"x")]), "'..' is not allowed"),
        "abs": (_zip(tmp_path / "abs.zip", [("/etc/evil", b"x")]), "absolute paths are not allowed"),
        "link": (_zip(tmp_path / "link.zip", [("index.html", b"x")], symlink="passwd"), "symlinks are not allowed"),
        "big": (_zip(tmp_path / "big.zip", [("index.html", b"x" * 2000)]), "upload too large: 2.0 KiB"),
    }
    for name, (path, message) in cases.items():
        r = deploy(ops, path, name)
        assert r.returncode == 1 and message in r.stderr, (name, r.stderr)
    linked = site(tmp_path / "linked", {"index.html": "x"})
    os.symlink("/etc/passwd", linked / "passwd")
    r = deploy(ops, linked, "linked")
    assert r.returncode == 1 and "symlinks are not allowed" in r.stderr
    apps = json.loads(ops.cli("apps", "list", "--json").stdout)
    assert [a["name"] for a in apps] == ["zipped"]     # nothing of the refused ones stored
    assert len(events(ops, "app.deploy_refused")) == 5
    bad_name = ops.cli("deploy", str(ok), "--name", "Bad_Name")
    assert bad_name.returncode == 1 and "invalid app name" in bad_name.stderr


def test_deploy_during_traffic_never_serves_a_mix(plane: Plane, tmp_path: Path) -> None:
    big = 300 * 1024   # larger than the blob cache's per-file limit: streamed from disk
    versions = [site(tmp_path / f"v{n}", {"index.html": f"v{n}", "big.bin": bytes([48 + n]) * big}) for n in range(3)]
    assert deploy(plane.ops, versions[0], "blog").returncode == 0
    valid = {bytes([48 + n]) * big for n in range(3)}
    stop = threading.Event()
    seen: list[Any] = []

    def hammer() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{plane.port}", timeout=10) as c:
            while not stop.is_set():
                r = c.get("/big.bin", headers={"host": "blog.apps.test"})
                seen.append((r.status_code, r.content in valid))

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(hammer) for _ in range(4)]
        for n in (1, 2, 0, 1):
            assert deploy(plane.ops, versions[n], "blog").returncode == 0
        stop.set()
        for f in futures:
            f.result()
    assert len(seen) > 20
    assert all(s == (200, True) for s in seen), [s for s in seen if s != (200, True)][:5]
    assert plane.get("blog", "/big.bin").content == bytes([49]) * big


def test_sigkill_during_a_deploy_leaves_the_previous_release_serving(plane: Plane, tmp_path: Path) -> None:
    assert deploy(plane.ops, site(tmp_path / "v1", {"index.html": "v1"}), "blog").returncode == 0
    blobs = plane.ops.data_dir / "apps" / "blobs"
    before = sum(1 for p in blobs.rglob("*") if p.is_file())
    big = site(tmp_path / "v2", {"index.html": "v2", **{f"f/{i}.txt": f"file {i} " * 200 for i in range(3000)}})
    proc = subprocess.Popen([sys.executable, "-m", "fazt_agent", "--config", str(plane.ops.config), "deploy",
                             str(big), "--name", "blog"], env=base_env(), cwd=plane.ops.dir)
    deadline = time.monotonic() + 30
    while sum(1 for p in blobs.rglob("*") if p.is_file()) < before + 10:   # it is writing release 2's files
        assert proc.poll() is None and time.monotonic() < deadline, "the deploy ended before it could be killed"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert plane.get("blog").text == "v1"
    assert plane.get("blog", "/f/1.txt").status_code == 404
    info = json.loads(plane.ops.cli("apps", "info", "blog", "--json").stdout)
    assert info["release"] == 1 and info["releases"] == 1
    # the next deploy takes the lock the killed one held, and removes its orphan blobs
    assert deploy(plane.ops, site(tmp_path / "v3", {"index.html": "v3"}), "blog").returncode == 0
    assert plane.get("blog").text == "v3"
    assert sum(1 for p in blobs.rglob("*") if p.is_file()) == 2


def test_custom_domains_route_and_a_taken_domain_is_refused(plane: Plane, tmp_path: Path) -> None:
    assert deploy(plane.ops, site(tmp_path / "a", {"index.html": "A", "fazt.toml": 'domains = ["www.example.org"]\n'}),
                  "alpha").returncode == 0
    r = plane.client.get("/", headers={"host": "WWW.Example.org:8080"})
    assert r.status_code == 200 and r.text == "A"
    taken = deploy(plane.ops, site(tmp_path / "b", {"index.html": "B", "fazt.toml": 'domains = ["www.example.org"]\n'}),
                   "beta")
    assert taken.returncode == 1 and "domain 'www.example.org' already belongs to app 'alpha'" in taken.stderr
    assert plane.client.get("/", headers={"host": "www.example.org"}).text == "A"
    assert plane.get("beta").status_code == 404
    bad = deploy(plane.ops, site(tmp_path / "c", {"index.html": "C", "fazt.toml": "spa = 'yes'\n"}), "gamma")
    assert bad.returncode == 1 and "fazt.toml:spa: expected true or false" in bad.stderr


def test_env_set_unset_list_never_records_values(ops: Ops, tmp_path: Path) -> None:
    configure(ops)
    assert deploy(ops, site(tmp_path / "s", {"index.html": "x"}), "blog").returncode == 0
    assert ops.cli("apps", "env", "set", "blog", "API_KEY", "s3cret-value").returncode == 0
    assert ops.cli("apps", "env", "set", "blog", "MODE", "prod").returncode == 0
    assert json.loads(ops.cli("apps", "env", "list", "blog", "--json").stdout) == {"API_KEY": "***", "MODE": "***"}
    assert json.loads(ops.cli("apps", "env", "list", "blog", "--values", "--json").stdout)["API_KEY"] == "s3cret-value"
    assert json.loads(ops.cli("apps", "env", "unset", "blog", "MODE", "--json").stdout)["unset"] is True
    assert ops.cli("apps", "env", "unset", "blog", "MODE").returncode == 1
    assert json.loads(ops.cli("apps", "info", "blog", "--json").stdout)["env"] == ["API_KEY"]
    changes = events(ops, "app.env_changed")
    assert [(e["data"]["key"], e["data"]["change"]) for e in changes] == [("API_KEY", "set"), ("MODE", "set"),
                                                                          ("MODE", "unset")]
    assert "s3cret-value" not in ops.cli("events", "list", "--json").stdout
    assert ops.cli("apps", "env", "set", "nope", "K", "v").returncode == 1
    assert ops.cli("apps", "env", "set", "blog", "1BAD", "v").returncode == 1


def test_delete_asks_and_removes_the_app_and_its_files(plane: Plane, tmp_path: Path) -> None:
    assert deploy(plane.ops, site(tmp_path / "s", {"index.html": "bye"}), "blog").returncode == 0
    no = plane.ops.cli("apps", "delete", "blog", input="n\n")
    assert no.returncode == 1 and plane.get("blog").text == "bye"
    r = plane.ops.cli("apps", "delete", "blog", "--yes", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"app": "blog", "releases": 1, "blobs_removed": 1}
    assert plane.get("blog").status_code == 404
    assert json.loads(plane.ops.cli("apps", "list", "--json").stdout) == []
    assert [e["data"]["app"] for e in events(plane.ops, "app.deleted")] == ["blog"]


def test_a_deeply_nested_fazt_toml_is_refused_with_a_message_not_a_traceback(ops: Ops, tmp_path: Path) -> None:
    source = site(tmp_path / "deep", {"index.html": "x"})
    (source / "fazt.toml").write_text("spa = " + "[" * 5000 + "]" * 5000 + "\n")
    r = deploy(ops, source, "deep")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "fazt.toml: too deeply nested" in r.stderr and "Traceback" not in r.stderr
