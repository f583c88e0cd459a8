"""`http`: does a URL answer, with an expected status and text, fast enough?

An unanswered request, an unexpected status or missing text is critical; slowness is judged by
the latency thresholds. `latency_ms` is the time until the response headers arrived. The body is
untrusted: it never goes into the message, only a short snippet into details when the text
check fails. httpx is imported lazily to keep the idle daemon small.
"""

from __future__ import annotations

import re
import time
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator

from ..units import Duration
from .base import Check, CheckConfig, CheckContext, CheckResult, check, judge, threshold_pair

_STATUS_CLASS = re.compile(r"^[1-5]xx$")
_BODY_LIMIT = 1024 * 1024  # expect_text is searched in the first MiB
_SNIPPET = 200


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
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https:// URL with a host, got {value!r}")
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


async def _read_head(response: Any, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


@check("http")
class HttpCheck(Check):
    Config = HttpConfig
    config: HttpConfig

    @property
    def target(self) -> str:
        return self.config.url

    async def collect(self, ctx: CheckContext) -> list[CheckResult]:
        import httpx

        c = self.config
        body = b""
        try:
            async with httpx.AsyncClient(verify=c.verify_tls, follow_redirects=c.follow_redirects,
                                         timeout=c.request_timeout) as client:
                start = time.perf_counter()
                async with client.stream(c.method, c.url, headers=c.headers) as response:
                    latency_ms = (time.perf_counter() - start) * 1000
                    if c.expect_text is not None:
                        body = await _read_head(response, _BODY_LIMIT)
        except httpx.TimeoutException:
            return [self.result(c.url, "critical", f"no answer within {c.request_timeout:g}s")]
        except httpx.HTTPError as e:
            return [self.result(c.url, "critical", f"request failed: {type(e).__name__}: {e}")]

        code = response.status_code
        metrics = {"latency_ms": latency_ms, "status_code": float(code)}
        seen = f"{code} {httpx.codes.get_reason_phrase(code)}".strip()
        if not status_expected(code, c.expect_status):
            expected = ", ".join(str(e) for e in c.expect_status)
            return [self.result(c.url, "critical", f"status {seen}, expected {expected}", metrics)]
        if c.expect_text is not None:
            text = body.decode(response.encoding or "utf-8", errors="replace")
            if c.expect_text not in text:
                return [self.result(c.url, "critical", f"status {seen} but the body lacks {c.expect_text!r}",
                                    metrics, body_snippet=text[:_SNIPPET])]
        status = judge(latency_ms / 1000, c.latency_warning, c.latency_critical)
        message = f"{seen} in {latency_ms:.0f} ms"
        if status != "ok":
            limit = c.latency_critical if status == "critical" else c.latency_warning
            message += f", slower than the {status} threshold of {limit * 1000:.0f} ms"  # type: ignore[operator]
        return [self.result(c.url, status, message, metrics)]
