"""The dashboard, against a real daemon with real beats.

A daemon beats every second over two `dir_size` checks: `junk` (a cleanup root over its warning
size, at medium autonomy: its first beat opens a halt, since the cleanup deletes files) and `grow`
(warning at 10 KB, critical at 40 KB, not a cleanup root: the agent only tells). Debian's chromium
(Playwright, nothing downloaded) plays the owner on a laptop and on a phone, with axe-core from
tests/js checking each page; httpx plays everyone else. Where history is needed (trends over 7
days, a disk filling), the test stores it before the daemon starts, through the agent's own store,
dated back from the real now.
"""

from __future__ import annotations

import html
import json
import re
import sqlite3
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import httpx

from _helpers import CHROMIUM, base, browser_dirs, csrf_of, fits, halt_list, web_daemon
from _mcp import create_token, events, fill, stop_process, wait_until
from conftest import Ops, free_port

AXE = Path(__file__).parent / "js" / "node_modules" / "axe-core" / "axe.min.js"
CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'; script-src 'self'; connect-src 'self'")
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


# -- a daemon with a halt, a check about to go critical, and history -----------------------------

@dataclass
class Scene:
    junk: Path
    files: list[Path]
    grow: Path


def scene(ops: Ops, tmp_path: Path, interval: str = "1s", extra_checks: str = "") -> Scene:
    """`junk` (a cleanup root holding 20 KB of old files, warning at 10 KB: a halt) and `grow`
    (12 KB, warning at 10 KB, critical at 40 KB), beating every `interval`, at medium autonomy."""
    junk, grow = tmp_path / "junk", tmp_path / "grow"
    junk.mkdir()
    grow.mkdir()
    files = fill(junk, 5)
    (grow / "base.bin").write_bytes(b"x" * 12_000)
    (ops.dir / "policies" / "local.toml").write_text(f"[constraints]\ncleanup_roots = {json.dumps([str(junk)])}\n")
    (ops.dir / "kernel" / "actions.toml").write_text('[cleanup]\ndestructive_above = "1KB"\n')
    ops.write_pulse("dash", f'[[checks]]\nname = "junk"\nkind = "dir_size"\npath = "{junk}"\nwarning = "10KB"\n\n'
                            f'[[checks]]\nname = "grow"\nkind = "dir_size"\npath = "{grow}"\nwarning = "10KB"\n'
                            f'critical = "40KB"\n\n{extra_checks}')
    ops.set_config("agent", "autonomy", "medium")
    ops.set_config("pulse", "interval", interval)
    return Scene(junk, files, grow)


@contextmanager
def daemon(ops: Ops, tmp_path: Path, *, halts: int = 0) -> Iterator[subprocess.Popen[str]]:
    """`fazt-agent run` (its log in a file); yields once /healthz answers and `halts` halts exist (a
    traceback in its log fails the test)."""
    with web_daemon(ops, tmp_path / "daemon.log", halts, clean_log=True) as proc:
        yield proc


def text(response: httpx.Response) -> str:
    """The page's main text, without tags or entities."""
    main = response.text.split("<main>", 1)[-1]
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", main)))


@contextmanager
def session(ops: Ops, token: str) -> Iterator[httpx.Client]:
    """An httpx client logged in with `token` (the approvals page's login form)."""
    with httpx.Client(base_url=base(ops), timeout=30) as client:
        form = client.get("/login")
        entered = client.post("/login", data={"token": token, "csrf": csrf_of(form)})
        assert entered.status_code == 303, entered.text
        yield client


def assert_page(response: httpx.Response, status: int = 200) -> None:
    """A dashboard page: its status, the CSP (this page's own script, nothing inline), the headers."""
    assert response.status_code == status, (response.status_code, text(response)[:500])
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"
    scripts = re.findall(r"<script[^>]*>", response.text)
    assert all(re.fullmatch(r'<script src="[./]+static/dashboard\.js" defer>', s) for s in scripts), scripts
    assert "style=" not in response.text and "<style" not in response.text
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in response.text


