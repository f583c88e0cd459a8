"""`http`: does a URL answer, with an expected status and text, fast enough?

An unanswered request, an unexpected status or missing text is critical; slowness is judged by
the latency thresholds. `latency_ms` is the time until the response headers arrived. The body is
untrusted: it never goes into the message, only a short snippet into details when the text
check fails, and it is read only up to a limit: the first MiB when `expect_text` is set, else
only a small body that has fully arrived (so the connection can be kept), none otherwise.

All http checks of a Pulse share one pool of keep-alive connections (`http_client.HttpPool`,
one TLS context per `verify_tls` setting), closed with the Pulse; the runner bounds how many run
at once, by origin too (`lane`), so one server that never answers cannot hold every slot.
"""

from __future__ import annotations

import asyncio
import re
import time
from functools import cached_property
from http import HTTPStatus
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from ..units import Duration
from .base import Check, CheckConfig, CheckContext, CheckResult, check, judge, threshold_pair
from .http_client import HttpError, HttpPool, InvalidURL, Response, parse_url

_STATUS_CLASS = re.compile(r"^[1-5]xx$")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_FRAMING = ("content-length", "transfer-encoding")   # the request's framing: h11 writes it
_BODY_LIMIT = 1024 * 1024  # expect_text is searched in the first MiB
_SNIPPET = 200
_NO_ANSWER = "no answer within"       # the messages of problems about time (HttpCheck.timed)
_SLOWER = "slower than the"


class HttpConfig(CheckConfig):
    kind: Literal["http"]
    url: str
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = "GET"
    expect_status: list[int | str] = ["2xx", "3xx"]  # codes (200) or classes ("2xx")
    expect_text: str | None = None
    latency_critical: Duration | None = None
    latency_warning: Duration | None = None
    verify_tls: bool = True
    follow_redirects: bool = False
    headers: dict[str, str] = {}
    request_timeout: Duration = Field(8.0, validate_default=True)  # must stay below `timeout`

    _latency = threshold_pair("latency_warning", "latency_critical")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            parse_url(value)
        except InvalidURL as e:
            raise ValueError(str(e)) from None
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _TOKEN.match(name):
                raise ValueError(f"header name {name!r} is not a valid HTTP header name")
            if name.lower() in _FRAMING:
                raise ValueError(f"header {name!r} is set by the agent (the request has no body); remove it")
            if _CONTROL.search(text):
                raise ValueError(f"header {name!r} holds a line break or control character")
            try:
                text.encode("latin-1")
            except UnicodeEncodeError:
                raise ValueError(f"header {name!r} holds characters HTTP headers cannot carry") from None
        return value

    @field_validator("expect_status")
    @classmethod
    def _statuses(cls, value: list[int | str]) -> list[int | str]:
        if not value:
            raise ValueError("expect_status cannot be empty")
        for item in value:
            if not (isinstance(item, int) and 100 <= item <= 599) and not (
                    isinstance(item, str) and _STATUS_CLASS.match(item)):
                raise ValueError(f"expected status codes like 200 or classes like '2xx', got {item!r}")
        return value

    @field_validator("request_timeout")
    @classmethod
    def _within_timeout(cls, value: float, info: ValidationInfo) -> float:
        timeout = info.data.get("timeout")
        if timeout is not None and value >= timeout:
            raise ValueError(f"request_timeout {value:g}s (default 8s) must be shorter than the check timeout "
                             f"{timeout:g}s, or a slow server reads as 'unknown'; set it lower")
        return value


def status_expected(code: int, expected: list[int | str]) -> bool:
    return any(code == e if isinstance(e, int) else str(code)[0] == e[0] for e in expected)


def pool(ctx: CheckContext) -> HttpPool | None:
    """The pulse's shared HTTP pool (made at the first http check), or None outside a Pulse."""
    return ctx.shared.get("http", HttpPool) if ctx.shared is not None else None


@check("http")
class HttpCheck(Check):
    Config = HttpConfig
    config: HttpConfig

    @property
    def target(self) -> str:
        return self.config.url

    @cached_property
    def _lane(self) -> str:
        url = parse_url(self.config.url)
        return f"http {'https' if url.tls else 'http'}://{url.authority}"

    def timed(self, result: CheckResult) -> bool:
        """No answer within request_timeout, or slower than a latency threshold."""
        return result.status != "ok" and (result.message.startswith(_NO_ANSWER) or _SLOWER in result.message)

    def lane(self) -> str:
        """Checks of one origin queue together, so an unresponsive server cannot hold every slot."""
        return self._lane

    async def collect(self, ctx: CheckContext) -> list[CheckResult]:
        shared = pool(ctx)
        if shared is not None:
            return await self._collect(shared)
        own = HttpPool()  # a check run on its own (tests, one-off): a pool for this request only
        try:
            return await self._collect(own)
        finally:
            await own.aclose()

    async def _collect(self, http: HttpPool) -> list[CheckResult]:
        c = self.config
        start = time.perf_counter()
        headers_at: list[float] = []
        try:
            async with asyncio.timeout(c.request_timeout):
                response = await http.request(
                    c.method, c.url, c.headers, verify=c.verify_tls, follow_redirects=c.follow_redirects,
                    body_limit=_BODY_LIMIT if c.expect_text is not None else 0,
                    on_headers=lambda: headers_at.append(time.perf_counter()))
        except TimeoutError:
            return [self.result(c.url, "critical", f"{_NO_ANSWER} {c.request_timeout:g}s")]
        except HttpError as e:
            return [self.result(c.url, "critical", f"request failed: {type(e).__name__}: {e}")]
        latency_ms = (headers_at[0] - start) * 1000

        code = response.status_code
        metrics = {"latency_ms": latency_ms, "status_code": float(code)}
        seen = f"{code} {_reason(code)}".strip()
        if not status_expected(code, c.expect_status):
            expected = ", ".join(str(e) for e in c.expect_status)
            return [self.result(c.url, "critical", f"status {seen}, expected {expected}", metrics)]
        if c.expect_text is not None:
            text = _text(response)
            if c.expect_text not in text:
                return [self.result(c.url, "critical", f"status {seen} but the body lacks {c.expect_text!r}",
                                    metrics, body_snippet=text[:_SNIPPET])]
        status = judge(latency_ms / 1000, c.latency_warning, c.latency_critical)
        message = f"{seen} in {latency_ms:.0f} ms"
        if status != "ok":
            limit = c.latency_critical if status == "critical" else c.latency_warning
            message += f", {_SLOWER} {status} threshold of {limit * 1000:.0f} ms"  # type: ignore[operator]
        return [self.result(c.url, status, message, metrics)]


def _reason(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return ""


def _text(response: Response) -> str:
    try:
        return response.body.decode(response.encoding or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return response.body.decode("utf-8", errors="replace")
