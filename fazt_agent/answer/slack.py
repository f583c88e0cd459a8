"""Slack answers (issue 12): a halt is posted with a button per option; a click answers it.

Out (`SlackChannel`, an answer channel of the outbox): a halt's request is `chat.postMessage` to
`[slack] channel` with Block Kit — the title, the plan (summary, risk, every step, cut to Slack's
limits) and one button per option (`action_id` `halt:OPTION`, `value` `HALT_ID:OPTION`). A
reminder is a reply in the request's thread, with the buttons again. When the halt is answered
(anywhere: the CLI, a link, email...), expires or is withdrawn, `chat.update` replaces the buttons
of everything posted about it with the outcome ("approved by alice via email at T"), so no one
clicks a stale button. What was posted is kept as the row's ref, `CHANNEL_ID:TS`. A Slack API error
or an unreachable Slack is a NotifyError: the outbox retries it.

In (`SlackListener`, started by the daemon, which never waits on Slack):
- Socket Mode, with `[slack] app_token`: `apps.connections.open` gives a websocket URL; each
  envelope is acknowledged at once (Slack wants it within 3 s), then handled in a task of its own.
  Delivery is at least once: an envelope already seen (`inbound`, by envelope_id) is acknowledged
  and dropped. A dropped socket reconnects with backoff, 1 s to 5 min (`slack.disconnected`, once
  per outage); Slack's own "disconnect" (a refresh) reconnects at once.
- The HTTP interactivity endpoint `POST /slack/interactivity`, with `[slack] signing_secret`:
  `X-Slack-Signature` over the raw body (`SignatureVerifier`), a timestamp at most 5 min away.
  A forged, altered or stale request gets 401 and answers nothing; a verified one gets 200 at once
  and is handled in a task.
A click answers through `Answers.answer` as the Slack user who clicked: only the user IDs of
`[[owners]] slack` may answer; anything else (not an owner, already answered, expired) is
`halt.answer_refused` (channel slack) and the user sees why in a message only they can see
(`chat.postEphemeral`). A payload this agent cannot read (not JSON, fields missing, an action or
value it never posted) answers nothing and is `slack.refused`.

The socket is aiohttp's websocket client driven here rather than slack_sdk's SocketModeClient:
that client retries a failed connect every 5 s forever inside `connect()` and reports neither a
drop nor a recovery, where the daemon wants backoff to 5 min and an event per outage. The SDK
still opens the connection (`apps.connections.open` through `AsyncWebClient`) and shapes the
envelopes (`SocketModeRequest`, `SocketModeResponse`).

Tokens and the signing secret are never logged; neither are payloads (they carry Slack's
verification token) nor the websocket URL (it carries a ticket).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from .. import messages
from ..event_types import SlackDisconnected, SlackRefused
from ..halt.store import HaltError
from ..notify import NotifyError, Outgoing
from ..units import format_duration

if TYPE_CHECKING:
    from aiohttp import ClientSession, ClientWebSocketResponse
    from slack_sdk.web.async_client import AsyncWebClient
    from starlette.types import Receive, Scope, Send

    from ..config import Config, SlackSection
    from ..halt.store import Halt

log = logging.getLogger(__name__)

CHANNEL = "slack"
ACTION_PREFIX = "halt:"
API_TIMEOUT = 20                 # one Web API call (below the outbox's 60 s per attempt)
HEARTBEAT = 30.0                 # websocket pings; a link that stops answering them is closed and reopened
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 300.0
HEALTHY = 60.0                   # a session that lasted this long resets the backoff
STOP_GRACE = 2.0                 # how long stopping waits for a click being handled
MAX_AGE = 300                    # a signed request older (or newer) than 5 min is a replay
MAX_BODY = 1024 * 1024
# Block Kit's limits
HEADER_MAX = 150
SECTION_MAX = 3000
BUTTON_TEXT_MAX = 75
STEP_SECTIONS = 4                # the plan's text in at most this many sections (of the 50 blocks a message may have)
USER = re.compile(r"^[UW][A-Z0-9]{2,20}$")
VALUE = re.compile(r"^(\d{1,18}):(.{1,64})$", re.S)
HINTS = {
    "invalid_auth": "check [slack] bot_token (an xoxb- token of the app)",
    "not_authed": "check [slack] bot_token (an xoxb- token of the app)",
    "token_revoked": "the token was revoked: install the app again and update [slack] bot_token",
    "account_inactive": "the token was revoked: install the app again and update [slack] bot_token",
    "channel_not_found": "check [slack] channel (a channel ID such as C0123ABCD, or its name)",
    "not_in_channel": "invite the app to [slack] channel (/invite @APP in that channel)",
    "is_archived": "[slack] channel is archived",
    "missing_scope": "add the scope the app lacks in its OAuth settings and install it again",
}


def _quiet_sdk() -> None:
    """slack_sdk's debug lines show response bodies: the websocket URL with its ticket."""
    logging.getLogger("slack_sdk").setLevel(max(logging.INFO, logging.getLogger().level))


