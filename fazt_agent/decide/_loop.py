"""The bounded tool-use conversation shared by decisions, `pulse ask` and summaries.

Each step: check the budget, make one Messages API call (recorded in `llm_calls`), then
- a refusal, a cut-off answer or a malformed block ends it as a failure;
- a tool name that was not offered ends it (`unknown`), nothing of that answer is used;
- a message with `notify_only` or action tools ends it: those calls are the answer (nothing runs);
- investigation tools run (read-only) and their results go back for the next step;
- plain text ends it: the text is the answer.
After `max_steps` calls without an answer it fails with `max_steps`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from pydantic import ValidationError

from ._client import LlmClient, LlmError
from ._tools import Tool, ToolSet
from .budget import Budget, Exhausted, Usage
from .investigate import INVESTIGATIONS, InvestigationError, Scope

MAX_RESULT = 20000
MAX_ARGS = 2000


@dataclass(frozen=True)
class Call:
    """A tool_use block the model sent, and what became of it."""

    tool: Tool
    input: dict[str, Any]
    id: str


@dataclass
class Transcript:
    usage: Usage = Usage()
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    calls: int = 0
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    answer: list[Call] = field(default_factory=list)   # the terminal tool calls (proposals or notify_only)
    unknown: list[str] = field(default_factory=list)
    text: str = ""
    failure: tuple[str, str] | None = None            # (kind, message)
    exhausted: Exhausted | None = None

    def record(self) -> dict[str, Any]:
        """The `usage` of a decision event: tokens, calls, latency, cost and the tool calls made."""
        return {**self.usage.to_json(), "calls": self.calls, "latency_ms": round(self.latency_ms, 1),
                "cost_usd": round(self.cost_usd, 6), "tool_calls": self.tool_calls}


def _echo(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The assistant turn as it goes back to the API: thinking blocks exactly as received (the
    API requires them unchanged), text and tool_use blocks with their own fields only."""
    out: list[dict[str, Any]] = []
    for b in blocks:
        if b.get("type") in ("thinking", "redacted_thinking"):
            out.append(b)
        elif b.get("type") == "text" and b.get("text"):
            out.append({"type": "text", "text": b["text"]})
        elif b.get("type") == "tool_use":
            out.append({"type": "tool_use", "id": b["id"], "name": b["name"], "input": b["input"]})
    return out


async def run_investigation(scope: Scope, tool: Tool, args: dict[str, Any]) -> tuple[str, bool]:
    """Run one read-only tool: (result text, ok)."""
    _, model, fn = INVESTIGATIONS[tool.name]
    try:
        text = await fn(scope, model.model_validate(args))
    except ValidationError as e:
        return "invalid arguments: " + "; ".join(f"{'.'.join(map(str, err['loc'])) or 'args'}: {err['msg']}"
                                                  for err in e.errors()), False
    except InvestigationError as e:
        return f"refused: {e}", False
    return text[:MAX_RESULT], True


def _brief(args: dict[str, Any]) -> dict[str, Any]:
    """Tool arguments for the record, cut when a model sends something huge."""
    text = json.dumps(args, default=str)
    return args if len(text) <= MAX_ARGS else {"truncated": text[:MAX_ARGS]}


Runner = Callable[[Tool, dict[str, Any]], Awaitable[tuple[str, bool]]]


async def converse(client: LlmClient, budget: Budget, purpose: str, request: dict[str, Any], first: str,
                   tools: ToolSet, run: Runner, max_steps: int) -> Transcript:
    """Talk until an answer, a failure, the budget or `max_steps`; see the module docstring."""
    t = Transcript()
    messages: list[dict[str, Any]] = [{"role": "user", "content": first}]
    for step in range(1, max_steps + 1):
        t.exhausted = await budget.exhausted()
        if t.exhausted is not None:
            return t
        start = time.perf_counter()
        try:
            reply = await client.create({**request, "messages": messages})
        except LlmError as e:
            elapsed = (time.perf_counter() - start) * 1000
            t.latency_ms += elapsed
            t.calls += 1
            await budget.record(purpose, Usage(), elapsed, error=e.kind)
            t.failure = (e.kind, str(e))
            return t
        elapsed = (time.perf_counter() - start) * 1000
        usage = Usage.from_api(reply.get("usage") or {})
        t.usage, t.latency_ms, t.calls = t.usage + usage, t.latency_ms + elapsed, t.calls + 1
        t.cost_usd += await budget.record(purpose, usage, elapsed)
        blocks = [b for b in reply.get("content") or [] if isinstance(b, dict)]
        stop = reply.get("stop_reason")
        if stop == "refusal":
            t.failure = ("refusal", "the model refused to answer")
            return t
        if stop == "max_tokens":
            t.failure = ("malformed", "the answer was cut off at max_tokens")
            return t
        uses = [b for b in blocks if b.get("type") == "tool_use"]
        if any(not isinstance(b.get("input"), dict) or not b.get("id") or not isinstance(b.get("name"), str)
               for b in uses):
            t.failure = ("malformed", "a tool_use block without id, name or object input")
            return t
        text = "\n".join(b["text"] for b in blocks if b.get("type") == "text" and b.get("text")).strip()
        if not uses:
            t.text = text
            if not text:
                t.failure = ("empty", f"an empty answer (stop_reason {stop!r})")
            return t
        offered = [(b, tools.get(b["name"])) for b in uses]
        calls = [Call(tool, b["input"], b["id"]) for b, tool in offered if tool is not None]
        t.unknown = [b["name"][:100] for b, tool in offered if tool is None]
        answer = [c for c in calls if c.tool.kind != "investigate"]
        if t.unknown or answer:  # the answer (or one to refuse): nothing more runs
            t.tool_calls += [{"step": step, "name": b["name"][:100], "input": _brief(b["input"]),
                              "kind": tool.kind if tool else "unknown"} for b, tool in offered]
            t.answer, t.text = answer, text
            return t
        results = []
        for c in calls:
            result, ok = await run(c.tool, c.input)
            t.tool_calls.append({"step": step, "name": c.tool.name, "input": _brief(c.input), "kind": "investigate",
                                 "ok": ok, "result_chars": len(result)})
            results.append({"type": "tool_result", "tool_use_id": c.id, "content": result, "is_error": not ok})
        messages += [{"role": "assistant", "content": _echo(blocks)}, {"role": "user", "content": results}]
    t.failure = ("max_steps", f"no answer after {max_steps} calls ([llm] max_steps)")
    return t
