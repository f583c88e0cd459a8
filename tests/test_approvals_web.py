"""Answering a halt from anywhere: signed links and the approvals page, against a real daemon.

The halts are opened by the daemon's own first beat (a directory over its size, at medium autonomy,
whose cleanup deletes files: the policy asks). `[http] public_url` is the daemon's own address, so
the links its notifications and `halts show` hand out lead to it. httpx plays the mail scanner and
the attacker; Debian's chromium (Playwright, nothing downloaded) plays the owner on a laptop and on a
phone.
"""

from __future__ import annotations

import json
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import httpx

from _helpers import CHROMIUM, base, browser_dirs, csrf_of, fits, halt_list, web_daemon
from _mcp import create_token, events, fill, listen, wait_until
from conftest import Ops

CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")


# -- a daemon with pending halts ---------------------------------------------------------------

def junk(ops: Ops, tmp_path: Path, names: tuple[str, ...] = ("junk",), **http: Any) -> dict[str, list[Path]]:
    """One cleanup root per name, each watched by a dir_size check it is over: the daemon's first
    beat opens one halt per root. Medium autonomy; the plan deletes more than 1 KB: it asks."""
    roots = {name: tmp_path / name for name in names}
    files = {}
    for name, root in roots.items():
        root.mkdir()
        files[name] = fill(root, 5)
    (ops.dir / "policies" / "local.toml").write_text(
        f"[constraints]\ncleanup_roots = {json.dumps([str(r) for r in roots.values()])}\n")
    (ops.dir / "kernel" / "actions.toml").write_text('[cleanup]\ndestructive_above = "1KB"\n')
    ops.write_pulse("junk", "".join(f'[[checks]]\nname = "{name}"\nkind = "dir_size"\npath = "{root}"\n'
                                    'warning = "10KB"\n\n' for name, root in roots.items()))
    ops.set_config("agent", "autonomy", "medium")
    ops.set_config("http", "public_url", f"http://{listen(ops)}")
    for key, value in http.items():
        ops.set_config("http", key, value)
    return files


@contextmanager
def daemon(ops: Ops, tmp_path: Path, halts: int = 1) -> Iterator[Path]:
    """`fazt-agent run` with its log in a file (the log channel: notifications go there); yields
    the log once the first beat has opened `halts` halts."""
    log = tmp_path / "daemon.log"
    with web_daemon(ops, log, halts):
        yield log


