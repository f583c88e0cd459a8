"""The LLM edge: a small Protocol and its adapter on the official `anthropic` SDK.

The SDK is imported on the first request only (it is heavy, and an idle daemon never needs
it). Errors become `LlmError(kind)`; the SDK's own retries (429, 529, 5xx, timeouts) happen
inside one `create` call.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..config import Config
from ..errors import FaztAgentError


class LlmError(FaztAgentError):
    """A Messages API call failed; `kind` is one of `llm_events.FallbackKind`."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class LlmClient(Protocol):
    async def create(self, request: dict[str, Any]) -> dict[str, Any]:
        """One Messages API call: the request body in, the response message as a dict out.

        Raises:
            LlmError: the call failed after the client's retries.
        """
        ...


class AnthropicClient:
    """`AsyncAnthropic(...).messages.create` behind `LlmClient`."""

    def __init__(self, config: Config):
        self.config = config
        self._client: Any = None

    async def create(self, request: dict[str, Any]) -> dict[str, Any]:
        import anthropic

        if self._client is None:
            section = self.config.file.llm
            self._client = anthropic.AsyncAnthropic(api_key=self.config.llm_key, base_url=self.config.llm_base_url,
                                                    timeout=section.timeout, max_retries=section.max_retries)
        try:
            message = await self._client.messages.create(**request)
        except anthropic.APIError as e:
            raise LlmError(*classify(e)) from None
        return message.model_dump(mode="json", exclude_none=True, warnings=False)


def classify(error: Exception) -> tuple[str, str]:
    """(kind, message) of an SDK error; the message never holds credentials."""
    import anthropic

    if isinstance(error, anthropic.APITimeoutError):
        return "timeout", "the request timed out (after the SDK's retries)"
    if isinstance(error, anthropic.APIConnectionError):
        return "connection", f"cannot reach the API: {error}"
    if isinstance(error, anthropic.APIStatusError):
        status = error.status_code
        kind = ("rate_limited" if status == 429 else "overloaded" if status == 529
                else "server_error" if status >= 500 else "api_error")
        return kind, f"HTTP {status} (after the SDK's retries): {_detail(error)}"
    return "malformed", f"{type(error).__name__}: {error}"


def _detail(error: Any) -> str:
    body = error.body if isinstance(error.body, dict) else {}
    inner = body.get("error")
    message = inner.get("message") if isinstance(inner, dict) else None
    return str(message or error.message)[:300]
