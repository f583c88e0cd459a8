"""`fazt_pulse_ask`: the LLM answers a question about the server from stored beats and events."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mcp.server.mcpserver.exceptions import ToolError

if TYPE_CHECKING:
    from ..runtime import Runtime


async def ask(rt: Runtime, question: str) -> dict[str, Any]:
    """The LLM's answer to `question` (the same path as `fazt-agent pulse ask`).

    Raises:
        ToolError: the LLM is not configured, was asked too recently, is over budget or failed.
    """
    from ..decide.ask import LlmUnavailable, ask as ask_llm

    try:
        return await ask_llm(rt, question)
    except LlmUnavailable as e:
        raise ToolError(str(e)) from None