def show(ops: Ops, halt_id: int) -> dict[str, Any]:
    result = ops.cli("halts", "show", str(halt_id), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def refusals(ops: Ops) -> list[dict[str, Any]]:
    return [e["data"] for e in events(ops, "halt.answer_refused")]


def assert_secure_page(response: httpx.Response) -> None:
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-store"
    assert "<script" not in response.text and "style=" not in response.text and "<style" not in response.text
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in response.text


def text(response: httpx.Response) -> str:
    """The page's text without tags or entities (a quote in a message is &#39; in the HTML)."""
    import html

    return html.unescape(re.sub(r"<[^>]+>", "", response.text))


def tamper(token: str) -> str:
    """The token with one character of its MAC changed (a middle one: every bit of it counts)."""
    head, mac = token.rsplit(".", 1)
    i = len(mac) // 2
    return f"{head}.{mac[:i]}{'A' if mac[i] != 'A' else 'B'}{mac[i + 1:]}"


# -- signed links ------------------------------------------------------------------------------

def test_a_prefetched_link_never_answers_and_its_post_runs_the_plan_once(ops: Ops, tmp_path: Path) -> None:
    files = junk(ops, tmp_path)["junk"]
    with daemon(ops, tmp_path) as log:
        [halt] = halt_list(ops)
        shown = show(ops, halt["id"])
        links = shown["links"]
        assert sorted(links) == ["approve", "deny"]
        assert all(url.startswith(f"{base(ops)}/a/{halt['id']}.") for url in links.values())
        printed = ops.cli("halts", "show", str(halt["id"])).stdout
        assert f"  approve: {links['approve']}" in printed and f"  deny: {links['deny']}" in printed
        # the notification on the main channel (the log, without notify urls) carried the same links
        wait_until("the request in the log", lambda: links["approve"] in log.read_text())
        assert links["deny"] in log.read_text()

        # mail scanners and link previews: GET (and HEAD), many times, answer nothing
        with httpx.Client() as scanner:
            for _ in range(3):
                page = scanner.get(links["approve"])
                assert page.status_code == 200
                assert scanner.head(links["approve"]).status_code == 200
                assert scanner.get(links["deny"]).status_code == 200
        assert_secure_page(page)
        words = text(page)
        assert "Confirm: approve" in words and 'method="post"' in page.text
        assert shown["plan"]["summary"] in words
        assert all(f.name in words for f in files)             # the full plan, every step
        assert "Signed for" in words and "owner" in words and "Link expires" in words
        assert halt_list(ops)[0]["status"] == "pending" and all(f.exists() for f in files)
        assert events(ops, "action.started") == [] and refusals(ops) == []

        # the confirm button: approved, run once
        done = httpx.post(links["approve"])
        assert done.status_code == 200, done.text
        assert_secure_page(done)
        assert "Done:" in text(done) and "answered 'approve' by owner via link" in text(done)
        assert not any(f.exists() for f in files)
        [answered] = [e["data"] for e in events(ops, "halt.answered")]
        assert (answered["by"], answered["channel"], answered["option"]) == ("owner", "link", "approve")
        assert len(events(ops, "action.started")) == 1

        # the same link again, and the other option's link: refused, recorded, nothing runs again
        again = httpx.post(links["approve"])
        assert again.status_code == 409 and "this link was already used" in text(again)
        other = httpx.post(links["deny"])
        assert other.status_code == 409
        assert f"halt #{halt['id']} was already answered 'approve' by owner via link at" in text(other)
        first, second = refusals(ops)
        assert (first["channel"], first["halt_id"], first["option"]) == ("link", halt["id"], "approve")
        assert "already used" in first["reason"]
        assert (second["channel"], second["option"]) == ("link", "deny") and "already answered" in second["reason"]
        assert len(events(ops, "action.started")) == 1

        # the page of an answered halt says who answered, via what, when; no button
        after = httpx.get(links["deny"])
        assert after.status_code == 200 and 'method="post"' not in after.text.split("</header>")[1]
        assert "owner via link" in text(after) and "answered 'approve'" in text(after)
        assert show(ops, halt["id"])["links"] == {}   # closed: no links to hand out


def test_forged_tampered_and_malformed_links_are_refused_and_recorded(ops: Ops, tmp_path: Path) -> None:
    files = junk(ops, tmp_path)["junk"]
    with daemon(ops, tmp_path):
        [halt] = halt_list(ops)
        links = show(ops, halt["id"])["links"]
        token = links["approve"].rsplit("/", 1)[1]
        deny_token = links["deny"].rsplit("/", 1)[1]
        hid, option, expires, owner, mac = token.split(".")
        forged = {
            "mac flipped": tamper(token),
            "option changed": f"{hid}.deny.{expires}.{owner}.{mac}",
            "expiry moved": f"{hid}.approve.{int(expires) + 86400}.{owner}.{mac}",
            "other halt": f"{int(hid) + 1}.approve.{expires}.{owner}.{mac}",
            "owner changed": f"{hid}.approve.{expires}.mallory.{mac}",
            "deny's mac on approve": f"{hid}.approve.{expires}.{owner}.{deny_token.rsplit('.', 1)[1]}",
        }
        for what, bad in forged.items():
            for method in ("GET", "POST"):
                response = httpx.request(method, f"{base(ops)}/a/{bad}")
                assert response.status_code == 403, (what, method, response.status_code)
                assert_secure_page(response)
                assert "does not verify" in text(response), what
        for bad in ("garbage", f"{hid}.approve.{expires}.{owner}", f"{hid}.APPROVE.{expires}.{owner}.{mac}"):
            response = httpx.post(f"{base(ops)}/a/{bad}")
            assert response.status_code == 400 and "malformed" in text(response), bad
        recorded = refusals(ops)
        assert len(recorded) == 2 * len(forged) + 3
        assert all(r["channel"] == "link" and r["halt_id"] is None for r in recorded)
        assert {r["reason"] for r in recorded[:-3]} == {
            "this link does not verify (forged, altered, or signed with another key)"}
        assert halt_list(ops)[0]["status"] == "pending" and all(f.exists() for f in files)
        assert events(ops, "action.started") == [] and events(ops, "halt.answered") == []
        assert httpx.post(links["approve"]).status_code == 200   # the real link still works
        assert not any(f.exists() for f in files)


def test_an_expired_link_is_refused_and_recorded(ops: Ops, tmp_path: Path) -> None:
    files = junk(ops, tmp_path, link_expiry="2s")["junk"]
    with daemon(ops, tmp_path):
        [halt] = halt_list(ops)
        links = show(ops, halt["id"])["links"]
        expires = int(links["approve"].rsplit("/", 1)[1].split(".")[2])
        wait_until("the link's expiry", lambda: time.time() > expires + 0.2, timeout=10)
        page = httpx.get(links["approve"])
        assert page.status_code == 410 and "this link expired at" in text(page)
        assert_secure_page(page)
        assert httpx.post(links["approve"]).status_code == 410
        recorded = refusals(ops)
        assert [(r["halt_id"], r["option"], r["channel"], r["by"]) for r in recorded] == \
               [(halt["id"], "approve", "link", "owner")] * 2
        assert "expired" in recorded[0]["reason"]
        assert halt_list(ops)[0]["status"] == "pending" and all(f.exists() for f in files)  # the halt lives on
        assert events(ops, "action.started") == []


# -- the approvals page ------------------------------------------------------------------------

def login_form(client: httpx.Client, ops: Ops) -> str:
    page = client.get(f"{base(ops)}/login")
    assert page.status_code == 200
    assert_secure_page(page)
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]