def web_client(token: str | None, section: SlackSection) -> AsyncWebClient:
    from slack_sdk.web.async_client import AsyncWebClient

    return AsyncWebClient(token=token, base_url=section.api_url, timeout=API_TIMEOUT)


async def call(client: AsyncWebClient, method: str, hint_token: str = "bot_token", **kwargs: Any) -> Any:
    """One Web API call.

    Raises:
        NotifyError: Slack said no (its error code and what to do about it) or could not be
            reached; never the token.
    """
    import aiohttp
    from slack_sdk.errors import SlackApiError, SlackClientError

    try:
        return await client.api_call(method, json=kwargs) if kwargs else await client.api_call(method)
    except SlackApiError as e:
        error = str(e.response.get("error") or f"HTTP {e.response.status_code}")[:100]
        if error == "ratelimited":
            after = str((e.response.headers or {}).get("Retry-After", ""))
            wait = f" (Slack asks to wait {format_duration(float(after))})" if after.isdigit() else ""
            raise NotifyError(f"Slack {method}: ratelimited{wait}") from None
        hint = HINTS.get(error, "")
        if error == "missing_scope" and e.response.get("needed"):
            hint = f"the app needs the {str(e.response['needed'])[:80]} scope: add it and install the app again"
        if hint_token != "bot_token":
            hint = hint.replace("[slack] bot_token (an xoxb- token of the app)",
                                "[slack] app_token (an xapp- token with connections:write)")
        raise NotifyError(f"Slack {method}: {error}" + (f": {hint}" if hint else "")) from None
    except (aiohttp.ClientError, SlackClientError, OSError, TimeoutError) as e:
        raise NotifyError(f"Slack {method}: cannot reach {client.base_url} ({_describe(e)})") from None


def _describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "no answer in time"
    return f"{type(e).__name__}: {e}"[:300] if str(e) else type(e).__name__


def parse_ref(ref: str) -> tuple[str, str]:
    channel, _, ts = ref.partition(":")
    return channel, ts


# -- what is posted --------------------------------------------------------------------------

