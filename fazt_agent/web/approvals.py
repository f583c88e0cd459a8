"""Signed links and the approvals page: answering a halt from a phone, on the control plane.

- `GET /a/{token}` (a signed link, `answer/links.py`) shows the halt's plan, the link's option,
  who it is signed for, when it expires, and a confirm button. A GET never answers: mail scanners
  and chat previews fetch links before the owner sees them.
- `POST /a/{token}` (the confirm button) answers, once per link: the use is recorded in `inbound`
  before the answer, so a link replayed, even across a restart, is refused. The link is the
  credential; no session is needed.
- `/login` takes an MCP bearer token (`mcp/auth.py`) and sets a session cookie: the token's id and
  the session's expiry, signed (purpose "session"), HttpOnly, SameSite=Strict, Secure behind an
  https `public_url`. Every request reads the token again, so revoking it ends its sessions.
- `/approvals` lists pending halts with their full plans and the options as buttons (`operate`
  scope answers, `read` only sees), and the halts answered lately with who, via what, when. Every
  form carries a CSRF token (the session id signed for "csrf"); a POST without it answers nothing.

Every refusal is recorded: a link or a web answer that does not count is a `halt.answer_refused`
(channel "link" or "web", via `Answers.refuse`), a login that does not is a `web.login_refused`.
Pages are plain HTML rendered here (jinja2, autoescaped, imported at the first page so the idle
daemon never loads it), with one stylesheet from the package, a strict CSP and no script at all.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from ..answer.links import LINK, Link, LinkError, Signer
from ..clock import parse_iso
from ..halt.store import HaltError
from ..units import format_duration

if TYPE_CHECKING:
    from ..answer.core import Answers
    from ..config import Config
    from ..halt.store import Halt
    from ..mcp.auth import TokenStore

log = logging.getLogger(__name__)

SESSION_COOKIE = "fazt_session"
LOGIN_COOKIE = "fazt_login"          # the login form's own CSRF nonce: nobody else can log you in
SESSION_LIFETIME = 12 * 3600.0
LOGIN_FORM_LIFETIME = 3600
MAX_FORM = 16 * 1024
RECENT = 10                          # answered halts shown under the pending ones
EPOCH = datetime.fromtimestamp(0, timezone.utc)
CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
NOT_ACCEPTED = "That token was not accepted."


@dataclass(frozen=True)
class Session:
    """A logged-in browser: the token it logged in with, as it is now."""

    id: str            # what the cookie signs: "TOKEN_ID.EXPIRES.NONCE"
    token_id: int
    name: str
    scope: str
    expires: datetime


def when(at: datetime | None) -> str:
    return f"{at:%Y-%m-%d %H:%M} UTC" if at else "?"


class Approvals:
    """The pages; `routes()` goes into `web.app.create_app(pages=...)`."""

    def __init__(self, answers: Answers, tokens: TokenStore, config: Config):
        self.answers = answers
        self.tokens = tokens
        self.config = config
        self.executor = answers.executor
        self.halts = answers.executor.halts
        self.secure = (config.file.http.public_url or "").startswith("https://")
        self._signer: Signer | None = None
        self._env: Any = None
        self._css: bytes | None = None

    def routes(self) -> list[Route]:
        return [Route("/a/{token}", self.link, methods=["GET", "POST"]),
                Route("/login", self.login, methods=["GET", "POST"]),
                Route("/logout", self.logout, methods=["POST"]),
                Route("/approvals", self.approvals, methods=["GET", "POST"]),
                Route("/static/approvals.css", self.css, methods=["GET"])]

    @property
    def signer(self) -> Signer:
        """The data dir's key, read at the first use (a damaged key fails that page, not the daemon)."""
        if self._signer is None:
            self._signer = Signer.for_data_dir(self.config.data_dir)
        return self._signer

    def now(self) -> datetime:
        return self.executor.clock.now()

    # -- signed links ------------------------------------------------------------------------

    async def link(self, request: Request) -> Response:
        """GET shows the halt and a confirm button; POST (the button) answers with the link's option."""
        token = request.path_params["token"]
        try:
            link = self.signer.verify_link(token, self.now())
        except LinkError as e:
            return await self._bad_link(token, str(e))
        halt = await self.halts.get(link.halt_id)
        if halt is None:   # signed by this key, but the database does not have it (a new database)
            reason = f"there is no halt #{link.halt_id}"
            await self._refuse(link.halt_id, link.option, "link", link.owner, reason)
            return self._message("Not found", reason, "refused", status=404, root="../")
        if request.method != "POST":
            used = await self._used(link)
            return self._page("link.html", {"halt": halt, "link": link, "used": used}, root="../")
        if await self.answers.seen("link", link.mac):
            reason = "this link was already used; each link answers once"
            if halt.status != "pending":
                reason += f" ({self._closed(halt)})"
            await self._refuse(halt.id, link.option, "link", link.owner, reason)
            return self._message("Already used", reason, "refused", halt=halt, status=409, root="../")
        return await self._answer(halt.id, link.option, "link", link.owner, root="../")

    async def _bad_link(self, token: str, reason: str) -> Response:
        """A link that does not verify: refused (and recorded) whether it was fetched or posted.
        An expired link's signature still holds, so its halt is named and shown."""
        trusted = self._trusted(token)
        halt = await self.halts.get(trusted.halt_id) if trusted else None
        if trusted is not None:
            option, by, status = trusted.option, trusted.owner, 410
        else:
            m = LINK.match(token)
            option, by, status = (m.group(2) if m else "?"), "unknown", (403 if m else 400)
        await self._refuse(trusted.halt_id if trusted else None, option, "link", by, reason)
        heading = {400: "Malformed link", 403: "Link refused", 410: "Link expired"}[status]
        return self._message(heading, reason, "refused", halt=halt, status=status, root="../")

    def _trusted(self, token: str) -> Link | None:
        """The link `token` names if its signature holds, expired or not (verified as of 1970)."""
        try:
            return self.signer.verify_link(token, EPOCH)
        except LinkError:
            return None

    async def _used(self, link: Link) -> bool:
        """Whether the link was used (read only: a GET records nothing)."""
        row = await self.executor.rt.store.fetchone(
            "SELECT 1 FROM inbound WHERE channel = 'link' AND key = ?", (link.mac,))
        return row is not None

    # -- login and sessions ------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        if request.method != "POST":
            return self._login_form(back=safe_next(request.query_params.get("next", "")))
        form = await self._form(request)
        back = safe_next(form.get("next", ""))
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        if not nonce or not self._check("login", nonce, form.get("csrf", "")):
            return await self._login_refused(request, "the login form was stale or not this site's (CSRF)",
                                             "This login form has expired; log in again.", 403, back)
        token = await self.tokens.verify(form.get("token", "").strip())
        if token is None:
            return await self._login_refused(request, "unknown or revoked token", NOT_ACCEPTED, 401, back)
        expires = int((self.now() + timedelta(seconds=SESSION_LIFETIME)).timestamp())
        session_id = f"{token.id}.{expires}.{secrets.token_urlsafe(12)}"
        response = RedirectResponse(back or "approvals", status_code=303, headers=SECURITY_HEADERS)
        response.set_cookie(SESSION_COOKIE, f"{session_id}.{self.signer.mac('session', session_id)}",
                            max_age=int(SESSION_LIFETIME), path="/", secure=self.secure, httponly=True,
                            samesite="strict")
        response.delete_cookie(LOGIN_COOKIE, path="/login", secure=self.secure, httponly=True, samesite="strict")
        log.info("approvals: %s logged in (scope %s)", token.name, token.scope)
        return response

    def _login_form(self, refused: str | None = None, status: int = 200, back: str | None = None) -> Response:
        nonce = secrets.token_urlsafe(16)
        response = self._page("login.html", {"refused": refused, "csrf": self.signer.mac("login", nonce),
                                             "next": back}, status=status)
        response.set_cookie(LOGIN_COOKIE, nonce, max_age=LOGIN_FORM_LIFETIME, path="/login", secure=self.secure,
                            httponly=True, samesite="strict")
        return response

    async def _login_refused(self, request: Request, reason: str, shown: str, status: int,
                             back: str | None) -> Response:
        from ..event_types import WebLoginRefused

        client = request.client
        try:
            await self.executor.rt.events.emit("web.login_refused", WebLoginRefused(
                reason=reason, peer=f"{client.host}:{client.port}" if client else None), source="web")
        except Exception:   # recording the refusal must not turn it into a 500
            log.exception("could not record web.login_refused")
        return self._login_form(shown, status, back)

    async def logout(self, request: Request) -> Response:
        session = await self._session(request)
        form = await self._form(request)
        if session is not None and not self._csrf_ok(session, form):
            return self._message("Refused", "the form's CSRF token is missing or wrong; reload the page",
                                 "refused", status=403)
        response = RedirectResponse("login", status_code=303, headers=SECURITY_HEADERS)
        response.delete_cookie(SESSION_COOKIE, path="/", secure=self.secure, httponly=True, samesite="strict")
        return response

    async def _session(self, request: Request) -> Session | None:
        """The request's session: its cookie's signature holds, it has not expired, and its token
        is still active (one read per request)."""
        token_id, _, rest = request.cookies.get(SESSION_COOKIE, "").partition(".")
        expires, _, rest = rest.partition(".")
        nonce, _, mac = rest.partition(".")
        session_id = f"{token_id}.{expires}.{nonce}"
        if not (number(token_id) is not None and number(expires) is not None and nonce
                and self._check("session", session_id, mac)):
            return None
        at = datetime.fromtimestamp(int(expires), timezone.utc)
        if self.now() >= at:
            return None
        row = await self.executor.rt.store.fetchone(
            "SELECT name, scope FROM tokens WHERE id = ? AND revoked_at IS NULL", (int(token_id),))
        return Session(session_id, int(token_id), row["name"], row["scope"], at) if row else None

    def _csrf(self, session: Session) -> str:
        return self.signer.mac("csrf", session.id)

    def _csrf_ok(self, session: Session, form: dict[str, str]) -> bool:
        return self._check("csrf", session.id, form.get("csrf", ""))

    def _check(self, purpose: str, text: str, mac: str) -> bool:
        """`Signer.check` for a value from the client, which may be anything (compare_digest takes
        ASCII text only)."""
        return bool(mac) and mac.isascii() and self.signer.check(purpose, text, mac)

    # -- the approvals page ------------------------------------------------------------------

    async def approvals(self, request: Request) -> Response:
        """GET: pending halts and recent answers; POST: answer one (operate scope, CSRF token)."""
        from ..mcp.auth import covers

        session = await self._session(request)
        if request.method != "POST":
            if session is None:
                return RedirectResponse("login", status_code=303, headers=SECURITY_HEADERS)
            pending = list(reversed(await self.halts.list("pending")))   # oldest first: it expires first
            recent = [h for h in await self.halts.list(limit=RECENT * 5) if h.status != "pending"][:RECENT]
            return self._page("approvals.html", {
                "pending": pending, "recent": recent, "can_answer": covers(session.scope, "operate")},
                session=session)
        form = await self._form(request)
        option = form.get("option", "")
        halt_id = number(form.get("halt_id", ""))
        if session is None:
            return self._message("Log in first", "your session has ended; log in again", "refused",
                                 status=403, back=("login", "Log in"))
        if not self._csrf_ok(session, form):
            reason, status = "the form's CSRF token is missing or wrong; nothing was answered (reload the page)", 403
        elif not covers(session.scope, "operate"):
            reason, status = f"token {session.name!r} has the {session.scope!r} scope; answering needs 'operate'", 403
        elif halt_id is None or not option:
            reason, status = "the form names no halt or no option", 400
        else:
            return await self._answer(halt_id, option, "web", session.name, session=session)
        await self._refuse(halt_id, option or "?", "web", session.name, reason)
        return self._message("Refused", reason, "refused", status=status, session=session,
                             back=("approvals", "Back to approvals"))

    # -- answering ---------------------------------------------------------------------------

    async def _answer(self, halt_id: int, option: str, channel: str, identity: str, *,
                      root: str = "", session: Session | None = None) -> Response:
        """The one answer path (`Answers.answer`); the page says what came of it."""
        back = ("approvals", "Back to approvals") if session is not None else None
        try:
            result = await self.answers.answer(halt_id, option, channel=channel, identity=identity)
        except HaltError as e:   # already recorded by the answer path
            halt = await self.halts.get(halt_id)
            return self._message("Refused", str(e), "refused", halt=halt, status=409, root=root,
                                 session=session, back=back)
        except Exception:   # the daemon never breaks on one request
            log.exception("answering halt #%d from the %s channel failed", halt_id, channel)
            return self._message("Error", "the answer could not be completed; see the agent's log",
                                 "refused", status=500, root=root, session=session, back=back)
        halt = await self.halts.get(halt_id)
        good, text = outcome(option, result)
        return self._message(f"Answered: {option}", text, "ok" if good else "refused", halt=halt,
                             root=root, session=session, back=back)

    async def _refuse(self, halt_id: int | None, option: str, channel: str, by: str, reason: str) -> None:
        """Record a refused answer (`halt.answer_refused`); the caller shows the reason."""
        try:
            await self.answers.refuse(halt_id, option, channel, by, reason)
        except HaltError:
            pass

    def _closed(self, halt: Halt) -> str:
        from ..messages import halt_closed

        return halt_closed(halt, self.executor.host)[1]

    # -- rendering ---------------------------------------------------------------------------

    def _render(self, template: str, context: dict[str, Any]) -> str:
        if self._env is None:
            import jinja2

            from ..messages import all_steps

            env = jinja2.Environment(loader=jinja2.PackageLoader("fazt_agent.web", "templates"), autoescape=True,
                                     undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
            env.globals.update(when=when, all_steps=all_steps, closed=self._closed, until=self._until)
            self._env = env
        return self._env.get_template(template).render(**context)

    def _until(self, at: datetime) -> str:
        left = (at - self.now()).total_seconds()
        return f"in {format_duration(left)}" if left > 0 else f"{format_duration(-left)} ago"

    def _page(self, template: str, context: dict[str, Any], *, status: int = 200,
              root: str = "", session: Session | None = None) -> HTMLResponse:
        """An HTML page with the security headers. `root` leads from the page's URL to the root of
        the control plane (relative URLs work behind a proxy that serves it under a path)."""
        html = self._render(template, {"host": self.executor.host, "root": root, "session": session,
                                       "csrf": self._csrf(session) if session else "", **context})
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def _message(self, heading: str, text: str, tone: str, *, halt: Halt | None = None,
                 status: int = 200, root: str = "", session: Session | None = None,
                 back: tuple[str, str] | None = None) -> HTMLResponse:
        return self._page("message.html", {"heading": heading, "text": text, "tone": tone, "halt": halt,
                                                    "back": back}, status=status, root=root, session=session)

    async def css(self, request: Request) -> Response:
        if self._css is None:
            self._css = resources.files("fazt_agent.web").joinpath("static/approvals.css").read_bytes()
        return Response(self._css, media_type="text/css", headers={
            **SECURITY_HEADERS, "Cache-Control": "max-age=3600"})

    async def _form(self, request: Request) -> dict[str, str]:
        """An urlencoded form's fields (the first value of each); empty when the body is not one,
        or larger than MAX_FORM."""
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
            return {}
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM:
                return {}
        try:
            fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
        except (UnicodeDecodeError, ValueError):
            return {}
        return {k: v[0] for k, v in fields.items()}


def number(text: str) -> int | None:
    """A positive decimal of at most 18 ASCII digits (an id, a timestamp), or None."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


def outcome(option: str, result: dict[str, Any]) -> tuple[bool, str]:
    """What came of an answer (`Executor.answer`'s result), in a sentence; False when the plan failed
    or did not run."""
    if result.get("replanned"):
        return False, (f"Approved, but the plan changed since it was proposed ({result.get('message')}); "
                       f"a new approval request is halt #{result.get('new_halt_id')}.")
    if result.get("executed"):
        ok = bool(result.get("ok"))
        return ok, f"{'Done' if ok else 'FAILED'}: {result.get('message') or result.get('state')}"
    if option == "approve":
        return False, f"Approved, but not run: {result.get('message') or 'see the agent log'}"
    if result.get("ask_again_at"):
        return True, f"Snoozed: the agent decides again at {when(parse_iso(result['ask_again_at']))}."
    if option == "deny":
        return True, "Denied: nothing runs."
    return True, f"Answered '{option}'."


_NEXT = re.compile(r"[A-Za-z0-9_.~-]+(?:/[A-Za-z0-9_.~%-]+)*/?(?:\?[A-Za-z0-9_.~%=&+-]*)?")


def safe_next(value: str) -> str | None:
    """Where a login goes next: a page of this control plane as a relative path (`trends/disk?range=24h`,
    how its links are written, so a reverse proxy's prefix is kept), or None. Never another site
    (`//host`, `https:`), never up and out (`..`)."""
    if value == "./" or value.startswith("./?") and _NEXT.fullmatch("x" + value[2:]):   # the overview
        return value
    if not value or len(value) > 500 or not _NEXT.fullmatch(value):
        return None
    if any(part in (".", "..") for part in value.split("?", 1)[0].split("/")):
        return None
    return value