def store_beats(ops: Ops, beats: list[tuple[datetime, list[tuple[str, str, str, str, dict[str, float]]]]]) -> None:
    """Store beats (time, [(check, kind, target, status, metrics)]) through the agent's own store, as
    its daemon would have over the past days; before the daemon starts (it holds the data dir)."""
    import asyncio

    from fazt_agent.pulse.base import CheckResult
    from fazt_agent.pulse.beats import BeatStore
    from fazt_agent.pulse.runner import BeatResult
    from fazt_agent.store import Store

    async def save() -> None:
        store = await Store.open(ops.data_dir / "fazt-agent.db")
        try:
            beat_store = BeatStore(store)
            for ts, results in beats:
                await beat_store.save(BeatResult(ts, [CheckResult(check, kind, target, status, "stored by the test",
                                                                  metrics) for check, kind, target, status, metrics
                                                      in results], 1.0))
        finally:
            await store.close()

    asyncio.run(save())


# -- in a real browser ---------------------------------------------------------------------------

def test_in_a_browser_the_owner_follows_a_check_live_approves_from_the_overview_and_reads_the_timeline(
        ops: Ops, tmp_path: Path, monkeypatch: Any) -> None:
    """Log in, see `grow` turn critical without a reload, open its trend, approve the halt on the
    overview (it runs once), read the incident's timeline, follow an event link, log out; then the
    same pages on a phone, without JavaScript, and through axe-core. Screenshots stay in tmp."""
    from playwright.sync_api import expect, sync_playwright

    s = scene(ops, tmp_path)
    token = create_token(ops, "laptop", "operate")
    shots, browsers = browser_dirs(tmp_path, monkeypatch)
    url = base(ops).__add__
    grow_key = f"grow|{s.grow}"

    def shot(page: Any, name: str) -> None:
        path = shots / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")

    with daemon(ops, tmp_path, halts=1), sync_playwright() as p:
        [halt] = halt_list(ops)
        browser = p.chromium.launch(executable_path=CHROMIUM)
        try:
            laptop = browser.new_context(viewport=LAPTOP)
            page = laptop.new_page()
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text))
            page.goto(url("/"))
            assert page.url == url("/login?next=.%2F")
            page.fill("#token", token)
            page.click("form.login button")
            page.wait_for_url(url("/"))   # back to the page it asked for

            # the overview follows the beats: grow goes from warning to critical without a reload
            row = page.locator(f'tr[data-key="{grow_key}"]')
            assert row.locator(".status").inner_text() == "warning"
            assert "size 11.7 KiB" in row.locator(".value").inner_text()
            # locator assertions, not wait_for_function: its string predicate is eval'd in the page,
            # which the page's CSP (no 'unsafe-eval') refuses
            expect(page.locator("#live")).to_have_text(re.compile(r"^\s*Live:"), timeout=20_000)
            page.evaluate("window.stayed = true")
            (s.grow / "more.bin").write_bytes(b"x" * 36_000)   # 48 KB: over the critical 40 KB
            expect(page.locator(f'tr[data-key="{grow_key}"] .status')).to_have_text("critical", timeout=20_000)
            assert page.evaluate("window.stayed === true")   # the same page: updated, not reloaded
            assert "size 46.9 KiB" in row.locator(".value").inner_text()
            shot(page, "overview-laptop")

            # its trend: a chart with the thresholds drawn
            row.locator("a").click()
            page.wait_for_url(re.compile(r"/trends/grow\?target="))
            chart = page.locator("figure.chart").first
            assert chart.locator("figcaption").inner_text().startswith("size")
            assert chart.locator("svg line.threshold.warning").count() == 1
            assert chart.locator("svg line.threshold.critical").count() == 1
            assert chart.locator("svg path.line").count() == 1
            assert "critical at 39.1 KiB" in chart.locator("figcaption").inner_text()
            warning_y = float(chart.locator("svg line.threshold.warning").get_attribute("y1"))
            critical_y = float(chart.locator("svg line.threshold.critical").get_attribute("y1"))
            assert critical_y < warning_y   # higher on the chart
            shot(page, "trend-laptop")

            # approve the halt on the overview: the plan runs, once
            page.goto(url("/"))
            card = page.locator(f"#halt-{halt['id']}")
            assert all(f.name in card.locator("pre.plan").inner_text() for f in s.files)
            csrf = card.locator("input[name=csrf]").get_attribute("value")
            card.locator("button[value=approve]").click()
            page.wait_for_load_state()
            assert "Done:" in page.locator("#outcome").inner_text()
            assert "laptop via web" in page.locator(f"#halt-{halt['id']} .by").inner_text()
            assert not any(f.exists() for f in s.files)
            again = page.request.post(url("/answer"), form={"csrf": csrf, "halt_id": str(halt["id"]),
                                                            "option": "approve"})
            assert again.status == 409 and "already answered" in again.text()
            assert len(events(ops, "action.started")) == 1
            shot(page, "approved-laptop")

            # the incident's timeline, up to the verification once the directory is ok again
            page.goto(url(f"/incidents/{halt['incident_id']}"))

            def phases() -> list[str]:
                page.reload()
                return [t.strip() for t in page.locator("ol.timeline .phase").all_text_contents()]

            wait_until("the cleanup's verification", lambda: "verified" in phases(), timeout=20)
            seen = phases()
            order = [seen.index(phase) for phase in ("seen", "decided", "asked", "answered", "acted", "verified")]
            assert order == sorted(order), seen
            decided = page.locator("li.phase-decided").first.inner_text()
            assert "directory-pressure" in decided and "ask" in decided and "policy version" in decided
            answered = page.locator("li.phase-answered").first
            assert "approve" in answered.inner_text() and "laptop" in answered.inner_text()
            assert "web" in answered.inner_text()
            shot(page, "incident-laptop")

            # follow an event link: the event's page
            answered.locator("a").click()
            page.wait_for_url(re.compile(r"/events/\d+$"))
            assert "halt.answered" in page.locator("h1").inner_text()
            assert "laptop" in page.locator("main dl").inner_text()
            assert page.locator("#verified").inner_text() != ""
            shot(page, "event-laptop")

            # log out: the session is gone
            page.click("form.logout button")
            page.wait_for_url(url("/login"))
            page.goto(url("/"))
            assert page.url == url("/login?next=.%2F")
            assert not [m for m in problems if "Content Security Policy" in m or "Refused" in m], problems
            laptop.close()

            # on a phone: one column, nothing wider than the screen
            phone = browser.new_context(viewport=PHONE)
            page = phone.new_page()
            page.goto(url("/login"))
            page.fill("#token", token)
            page.click("form.login button")
            page.wait_for_url(url("/approvals"))
            pages = {"overview": "/", "trend": "/trends/grow", "incident": f"/incidents/{halt['incident_id']}",
                     "events": "/events", "incidents": "/incidents", "apps": "/apps", "trends": "/trends"}
            for name, path in pages.items():
                page.goto(url(path))
                assert fits(page), name
                shot(page, f"{name}-phone")
            state = phone.storage_state()
            phone.close()

            # without JavaScript the overview reads whole (the live note says to reload)
            plain = browser.new_context(viewport=LAPTOP, java_script_enabled=False, storage_state=state)
            page = plain.new_page()
            page.goto(url("/"))
            assert page.locator(f'tr[data-key="{grow_key}"] .status').inner_text() == "critical"
            assert "reload the page" in page.locator("#live").inner_text()
            plain.close()

            # axe-core in every page, at both sizes (the CSP bypassed for axe's own script only)
            for size in (LAPTOP, PHONE):
                checked = browser.new_context(viewport=size, bypass_csp=True, storage_state=state)
                page = checked.new_page()
                for name, path in {**pages, "event": "/events/1", "login": "/login"}.items():
                    page.goto(url(path))
                    page.add_script_tag(path=str(AXE))
                    found = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
                    bad = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
                           for v in found["violations"] if v["impact"] in ("serious", "critical")]
                    assert bad == [], (name, size, bad)
                checked.close()
        finally:
            browser.close()
    assert list(browsers.iterdir()) == []
    answers = [(e["data"]["halt_id"], e["data"]["by"], e["data"]["channel"]) for e in events(ops, "halt.answered")]
    assert answers == [(halt["id"], "laptop", "web")]
    assert len(events(ops, "action.started")) == 1
    assert {p.name for p in shots.iterdir()} >= {"overview-laptop.png", "trend-laptop.png", "incident-laptop.png",
                                                  "overview-phone.png", "trend-phone.png", "incident-phone.png"}