def escape(text: str) -> str:
    """Slack's mrkdwn treats `<...>` as links and mentions (`<!channel>`): a file name never pings anyone."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def plain(text: str, limit: int) -> dict[str, Any]:
    return {"type": "plain_text", "text": cut(" ".join(text.split()) or "-", limit), "emoji": False}


def section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": cut(text, SECTION_MAX)}}


def step_sections(halt: Halt) -> list[dict[str, Any]]:
    """The halt's whole text (every step: `messages.all_steps`), preformatted, in sections of at most
    3000 characters; what does not fit in STEP_SECTIONS is named, with where to read it."""
    room = SECTION_MAX - 8
    chunks, current = [], ""
    lines = escape(messages.all_steps(halt)).splitlines()
    for i, line in enumerate(lines):
        line = cut(line, room)
        if len(current) + len(line) + 1 > room:
            chunks.append(current)
            current = ""
            if len(chunks) == STEP_SECTIONS:
                rest = len(lines) - i
                return [section(f"```{c}```") for c in chunks] + [{"type": "context", "elements": [{
                    "type": "mrkdwn", "text": f"… and {rest} more line{'s' if rest != 1 else ''}: "
                                              f"`fazt-agent halts show {halt.id}`"}]}]
        current = f"{current}\n{line}" if current else line
    if current:
        chunks.append(current)
    return [section(f"```{c}```") for c in chunks]


def buttons(halt: Halt) -> dict[str, Any]:
    """One button per option of the halt: approve is primary, deny is danger."""
    elements = []
    for option in halt.options[:25]:
        button: dict[str, Any] = {"type": "button", "action_id": f"{ACTION_PREFIX}{option}"[:255],
                                  "value": f"{halt.id}:{option}", "text": plain(option, BUTTON_TEXT_MAX)}
        if option == "approve":
            button["style"] = "primary"
        elif option == "deny":
            button["style"] = "danger"
        elements.append(button)
    return {"type": "actions", "block_id": f"halt-{halt.id}", "elements": elements}


def outcome(halt: Halt) -> str:
    """What became of a halt, in one line: "approved by alice via email at 2026-01-02 10:04 UTC"."""
    when = f"{halt.answered_at:%Y-%m-%d %H:%M} UTC" if halt.answered_at else "?"
    if halt.status == "answered":
        verb = {"approve": "approved", "deny": "denied"}.get(halt.answer or "", f"answered '{halt.answer}'")
        return f"{verb} by {halt.answered_by_via} at {when}"
    if halt.status == "expired":
        return (f"expired: default {halt.default_option} applied (no answer by "
                f"{halt.expires_at:%Y-%m-%d %H:%M} UTC)")
    if halt.status == "cancelled":
        return f"withdrawn: {halt.note or 'no reason given'} (at {when})"
    return halt.status


def state_block(halt: Halt) -> dict[str, Any]:
    """The buttons while the halt waits; its outcome once it is over."""
    if halt.status == "pending":
        return buttons(halt)
    return section(f"*{escape(outcome(halt))}*")


def halt_blocks(halt: Halt) -> list[dict[str, Any]]:
    """The message of a halt: title, plan, steps, then its buttons or its outcome."""
    plan = halt.plan
    facts = [f"*Plan:* {escape(plan.summary)}",
             f"*Risk:* {escape(plan.risk)}, {'reversible' if plan.reversible else 'not reversible'}"
             + (", deletes data" if plan.deletes else "")]
    blocks = [{"type": "header", "text": plain(halt.title, HEADER_MAX)}, section("\n".join(facts)),
              *step_sections(halt), state_block(halt)]
    if halt.status == "pending":
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": escape(
            f"Halt {halt.id}: '{halt.default_option}' applies if no one answers by "
            f"{halt.expires_at:%Y-%m-%d %H:%M} UTC. Or: fazt-agent halts answer {halt.id} OPTION")}]})
    return blocks


def reminder_blocks(halt: Halt) -> list[dict[str, Any]]:
    line = (f"Reminder: halt {halt.id} expires at {halt.expires_at:%Y-%m-%d %H:%M} UTC; "
            f"then '{halt.default_option}' applies.")
    return [section(escape(line)), state_block(halt)]


class SlackChannel:
    """The outgoing side: each halt notice, to `[slack] channel` (the outbox's answer channel)."""

    name = CHANNEL

    def __init__(self, config: Config):
        self.config = config
        self.section = config.file.slack
        self._client: AsyncWebClient | None = None

    @property
    def client(self) -> AsyncWebClient:
        """Made at the first send: a CLI command that sends nothing never loads slack_sdk and aiohttp."""
        if self._client is None:
            _quiet_sdk()
            self._client = web_client(self.section.bot_token, self.section)
        return self._client

    async def send(self, note: Outgoing) -> str | None:
        """Post, thread or update `note`; returns the ref of what was posted (`CHANNEL:TS`), or None
        for an update.

        Raises:
            NotifyError: Slack refused it (its error, and what to check) or could not be reached.
        """
        halt = note.halt
        if halt is None:
            return None
        if note.kind in ("answered", "expired", "cancelled"):
            await self.update(note, halt)
            return None
        if not self.section.channel:
            raise NotifyError("[slack] channel is not set: name the channel halts are posted to "
                              "(e.g. channel = \"C0123ABCD\") in config.toml")
        title = cut(" ".join(note.title.split()), 3000)
        if note.kind == "reminder" and note.refs:
            channel, ts = parse_ref(note.refs[0])
            posted = await call(self.client, "chat.postMessage", channel=channel, thread_ts=ts, text=title,
                                blocks=reminder_blocks(halt), unfurl_links=False, unfurl_media=False)
        else:   # a request (or a reminder whose request never got through: the whole message)
            posted = await call(self.client, "chat.postMessage", channel=self.section.channel, text=title,
                                blocks=halt_blocks(halt), unfurl_links=False, unfurl_media=False)
        return f"{posted['channel']}:{posted['ts']}"

    async def update(self, note: Outgoing, halt: Halt) -> None:
        """Replace the buttons of everything posted about the halt (the request, its reminders) with
        its outcome. A message someone deleted is left alone."""
        text = cut(f"{halt.title}: {outcome(halt)}", 3000)
        for i, ref in enumerate(note.refs):
            channel, ts = parse_ref(ref)
            blocks = halt_blocks(halt) if i == 0 else reminder_blocks(halt)
            try:
                await call(self.client, "chat.update", channel=channel, ts=ts, text=text, blocks=blocks)
            except NotifyError as e:
                if str(e).startswith("Slack chat.update: message_not_found"):
                    log.info("slack: message %s of halt #%d is gone; not updated", ref, halt.id)
                    continue
                raise


# -- what comes back -------------------------------------------------------------------------

class Malformed(Exception):
    """A payload that answers nothing: `reason` for the audit trail."""

    def __init__(self, reason: str, user: str | None = None):
        super().__init__(reason)
        self.reason, self.user = reason, user


@dataclass(frozen=True)
class Click:
    """One click on a halt's button: who, which halt and option, where (for a reply only they see)."""

    user: str
    halt_id: int
    option: str
    channel: str | None
    thread_ts: str | None


def clicks(payload: Any) -> list[Click]:
    """The halt buttons clicked in an interactive payload.

    Raises:
        Malformed: not a `block_actions` payload, no user, no actions, or an action or value this
            agent never posts (`halt:OPTION` and `HALT_ID:OPTION`, the same option).
    """
    if not isinstance(payload, dict):
        raise Malformed(f"the payload is a JSON {type(payload).__name__}, not an object")
    user_obj = payload.get("user")
    user = user_obj.get("id") if isinstance(user_obj, dict) else None
    user = user if isinstance(user, str) and USER.match(user) else None
    kind = payload.get("type")
    if kind != "block_actions":
        raise Malformed(f"a payload of type {str(kind)[:40]!r}: only clicks on a halt's buttons (block_actions) "
                        "answer", user)
    if user is None:
        raise Malformed("the payload names no Slack user (user.id)")
    actions = payload.get("actions")
    if not isinstance(actions, list) or not actions:
        raise Malformed("the payload has no actions", user)
    if len(actions) > 5:
        raise Malformed(f"the payload has {len(actions)} actions; a click is one", user)
    channel_obj = payload.get("channel")
    container = payload.get("container") if isinstance(payload.get("container"), dict) else {}
    channel = (channel_obj.get("id") if isinstance(channel_obj, dict) else None) or container.get("channel_id")
    thread = container.get("thread_ts") or container.get("message_ts")
    found = []
    for action in actions:
        if not isinstance(action, dict):
            raise Malformed("an action is not an object", user)
        action_id, value = action.get("action_id"), action.get("value")
        if not isinstance(action_id, str) or not action_id.startswith(ACTION_PREFIX):
            raise Malformed(f"unknown action {str(action_id)[:80]!r}: this agent's buttons are halt:OPTION", user)
        m = VALUE.match(value) if isinstance(value, str) else None
        if m is None:
            raise Malformed(f"the value {str(value)[:80]!r} of action {action_id[:80]!r} is not HALT_ID:OPTION", user)
        if m[2] != action_id[len(ACTION_PREFIX):]:
            raise Malformed(f"action {action_id[:80]!r} carries the value {value[:80]!r} of another option", user)
        found.append(Click(user, int(m[1]), m[2], channel if isinstance(channel, str) else None,
                           thread if isinstance(thread, str) else None))
    return found


class SlackListener:
    """The daemon's incoming side: `start` returns at once; Socket Mode runs as a task, and
    `endpoint()` is the ASGI app of /slack/interactivity."""

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._session: ClientSession | None = None
        self.connected = asyncio.Event()   # set while a Socket Mode session is up (after Slack's hello)

    async def start(self, answers: Any, config: Config) -> None:
        """Start Socket Mode when `[slack] app_token` is set; `answers` is the daemon's
        `core.Answers` (typed loosely: core imports the executor, which imports the channels)."""
        self.answers = answers
        self.config = config
        self.section = config.file.slack
        self.events = answers.executor.rt.events
        self.bot = web_client(self.section.bot_token, self.section) if self.section.bot_token else None
        _quiet_sdk()
        if self.section.app_token:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="slack listener")

    def endpoint(self) -> SlackInteractivity | None:
        """The /slack/interactivity endpoint, when `[slack] signing_secret` is set."""
        return SlackInteractivity(self) if self.section.signing_secret else None

    async def stop(self) -> None:
        """Close the socket; a click being handled gets STOP_GRACE seconds to finish (an approved plan
        cut short is finished by the next start's reconciler)."""
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=STOP_GRACE)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro, name="slack click")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- Socket Mode -----------------------------------------------------------------------

    async def _run(self) -> None:
        """Sessions, one after another: at once after Slack asked to reconnect or a session that
        lasted, else with backoff; `slack.disconnected` once per outage."""
        failures, down = 0, False
        while not self._stopping.is_set():
            started: list[float | None] = [None]
            try:
                await self._connect_once(started)
                error = None   # Slack asked us to reconnect (a refresh)
            except asyncio.CancelledError:
                raise
            except Exception as e:   # any failure of Slack or the link: reconnect
                error = str(e) if isinstance(e, NotifyError) else _describe(e)
            finally:
                self.connected.clear()
            lasted = time.monotonic() - started[0] if started[0] is not None else None
            if lasted is not None:
                down = False
                if lasted >= HEALTHY:
                    failures = 0
            if error is None:   # Slack asked for a new connection (a refresh): at once, unless it keeps asking
                if lasted is not None and lasted >= 1.0:
                    continue
                error = "Slack asked to reconnect right after connecting"
            wait = 0.0 if failures == 0 and lasted is not None else min(BACKOFF_FIRST * 2 ** max(failures - 1, 0),
                                                                       BACKOFF_MAX)
            failures += 1
            log.warning("slack: Socket Mode: %s; reconnecting %s", error,
                        f"in {format_duration(wait)}" if wait else "now")
            if not down:
                down = True
                try:
                    await self.events.emit("slack.disconnected", SlackDisconnected(error=error[:500], retry_in_s=wait),
                                           source="slack")
                except Exception:
                    log.exception("slack: could not record the disconnection")
            try:
                await asyncio.wait_for(self._stopping.wait(), wait)
            except TimeoutError:
                pass

    async def _connect_once(self, started: list[float | None]) -> None:
        """One session: a fresh URL from apps.connections.open, then envelopes until the socket
        closes (raises) or Slack asks for a new connection (returns)."""
        import aiohttp

        opened = await call(web_client(self.section.app_token, self.section), "apps.connections.open",
                            hint_token="app_token")
        url = opened.get("url")
        if not isinstance(url, str) or not url.startswith(("wss://", "ws://")):
            raise NotifyError("Slack apps.connections.open gave no websocket URL")
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        # ws_close: a stop waits at most 1 s for Slack's answer to our close
        async with self._session.ws_connect(url, heartbeat=HEARTBEAT, max_msg_size=MAX_BODY,
                                            timeout=aiohttp.ClientWSTimeout(ws_close=1.0)) as ws:
            while True:
                message = await ws.receive()
                if message.type == aiohttp.WSMsgType.TEXT:
                    if await self._envelope(ws, message.data, started) == "disconnect":
                        return
                elif message.type == aiohttp.WSMsgType.BINARY:
                    await self._refuse("a binary websocket message: envelopes are JSON text", "socket")
                elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                    raise ConnectionError(f"Slack closed the socket (code {ws.close_code})")
                elif message.type == aiohttp.WSMsgType.ERROR:
                    raise ConnectionError(f"the socket failed: {_describe(ws.exception() or Exception('?'))}")

    async def _envelope(self, ws: ClientWebSocketResponse, text: str, started: list[float | None]) -> str | None:
        """Acknowledge an envelope at once, then handle it in a task; 'disconnect' when Slack asks
        for a new connection."""
        from slack_sdk.socket_mode.request import SocketModeRequest
        from slack_sdk.socket_mode.response import SocketModeResponse

        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            await self._refuse("an envelope that is not JSON", "socket")
            return None
        if not isinstance(data, dict):
            await self._refuse("an envelope that is not a JSON object", "socket")
            return None
        kind = data.get("type")
        if kind == "hello":
            started[0] = time.monotonic()
            self.connected.set()
            log.info("slack: Socket Mode connected")
            return None
        if kind == "disconnect":
            log.info("slack: Slack asks to reconnect (%s)", str(data.get("reason"))[:80])
            return "disconnect"
        envelope_id = data.get("envelope_id")
        if not isinstance(envelope_id, str) or not envelope_id or len(envelope_id) > 200:
            await self._refuse(f"an envelope of type {str(kind)[:40]!r} without an envelope_id", "socket")
            return None
        await ws.send_str(json.dumps(SocketModeResponse(envelope_id=envelope_id).to_dict()))   # within 3 s
        payload = data.get("payload")
        request = SocketModeRequest.from_dict(data) if isinstance(payload, dict) else None
        self.spawn(self._socket_request(envelope_id, str(kind)[:40], request.payload if request else payload))
        return None

    async def _socket_request(self, envelope_id: str, kind: str, payload: Any) -> None:
        """One acknowledged envelope: dropped when seen before, else read and answered."""
        try:
            if await self.answers.seen(CHANNEL, f"envelope:{envelope_id}"):
                log.info("slack: envelope %s delivered again; handled before", envelope_id[:80])
                return
            if kind in ("events_api", "slash_commands"):
                log.info("slack: an envelope of type %s ignored: this app answers button clicks", kind)
                return
            if kind != "interactive":
                raise Malformed(f"an envelope of type {kind!r}: this app answers button clicks (interactive)")
            if payload is None:
                raise Malformed("an interactive envelope without a payload")
            found = clicks(payload)
        except Malformed as m:
            await self._refuse(m.reason, "socket", user=m.user, envelope_id=envelope_id)
            return
        except Exception as e:   # a bug must not stop the listener
            log.exception("slack: an envelope could not be handled")
            await self._refuse(f"the envelope could not be handled ({type(e).__name__})", "socket",
                               envelope_id=envelope_id)
            return
        await self.answer(found)

    # -- answering -------------------------------------------------------------------------

    async def answer(self, found: list[Click]) -> None:
        """Answer each click as its user; a refusal (recorded by the answer path) is shown to them alone."""
        for click in found:
            try:
                await self.answers.answer(click.halt_id, click.option, channel=CHANNEL, identity=click.user)
            except HaltError as e:
                await self._tell(click, f"Not taken: {e}.")
                continue
            except Exception as e:
                log.exception("slack: the answer of %s to halt #%d failed", click.user, click.halt_id)
                await self._tell(click, f"Not taken: the agent failed to answer ({type(e).__name__}); see its log.")
                continue
            log.info("slack: halt #%d answered %r by %s", click.halt_id, click.option, click.user)

    async def _tell(self, click: Click, text: str) -> None:
        if self.bot is None or click.channel is None:
            return
        args: dict[str, Any] = {"channel": click.channel, "user": click.user, "text": cut(text, 3000)}
        if click.thread_ts:
            args["thread_ts"] = click.thread_ts
        try:
            await call(self.bot, "chat.postEphemeral", **args)
        except NotifyError as e:
            log.warning("slack: could not tell %s why their click was not taken: %s", click.user, e)

    async def _refuse(self, reason: str, via: str, *, status: int | None = None, user: str | None = None,
                      envelope_id: str | None = None, peer: str | None = None) -> None:
        log.info("slack: refused (%s): %s", via, reason)
        try:
            await self.events.emit("slack.refused", SlackRefused(
                reason=reason[:500], via=via, status=status, user=user,
                envelope_id=envelope_id[:200] if envelope_id else None, peer=peer), source="slack")
        except Exception:   # recording the refusal must not stop the listener nor turn it into a 500
            log.exception("slack: could not record slack.refused")