def login(client: httpx.Client, ops: Ops, token: str) -> httpx.Response:
    csrf = login_form(client, ops)
    return client.post(f"{base(ops)}/login", data={"token": token, "csrf": csrf})


def test_the_approvals_page_needs_a_session_a_csrf_token_and_the_operate_scope(ops: Ops, tmp_path: Path) -> None:
    files = junk(ops, tmp_path)["junk"]
    reader, operator = create_token(ops, "reader", "read"), create_token(ops, "phone", "operate")
    with daemon(ops, tmp_path):
        [halt] = halt_list(ops)
        url = f"{base(ops)}/approvals"
        nobody = httpx.get(url)
        assert nobody.status_code == 303 and nobody.headers["location"] == "login"
        assert httpx.post(url, data={"halt_id": str(halt["id"]), "option": "approve"}).status_code == 403

        # a wrong token: refused, recorded, no hint; a token without its form's nonce: refused too
        with httpx.Client() as client:
            wrong = login(client, ops, operator[:-1] + ("A" if operator[-1] != "A" else "B"))
            assert wrong.status_code == 401 and "That token was not accepted." in wrong.text
            assert "fazt_session" not in client.cookies
            bare = httpx.post(f"{base(ops)}/login", data={"token": operator, "csrf": "x"})
            assert bare.status_code == 403 and "fazt_session" not in bare.cookies
        assert [e["data"]["reason"] for e in events(ops, "web.login_refused")] == [
            "unknown or revoked token", "the login form was stale or not this site's (CSRF)"]
        assert not any(operator[4:] in json.dumps(e) for e in events(ops))   # never the token

        # read scope: sees the plan, has no buttons, and an answer it forges is refused
        with httpx.Client() as client:
            entered = login(client, ops, reader)
            assert entered.status_code == 303 and entered.headers["location"] == "approvals"
            cookie = next(c for c in entered.headers.get_list("set-cookie") if c.startswith("fazt_session="))
            attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
            assert {"httponly", "samesite=strict", "path=/"} <= attributes and "secure" not in attributes
            page = client.get(url)
            assert page.status_code == 200
            assert_secure_page(page)
            assert show(ops, halt["id"])["plan"]["summary"] in text(page)
            assert all(f.name in text(page) for f in files)
            assert 'name="option"' not in page.text and "answering needs operate" in text(page)
            refused = client.post(url, data={"halt_id": str(halt["id"]), "option": "approve", "csrf": csrf_of(page)})
            assert refused.status_code == 403 and "scope" in text(refused)
        [read_refusal] = refusals(ops)
        assert (read_refusal["by"], read_refusal["channel"], read_refusal["halt_id"]) == ("reader", "web", halt["id"])

        # operate scope: no CSRF token or a wrong one answers nothing; the right one answers
        with httpx.Client() as client:
            assert login(client, ops, operator).status_code == 303
            page = client.get(url)
            assert 'name="option" value="approve"' in page.text and 'name="option" value="deny"' in page.text
            csrf = csrf_of(page)
            for bad in ({}, {"csrf": "forged"}, {"csrf": csrf[:-1] + ("A" if csrf[-1] != "A" else "B")},
                        {"csrf": "\u00e9" * len(csrf)}):
                forged = client.post(url, data={"halt_id": str(halt["id"]), "option": "approve", **bad})
                assert forged.status_code == 403 and "CSRF" in text(forged), bad
            # an Arabic-Indic one: a digit to str.isdigit(), not an id
            odd = client.post(url, data={"halt_id": "\u0661", "option": "approve", "csrf": csrf})
            assert odd.status_code == 400 and "names no halt" in text(odd)
            assert halt_list(ops)[0]["status"] == "pending" and all(f.exists() for f in files)
            assert len(refusals(ops)) == 6
            done = client.post(url, data={"halt_id": str(halt["id"]), "option": "approve", "csrf": csrf})
            assert done.status_code == 200, done.text
            assert "answered 'approve' by phone via web" in text(done)
            assert not any(f.exists() for f in files) and len(events(ops, "action.started")) == 1
            listed = client.get(url)
            assert "Pending (0)" in text(listed) and "answered 'approve' by phone via web at" in text(listed)

            # log out needs the form's token too; then the cookie is gone
            assert client.post(f"{base(ops)}/logout").status_code == 403
            out = client.post(f"{base(ops)}/logout", data={"csrf": csrf})
            assert out.status_code == 303 and out.headers["location"] == "login"
            assert client.get(url).status_code == 303

        # revoking the token ends its sessions at the next request
        with httpx.Client() as client:
            assert login(client, ops, reader).status_code == 303
            assert client.get(url).status_code == 200
            assert ops.cli("tokens", "revoke", "reader").returncode == 0
            assert client.get(url).status_code == 303
        css = httpx.get(f"{base(ops)}/static/approvals.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


def test_behind_an_https_public_url_the_session_cookie_is_secure(ops: Ops, tmp_path: Path) -> None:
    """The owner reaches the agent through a TLS proxy: the cookie is sent over https only."""
    ops.set_config("http", "public_url", "https://agent.example.com/")
    token = create_token(ops, "phone", "operate")
    with daemon(ops, tmp_path, halts=0), httpx.Client() as client:
        form = client.get(f"{base(ops)}/login")
        login_cookie = next(c for c in form.headers.get_list("set-cookie") if c.startswith("fazt_login="))
        assert "secure" in login_cookie.lower()
        client.cookies.clear()   # a Secure cookie is not sent over http: hand it back as the proxy would
        client.cookies.set("fazt_login", login_cookie.split(";")[0].split("=", 1)[1])
        entered = client.post(f"{base(ops)}/login", data={"token": token, "csrf": csrf_of(form)})
        assert entered.status_code == 303, entered.text
        cookie = next(c for c in entered.headers.get_list("set-cookie") if c.startswith("fazt_session="))
        attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
        assert {"secure", "httponly", "samesite=strict", "path=/"} <= attributes


# -- in a real browser -------------------------------------------------------------------------

def test_in_a_browser_the_owner_approves_on_the_page_and_by_a_signed_link(ops: Ops, tmp_path: Path,
                                                                          monkeypatch: Any) -> None:
    """Chromium from Debian, on a laptop screen and a phone's: log in, see the plan, approve one
    halt on /approvals and the other by its signed link. Screenshots stay in the test's tmp dir."""
    from playwright.sync_api import sync_playwright

    files = junk(ops, tmp_path, names=("junk-a", "junk-b"))
    token = create_token(ops, "laptop", "operate")
    shots, browsers = browser_dirs(tmp_path, monkeypatch)
    with daemon(ops, tmp_path, halts=2), sync_playwright() as p:
        by_root = {Path(show(ops, h["id"])["plan"]["args"]["root"]).name: h for h in halt_list(ops)}
        first, second = by_root["junk-a"], by_root["junk-b"]
        link = show(ops, second["id"])["links"]["approve"]
        browser = p.chromium.launch(executable_path=CHROMIUM)
        try:
            for name, size in (("laptop", {"width": 1280, "height": 800}), ("phone", {"width": 390, "height": 844})):
                context = browser.new_context(viewport=size)
                page = context.new_page()
                problems: list[str] = []
                page.on("console", lambda m: problems.append(m.text))
                page.goto(f"{base(ops)}/approvals")
                assert page.url == f"{base(ops)}/login"
                page.fill("#token", token)
                page.click("form.login button")
                page.wait_for_url(f"{base(ops)}/approvals")
                assert page.locator("section.halt").count() == (2 if name == "laptop" else 1)
                assert fits(page), name
                page.screenshot(path=str(shots / f"approvals-{name}.png"), full_page=True)
                if name == "laptop":   # approve the first halt on the page
                    card = page.locator(f"#halt-{first['id']}")
                    plan = card.locator("pre.plan").inner_text()
                    assert all(f.name in plan for f in files["junk-a"])
                    card.locator("button[value=approve]").click()
                    page.wait_for_load_state()
                    assert "Done:" in page.locator("#outcome").inner_text()
                    page.screenshot(path=str(shots / f"approved-{name}.png"), full_page=True)
                    page.goto(f"{base(ops)}/approvals")
                    assert "answered 'approve' by laptop via web" in page.locator(f"#recent-{first['id']}").inner_text()
                else:                  # on the phone: the other halt's signed link
                    page.goto(link)
                    assert "Confirm: approve" in page.locator("h1").inner_text()
                    assert all(f.name in page.locator("pre.plan").inner_text() for f in files["junk-b"])
                    assert fits(page), name
                    page.screenshot(path=str(shots / f"link-{name}.png"), full_page=True)
                    assert all(f.exists() for f in files["junk-b"])   # the page alone answers nothing
                    page.click("form.confirm button")
                    page.wait_for_load_state()
                    assert "Done:" in page.locator("#outcome").inner_text()
                    assert "owner via link" in page.locator(f"#halt-{second['id']} .by").inner_text()
                    assert fits(page), name
                    page.screenshot(path=str(shots / f"link-done-{name}.png"), full_page=True)
                # the stylesheet applied under the CSP (a body's default margin is 8px), nothing blocked
                assert page.evaluate("getComputedStyle(document.body).margin") == "0px"
                assert not [m for m in problems if "Content Security Policy" in m or "Refused" in m], problems
                context.close()
        finally:
            browser.close()
    assert not any(f.exists() for f in files["junk-a"] + files["junk-b"])
    answers = [(e["data"]["halt_id"], e["data"]["by"], e["data"]["channel"]) for e in events(ops, "halt.answered")]
    assert answers == [(first["id"], "laptop", "web"), (second["id"], "owner", "link")]
    assert len(events(ops, "action.started")) == 2
    assert list(browsers.iterdir()) == []
    assert sorted(p.name for p in shots.iterdir()) == [
        "approvals-laptop.png", "approvals-phone.png", "approved-laptop.png", "link-done-phone.png",
        "link-phone.png"]
