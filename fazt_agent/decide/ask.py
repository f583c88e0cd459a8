"""`pulse ask` and `pulse status --summary`: the LLM reads stored beats and events, nothing else.

A question may use the read-only store tools (beat history, events, a probe's detail) within
`[llm] max_steps` calls, and is limited to one per `[llm] ask_interval`. A summary is one call,
cached per beat: asking again before the next beat costs nothing.
"""

from __future__ import annotations

import json
import socket
from typing import TYPE_CHECKING, Any

from ..errors import FaztAgentError
from ..units import format_duration
from ._client import AnthropicClient
from ._loop import Transcript, converse, run_investigation
from ._tools import Tool, ToolSet, investigation_tools
from .budget import Budget
from .context import overview_values
from .investigate import Scope
from .llm import base_request
from .prompt import Fence, Prompts, render

if TYPE_CHECKING:
    from ..runtime import Runtime

ASK_TOOLS = ("beat_history", "query_events", "probe_detail")
SUMMARY_KEY = "llm.summary"


class LlmUnavailable(FaztAgentError):
    """The LLM cannot answer now: not configured, rate limited, over budget or failing."""


def _prepare(rt: Runtime) -> tuple[Budget, Prompts, str]:
    if not rt.config.llm_ready:
        raise LlmUnavailable(f"the LLM is {rt.config.llm_note}: set {rt.config.file.llm.api_key_env} "
                             "(see [llm] in config.toml)")
    section = rt.config.file.llm
    prompts = Prompts.load(rt.config.folders["prompts"])
    host = rt.config.agent.name or socket.gethostname()
    return Budget(rt.store, rt.clock, section), prompts, prompts.system_prompt(host, rt.config.agent.personality)


def _outcome(t: Transcript) -> str:
    if t.exhausted is not None:
        raise LlmUnavailable(t.exhausted.reason)
    if t.failure is not None:
        raise LlmUnavailable(f"the LLM could not answer ({t.failure[0]}): {t.failure[1]}")
    if t.unknown or t.answer or not t.text:
        raise LlmUnavailable("the LLM gave no usable answer")
    return t.text


async def ask(rt: Runtime, question: str) -> dict[str, Any]:
    """The LLM's answer to the owner's `question`, from stored data.

    Raises:
        LlmUnavailable: not configured, asked too recently, over budget, or the call failed.
    """
    budget, prompts, system = _prepare(rt)
    section = rt.config.file.llm
    last = await budget.last_call("ask")
    if last is not None:
        waited = (rt.clock.now() - last).total_seconds()
        if waited < section.ask_interval:
            raise LlmUnavailable(f"the last question was {format_duration(waited)} ago; at most one every "
                                 f"{format_duration(section.ask_interval)} ([llm] ask_interval): try again in "
                                 f"{format_duration(section.ask_interval - waited)}")
    tools = ToolSet(investigation_tools(ASK_TOOLS))
    fence = Fence()  # one tag per question, named in its first message
    scope = Scope.of(rt, fence=fence)

    async def run(tool: Tool, args: dict[str, Any]) -> tuple[str, bool]:
        return await run_investigation(scope, tool, args)

    values = {"question": question.strip()[:2000], **await overview_values(rt, fence)}
    t = await converse(AnthropicClient(rt.config), budget, "ask",
                       base_request(section, system, tools), fence.introduce(render(prompts.ask, values).strip()),
                       tools, run, section.max_steps)
    return {"answer": _outcome(t), "model": section.model, "usage": t.record()}


async def summary(rt: Runtime) -> dict[str, Any]:
    """A one-paragraph summary of the server, made once per beat.

    Raises:
        LlmUnavailable: not configured, no beat yet, over budget, or the call failed.
    """
    budget, prompts, system = _prepare(rt)
    last = await rt.beats.last_beat()
    if last is None:
        raise LlmUnavailable("no beat stored yet: run `fazt-agent beat` first")
    cached = json.loads(await rt.store.get_setting(SUMMARY_KEY) or "{}")
    if cached.get("beat_id") == last["id"]:
        return {**cached, "cached": True}
    section = rt.config.file.llm

    async def run(tool: Tool, args: dict[str, Any]) -> tuple[str, bool]:
        return "no tools", False

    fence = Fence()
    t = await converse(AnthropicClient(rt.config), budget, "summary",
                       base_request(section, system, ToolSet([])),
                       fence.introduce(render(prompts.summary, await overview_values(rt, fence)).strip()),
                       ToolSet([]), run, 1)
    result = {"beat_id": last["id"], "summary": _outcome(t), "model": section.model, "usage": t.record()}
    await rt.store.set_setting(SUMMARY_KEY, json.dumps(result))
    return {**result, "cached": False}