# -- sessions, CSRF tokens and scopes ------------------------------------------------------------

def test_every_page_needs_a_session_and_every_form_its_csrf_token_and_scope(ops: Ops, tmp_path: Path) -> None:
    s = scene(ops, tmp_path)
    reader, operator, admin = (create_token(ops, "reader", "read"), create_token(ops, "phone", "operate"),
                               create_token(ops, "boss", "admin"))
    with daemon(ops, tmp_path, halts=1):
        [halt] = halt_list(ops)
        url = base(ops)

        # no session: pages lead to the login, forms and streams are refused, nothing is done
        for path in ("/", "/trends", "/trends/grow", "/incidents", f"/incidents/{halt['incident_id']}", "/events",
                     "/events/1", "/apps"):
            r = httpx.get(url + path)
            assert r.status_code == 303 and r.headers["location"].split("?")[0].endswith("login"), path

        # the login brings the owner back to the page asked for, and only to a page of this site
        with httpx.Client(base_url=url, timeout=30) as client:
            asked = client.get("/trends/grow?range=24h")
            assert asked.headers["location"] == "../login?next=trends%2Fgrow%3Frange%3D24h"
            form = client.get("/login?next=trends%2Fgrow%3Frange%3D24h")
            assert '<input type="hidden" name="next" value="trends/grow?range=24h">' in form.text
            entered = client.post("/login", data={"token": admin, "csrf": csrf_of(form), "next": "trends/grow?range=24h"})
            assert entered.status_code == 303 and entered.headers["location"] == "trends/grow?range=24h"
            assert client.get("/trends/grow?range=24h").status_code == 200
        with httpx.Client(base_url=url, timeout=30) as client:
            assert client.get("/").headers["location"] == "./login?next=.%2F"
        for hostile in ("//evil.example/x", "https://evil.example", "/etc", "../x", "a/../../x", "a\\b", "java script:x"):
            with httpx.Client(base_url=url, timeout=30) as client:
                form = client.get("/login", params={"next": hostile})
                assert 'name="next"' not in form.text, hostile
                entered = client.post("/login", data={"token": admin, "csrf": csrf_of(form), "next": hostile})
                assert entered.status_code == 303 and entered.headers["location"] == "approvals", hostile
        assert httpx.get(url + "/live").status_code == 401
        assert httpx.get(url + "/events.jsonl").status_code == 401
        forms = {"/answer": {"halt_id": str(halt["id"]), "option": "approve"}, "/autonomy": {"level": "high"},
                 "/apps/blog/rollback": {"to": "1"}, "/events/verify": {}}
        for path, form in forms.items():
            r = httpx.post(url + path, data=form)
            assert r.status_code == 403 and "log in first" in text(r), path

        # read: sees the plan, no buttons; an answer it forges anyway is refused
        with session(ops, reader) as client:
            page = client.get("/")
            assert_page(page)
            assert all(f.name in text(page) for f in s.files)
            assert 'name="option"' not in page.text and 'action="./autonomy"' not in page.text
            assert "answering needs operate" in text(page)
            refused = client.post("/answer", data={**forms["/answer"], "csrf": csrf_of(page)})
            assert refused.status_code == 403 and "'read' scope" in text(refused)
            assert client.post("/autonomy", data={"level": "high", "csrf": csrf_of(page)}).status_code == 403

        # operate: buttons, but without the form's CSRF token (or with another's) nothing is answered
        with session(ops, operator) as client, session(ops, reader) as other:
            page = client.get("/")
            assert 'name="option" value="approve"' in page.text and 'action="./autonomy"' not in page.text
            for bad in ({}, {"csrf": csrf_of(other.get("/"))}, {"csrf": "\u00e9" * 22}):
                forged = client.post("/answer", data={**forms["/answer"], **bad})
                assert forged.status_code == 403 and "CSRF" in text(forged), bad
            assert client.post("/autonomy", data={"level": "high", "csrf": csrf_of(page)}).status_code == 403
            assert 'action="./pause"' not in page.text
            assert client.post("/pause", data={"paused": "1", "csrf": csrf_of(page)}).status_code == 403
            odd = client.post("/answer", data={"halt_id": "\u0661", "option": "approve", "csrf": csrf_of(page)})
            assert odd.status_code == 400 and "names no halt" in text(odd)

        assert halt_list(ops)[0]["status"] == "pending" and all(f.exists() for f in s.files)
        assert events(ops, "action.started") == []
        answer_refusals = [(r["data"]["by"], r["data"]["channel"]) for r in events(ops, "halt.answer_refused")]
        assert answer_refusals == [("unknown", "web"), ("reader", "web"), ("phone", "web"), ("phone", "web"),
                                   ("phone", "web"), ("phone", "web")]
        web_refusals = [(r["data"]["by"], r["data"]["action"], r["data"]["reason"]) for r in events(ops, "web.refused")]
        assert [(by, action) for by, action, _ in web_refusals] == [
            (None, "autonomy high"), (None, "rollback blog to release 1"), (None, "verify the event chain"),
            ("reader", "autonomy high"), ("phone", "autonomy high"), ("phone", "pause")]
        assert "'operate' scope; this needs 'admin'" in web_refusals[-1][2]

        # admin: sets the autonomy level; status says who set it
        with session(ops, admin) as client:
            page = client.get("/")
            assert '<select id="level" name="level">' in page.text and '<label for="level">' in page.text
            bad = client.post("/autonomy", data={"level": "reckless", "csrf": csrf_of(page)})
            assert bad.status_code == 400 and "not an autonomy level" in text(bad)
            done = client.post("/autonomy", data={"level": "high", "csrf": csrf_of(page)})
            assert done.status_code == 303 and done.headers["location"] == "./#autonomy"
            status = json.loads(ops.cli("status", "--json").stdout)
            assert status["autonomy"] == "high" and status["autonomy_detail"]["by"] == "web:boss"
            assert "set by web:boss" in text(client.get("/"))
            # ... and pauses and resumes the agent, as `fazt-agent pause` / `resume` do
            page = client.get("/")
            assert 'action="./pause"' in page.text and ">Pause</button>" in page.text
            assert client.post("/pause", data={"paused": "yes", "csrf": csrf_of(page)}).status_code == 400
            done = client.post("/pause", data={"paused": "1", "csrf": csrf_of(page)})
            assert done.status_code == 303 and done.headers["location"] == "./#agent"
            status = json.loads(ops.cli("status", "--json").stdout)
            assert status["paused"] and status["paused_by"] == "web:boss"
            page = client.get("/")
            assert ">Resume</button>" in page.text and "by web:boss since" in text(page)
            assert client.post("/pause", data={"paused": "0", "csrf": csrf_of(page)}).status_code == 303
            assert not json.loads(ops.cli("status", "--json").stdout)["paused"]
        assert [(e["type"], e["data"]["by"]) for e in events(ops, "agent.*")
                if e["type"] in ("agent.paused", "agent.resumed")] == [
            ("agent.paused", "web:boss"), ("agent.resumed", "web:boss")]
        [changed] = [e["data"] for e in events(ops, "autonomy.changed")]
        assert (changed["old"], changed["new"], changed["by"]) == ("medium", "high", "web:boss")

        # what does not exist: a page that says so, never a 500
        with session(ops, reader) as client:
            for path in ("/incidents/999", "/incidents/abc", "/events/99999999", "/trends/nope"):
                assert_page(client.get(path), 404)
            assert_page(client.get("/events?before=x"), 400)
            assert_page(client.get("/trends/grow?range=10y"))   # an unknown range: the default