class Refused(Exception):
    def __init__(self, status: int, reason: str, user: str | None = None):
        super().__init__(reason)
        self.status, self.reason, self.user = status, reason, user


class SlackInteractivity:
    """ASGI app for POST /slack/interactivity: Slack's signed interactive payloads."""

    def __init__(self, listener: SlackListener):
        from slack_sdk.signature import SignatureVerifier

        self.listener = listener
        assert listener.section.signing_secret
        self.verifier = SignatureVerifier(listener.section.signing_secret)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        client = scope.get("client")
        peer = f"{client[0]}:{client[1]}" if client else None
        try:
            if scope["method"] != "POST":
                raise Refused(405, f"method {scope['method']} not allowed: Slack POSTs its payloads")
            body = await _read(scope, receive)
            self.verify(scope, body)
            payload, key = form_payload(body)
            try:
                found = clicks(payload)
            except Malformed as m:
                raise Refused(400, m.reason, m.user) from None
        except Refused as e:
            await self.listener._refuse(e.reason, "http", status=e.status, user=e.user, peer=peer)
            await _text(send, e.status, e.reason if e.status != 401 else "the request's signature does not verify")
            return
        await _text(send, 200, "")
        self.listener.spawn(self._answer(key, found))

    async def _answer(self, key: str, found: list[Click]) -> None:
        try:
            if await self.listener.answers.seen(CHANNEL, key):
                log.info("slack: interaction %s delivered again; handled before", key[:80])
                return
        except Exception:   # the store failed: nothing answered; the user may click again
            log.exception("slack: could not record interaction %s", key[:80])
            return
        await self.listener.answer(found)

    def verify(self, scope: Scope, body: bytes) -> None:
        """The request is Slack's: its signature covers the body and the timestamp, which is at most
        MAX_AGE away.

        Raises:
            Refused: 401, with what failed.
        """
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        signature, timestamp = headers.get("x-slack-signature"), headers.get("x-slack-request-timestamp")
        if not signature or not timestamp:
            raise Refused(401, "no X-Slack-Signature and X-Slack-Request-Timestamp: not from Slack")
        if not timestamp.isdigit() or len(timestamp) > 12:
            raise Refused(401, f"the request timestamp {timestamp[:20]!r} is not a Unix time")
        expected = self.verifier.generate_signature(timestamp=timestamp, body=body) or ""
        if not hmac.compare_digest(expected.encode(), signature.encode("latin-1")):
            raise Refused(401, "the signature does not verify: forged, altered on the way, or signed with another "
                               "secret (check [slack] signing_secret)")
        age = time.time() - int(timestamp)
        if abs(age) > MAX_AGE:
            raise Refused(401, f"the request was signed {format_duration(abs(age))} "
                               f"{'ago' if age > 0 else 'ahead'}; more than {format_duration(MAX_AGE)} is refused "
                               "(a replay, or a clock that is wrong)")


def form_payload(body: bytes) -> tuple[Any, str]:
    """The JSON of the `payload` form field, and the key of this interaction for deduplication.

    Raises:
        Refused: 400, not a form with one `payload` of JSON.
    """
    try:
        form = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise Refused(400, "the body is not a form (application/x-www-form-urlencoded, UTF-8)") from None
    values = form.get("payload", [])
    if len(values) != 1:
        raise Refused(400, "the form has no payload field" if not values else "the form has several payload fields")
    try:
        payload = json.loads(values[0])
    except (ValueError, RecursionError):
        raise Refused(400, "the payload is not JSON") from None
    trigger = payload.get("trigger_id") if isinstance(payload, dict) else None
    key = f"trigger:{trigger}" if isinstance(trigger, str) and trigger else \
        "body:" + hashlib.sha256(values[0].encode()).hexdigest()
    return payload, key


async def _read(scope: Scope, receive: Receive) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Refused(400, "the client disconnected before the body was complete")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise Refused(413, "body over the 1 MiB limit")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _text(send: Send, status: int, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