def test_the_live_stream_follows_beats_and_other_processes_and_ends_with_the_daemon(ops: Ops, tmp_path: Path) -> None:
    """/live sends the check rows after each beat and a change for events that other processes
    write (a halt approved on the command line); stopping the daemon ends the stream at once."""
    s = scene(ops, tmp_path)
    reader = create_token(ops, "reader", "read")
    with daemon(ops, tmp_path, halts=1) as proc, session(ops, reader) as client:
        [halt] = halt_list(ops)
        last = int(re.search(r'data-live="\./live\?after=(\d+)"', client.get("/").text).group(1))  # type: ignore
        seen: list[tuple[str, dict[str, Any], int]] = []
        with client.stream("GET", f"/live?after={last}", timeout=30) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            assert stream.headers["content-security-policy"] == CSP
            lines = stream.iter_lines()

            def next_message() -> tuple[str, dict[str, Any], int]:
                kind, data, event_id = "", {}, 0
                for line in lines:
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: "):
                        data = json.loads(line[6:])
                    elif line.startswith("id: "):
                        event_id = int(line[4:])
                    elif line == "" and kind:
                        return kind, data, event_id
                raise AssertionError("the stream ended")

            kind, data, event_id = next_message()
            assert kind == "checks" and event_id > last
            assert {r["key"]: r["status"] for r in data["rows"]} == {f"junk|{s.junk}": "warning",
                                                                      f"grow|{s.grow}": "warning"}
            assert approve_on_the_command_line(ops, halt["id"])
            while not any(k == "change" and d["type"] == "halt.answered" for k, d, _ in seen):
                seen.append(next_message())
            [answered] = [d for k, d, _ in seen if k == "change" and d["type"] == "halt.answered"]
            assert answered["incident_id"] == halt["incident_id"] and "answered 'approve' by cli" in answered["summary"]
            ids = [i for _, _, i in seen]
            assert ids == sorted(ids)

            # stopping the daemon while the stream is open: it ends the stream and stops in time
            t0 = time.monotonic()
            code, took, _ = stop_process(proc)
            assert code == 0 and took < 5, took
            assert time.monotonic() - t0 < 5


def approve_on_the_command_line(ops: Ops, halt_id: int) -> bool:
    result = ops.cli("approve", str(halt_id))
    assert result.returncode == 0, result.stderr
    return True


# -- trends ---------------------------------------------------------------------------------------

def test_trends_draw_a_week_in_at_most_480_points_with_thresholds_and_say_when_a_disk_fills(
        ops: Ops, tmp_path: Path) -> None:
    """A week of `grow` stored every 5 minutes (2016 beats), the last 6 hours of a disk filling at a
    rate that fills its free space in 30 h: the 7-day chart has at most 480 points, its band the
    raw lowest and highest values; the disk page says "full in ~30 h"."""
    import psutil

    mount = tmp_path / "disk"
    mount.mkdir()
    s = scene(ops, tmp_path, interval="60s",
              extra_checks=f'[[checks]]\nname = "disk"\nkind = "disk"\nmounts = ["{mount}"]\n\n'
                           f'[[checks]]\nname = "fresh"\nkind = "dir_size"\npath = "{tmp_path / "disk"}"\n')
    (s.grow / "more.bin").write_bytes(b"x" * 8_000)   # 20 KB now
    now = datetime.now(timezone.utc)
    usage = psutil.disk_usage(str(mount))
    rate = usage.free / 30   # bytes per hour
    history = []
    for i in range(2016, 0, -1):   # 7 days, oldest first
        at = now - timedelta(minutes=5 * i)
        results = [("grow", "dir_size", str(s.grow), "ok", {"size_bytes": 1000.0 + i, "files": 1.0})]
        if i <= 72:   # the last 6 hours of the disk
            used = usage.used - rate * (now - at).total_seconds() / 3600
            results.append(("disk", "disk", str(mount), "ok",
                            {"used_percent": 100 * used / usage.total, "used_bytes": used,
                             "free_bytes": usage.total - used, "total_bytes": float(usage.total)}))
        history.append((at, results))
    store_beats(ops, history)
    reader = create_token(ops, "reader", "read")
    with daemon(ops, tmp_path), session(ops, reader) as client:
        wait_until("the daemon's first beat", lambda: httpx.get(f"{base(ops)}/healthz").json()["last_beat"] is not None)
        week = client.get(f"/trends/grow?range=7d&target={s.grow}")
        assert_page(week)
        [size, _files] = re.findall(r"<desc[^>]*>(\d+) points: ([^<]*)</desc>", week.text)
        assert 400 <= int(size[0]) <= 480, size
        assert "min 1001 B" in size[1] and "max 19.5 KiB" in size[1]   # the raw extremes: the test's and the daemon's
        assert 'class="threshold warning"' in week.text and 'class="threshold critical"' in week.text
        assert 'aria-current="true">7d<' in week.text
        hour = client.get(f"/trends/grow?range=1h&target={s.grow}")
        [(points, _)] = re.findall(r"<desc[^>]*>(\d+) points: ([^<]*)</desc>", hour.text)[:1]
        assert 10 <= int(points) <= 14   # 11 stored beats in the hour, and the daemon's
        assert 'aria-current="true">24h<' in client.get(f"/trends/grow?target={s.grow}").text   # the default
        assert 'aria-current="true">1h<' in client.get("/trends/fresh").text   # a young check: its hour

        disk = client.get("/trends/disk")
        assert_page(disk)
        full = re.search(r"full in ~(\d+) h at [\d.]+ [KMGT]?i?B/h over the last 6 h", text(disk))
        assert full is not None, text(disk)
        hours = int(full.group(1))
        assert 25 <= hours <= 35, text(disk)
        assert 'class="threshold critical"' in disk.text   # used_percent's 95 %
        index = client.get("/trends")
        assert_page(index)
        assert all(f'href="./trends/{name}' in index.text for name in ("disk", "fresh", "grow", "junk"))


# -- events -----------------------------------------------------------------------------------------

# a decision as the LLM planner records it (decide/_loop.py's usage)
LLM_DECISION = {
    "trigger": "opened", "planner": "llm", "autonomy": "medium", "verdict": "ask", "action": "cleanup",
    "reason": "autonomy is medium and the plan is destructive", "policy_version": "sha256:5c292e35c57e",
    "model": "claude-sonnet-5-5", "rationale": "the logs grow by 1 GiB a day",
    "usage": {"input_tokens": 1234, "output_tokens": 210, "cache_read_tokens": 4000, "cache_write_tokens": 0,
              "calls": 2, "latency_ms": 2300.0, "cost_usd": 0.0123,
              "tool_calls": [{"step": 1, "name": "disk_usage", "input": {"path": "/srv"}, "kind": "investigate",
                              "ok": True, "result_chars": 512},
                             {"step": 2, "name": "propose", "input": {"action": "cleanup"}, "kind": "propose"}]}}

def test_events_filter_page_export_and_the_chain_verified_incrementally(ops: Ops, tmp_path: Path) -> None:
    """130 alerts stored before the daemon starts: filtered by type, 50 a page; the export is the
    CLI's; the chain is verified up to the newest event, an event altered afterwards is found by
    "verify again" (a page view checks only what is new)."""
    import asyncio

    from fazt_agent.events import EventLog, NewEvent
    from fazt_agent.store import Store

    scene(ops, tmp_path, interval="60s")
    before = datetime.now(timezone.utc) - timedelta(seconds=1)

    async def alerts() -> None:
        store = await Store.open(ops.data_dir / "fazt-agent.db")
        try:
            log = EventLog(store)
            await log.emit("decision.made", LLM_DECISION, source="engine")
            await log.emit_many([NewEvent("agent.alert", {"message": f"alert {i}"}) for i in range(130)])
        finally:
            await store.close()

    asyncio.run(alerts())
    reader = create_token(ops, "reader", "read")
    with daemon(ops, tmp_path, halts=1), session(ops, reader) as client:
        first = client.get("/events?type=agent.alert")
        assert_page(first)
        ids = [int(i) for i in re.findall(r'<th scope="row" data-label="Event"><a href="\./events/(\d+)">', first.text)]
        assert len(ids) == 50 and ids == sorted(ids, reverse=True) and "alert 129" in text(first)
        older = re.search(r'rel="next" href="\./events\?([^"]+)"', first.text).group(1)  # type: ignore[union-attr]
        second = client.get("/events?" + html.unescape(older))
        ids2 = [int(i) for i in re.findall(r'data-label="Event"><a href="\./events/(\d+)">', second.text)]
        assert len(ids2) == 50 and max(ids2) < min(ids)
        third = client.get("/events?" + html.unescape(
            re.search(r'rel="next" href="\./events\?([^"]+)"', second.text).group(1)))  # type: ignore[union-attr]
        assert len(re.findall(r'data-label="Event"><a', third.text)) == 30 and 'rel="next"' not in third.text
        assert "alert 0" in text(third)
        assert "No event matches." in text(client.get(f"/events?type=agent.alert&until={before:%Y-%m-%dT%H:%M:%S}"))
        assert len(re.findall(r"alert \d+", text(client.get("/events?type=agent.alert&since=1h")))) == 50
        bad = client.get("/events?since=yesterday")
        assert_page(bad, 400)
        assert "since: 'yesterday' is neither a date" in text(bad)
        assert_page(client.get("/events?type=" + "x" * 101), 400)

        exported = client.get("/events.jsonl?type=agent.alert")
        assert exported.headers["content-type"].startswith("application/x-ndjson")
        assert exported.text == ops.cli("events", "export", "--type", "agent.alert").stdout
        assert len(exported.text.splitlines()) == 130

        # a decision of the LLM planner: everything an audit needs, in words
        found = client.get("/events?type=decision.made")
        llm = min(int(i) for i in re.findall(r'data-label="Event"><a href="\./events/(\d+)">', found.text))
        decision = text(client.get(f"/events/{llm}"))   # the first: the one stored before the daemon's own
        for said in ("planner llm", "verdict ask", "policy version sha256:5c292e35c57e", "model claude-sonnet-5-5",
                     "tokens input 1,234, cache read 4,000, cache write 0, output 210", "calls 2 in 2.3 s",
                     "cost about $0.0123", 'tool call 1 investigate disk_usage {"path": "/srv"} -> ok, 512 characters',
                     'tool call 2 propose {"action": "cleanup"}', "rationale the logs grow by 1 GiB a day"):
            assert said in decision, (said, decision[:1500])

        # the chain: verified up to the newest event at the page view
        page = client.get("/events")
        newest = int(re.search(r'data-label="Event"><a href="\./events/(\d+)">', page.text).group(1))  # type: ignore
        verified = int(re.search(r"Verified up to event .*?>(\d+)<", page.text).group(1))  # type: ignore
        assert verified >= newest and "intact" in text(page)
        event = client.get(f"/events/{ids[0]}")
        assert_page(event)
        assert "verified: the chain holds up to event" in text(event) and '"message": "alert 129"' in text(event)

        # alter an event already verified: a page view checks only what is new; "verify again" finds it
        db = sqlite3.connect(ops.data_dir / "fazt-agent.db", timeout=10)
        with db:
            db.execute("UPDATE events SET data = ? WHERE id = ?", ('{"message":"nothing happened"}', ids[-1]))
        db.close()
        assert "intact" in text(client.get("/events"))
        again = client.post("/events/verify", data={"csrf": csrf_of(page)}, follow_redirects=True)
        assert_page(again)
        assert f"event {ids[-1]} was altered (its hash does not match its content)" in text(again)
        assert f"Verified up to event {ids[-1] - 1}" in text(again) and "broken" in text(again)
        assert "was altered" in text(client.get("/"))
        cli = ops.cli("events", "verify")
        assert cli.returncode == 1 and f"event {ids[-1]}" in cli.stderr


# -- apps ---------------------------------------------------------------------------------------------

def test_apps_show_releases_and_logs_and_operate_rolls_back(ops: Ops, tmp_path: Path) -> None:
    from fazt_agent.apps.store import AppStore

    scene(ops, tmp_path, interval="60s")
    for key, value in {"listen": f"127.0.0.1:{free_port()}", "domain": "apps.test"}.items():
        ops.set_config("apps", key, value)
    for version in ("one", "two"):
        site = tmp_path / f"site-{version}"
        site.mkdir()
        (site / "index.html").write_text(f"<h1>{version}</h1>")
        done = ops.cli("deploy", str(site), "--name", "blog", "--json")
        assert done.returncode == 0, done.stderr
    store = AppStore(ops.data_dir, create=False)
    try:
        store.add_logs(store.app("blog")["id"], [("info", "hello from the blog"), ("error", "<b>not markup</b>")])
    finally:
        store.close()
    reader, operator = create_token(ops, "reader", "read"), create_token(ops, "phone", "operate")
    with daemon(ops, tmp_path, halts=1):
        with session(ops, reader) as client:
            page = client.get("/apps")
            assert_page(page)
            assert "2 (live)" in text(page) and "Make live" not in page.text
            assert "hello from the blog" in text(page) and "&lt;b&gt;not markup&lt;/b&gt;" in page.text
            refused = client.post("/apps/blog/rollback", data={"to": "1", "csrf": csrf_of(page)})
            assert refused.status_code == 403
        with session(ops, operator) as client:
            page = client.get("/apps")
            assert 'aria-label="Make release 1 of blog live"' in page.text
            assert 'aria-label="Make release 2 of blog live"' not in page.text   # the live one
            done = client.post("/apps/blog/rollback", data={"to": "1", "csrf": csrf_of(page)})
            assert_page(done)
            assert "blog: release 1 live again (was 2)" in text(done)
            assert "1 (live)" in text(client.get("/apps"))
            missing = client.post("/apps/blog/rollback", data={"to": "9", "csrf": csrf_of(page)})
            assert missing.status_code == 409 and "no release 9" in text(missing)
        releases = json.loads(ops.cli("apps", "releases", "blog", "--json").stdout)
        assert [r["number"] for r in releases if r["current"]] == [1]
        [rolled] = [e["data"] for e in events(ops, "app.rolled_back")]
        assert (rolled["from_release"], rolled["to_release"]) == (2, 1)
        assert rolled["reason"] == "requested on the dashboard by phone"
        assert [(r["data"]["by"], r["data"]["action"]) for r in events(ops, "web.refused")] == [
            ("reader", "rollback blog to release 1"), ("phone", "rollback blog to release 9")]
