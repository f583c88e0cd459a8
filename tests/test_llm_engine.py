"""The LLM planner in process, with a fake clock and the real SDK against the scripted server:
decisions as tasks, failures of every kind, caching-friendly requests, the offered tools."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any, AsyncIterator, Coroutine, Iterator

import pytest

from _helpers import FakeClock, fill, types
from conftest import Ops
from fazt_agent.config import load_config
from fazt_agent.decide._tools import NAME, ToolSet, offered_actions
from fazt_agent.engine import Engine
from fazt_agent.policy.explain import incident_from_json
from fazt_agent.policy.model import Match, Policy, Rule, Verdicts
from fazt_agent.runtime import Runtime
from fazt_agent.testing import Reply, ScriptedLLM, message, text, tool_use


@pytest.fixture
def llm() -> Iterator[ScriptedLLM]:
    with ScriptedLLM() as server:
        yield server


@pytest.fixture
def junk(junk: Path, ops: Ops) -> Path:
    """conftest's cleanup root, at medium autonomy; its files are aged by the runtime's fake clock
    (`fill(..., clock=runtime.clock)`: the one the cleanup reads)."""
    ops.set_config("agent", "autonomy", "medium")
    return junk


class Tasks:
    """An `Engine.spawn` that keeps the tasks, as the daemon does."""

    def __init__(self) -> None:
        self.tasks: list[tuple[str, asyncio.Task[None]]] = []

    def __call__(self, kind: str, coro: Coroutine[Any, Any, None]) -> None:
        self.tasks.append((kind, asyncio.get_running_loop().create_task(coro)))

    async def drain(self) -> None:
        await asyncio.wait_for(asyncio.gather(*(t for _, t in self.tasks)), 30)


async def open_runtime(ops: Ops, llm: ScriptedLLM) -> Runtime:
    ops.set_config("llm", "base_url", llm.url)
    return await Runtime.open(load_config(ops.config, env={"ANTHROPIC_API_KEY": "sk-test"}),
                              clock=FakeClock(mono=None))


@pytest.fixture
async def runtime(ops: Ops, llm: ScriptedLLM, junk: Path) -> AsyncIterator[Runtime]:
    rt = await open_runtime(ops, llm)
    yield rt
    await rt.close()


async def turn(engine: Engine) -> None:
    """A beat and the engine's decisions on it, without the sweep of _helpers.turn."""
    await engine.on_beat(await engine.rt.pulse.beat(everything=True))


async def test_a_slow_model_never_delays_the_beat(runtime: Runtime, llm: ScriptedLLM, junk: Path) -> None:
    tasks, release = Tasks(), threading.Event()
    engine = Engine(runtime, spawn=tasks)
    fill(junk, 6, clock=runtime.clock)
    llm.add(Reply(message(tool_use("cleanup", {"root": str(junk), "older_than": "7d", "rationale": "old"})),
                  hold=release))
    await turn(engine)  # returns while the model is still "thinking"
    assert [kind for kind, _ in tasks.tasks] == ["decide"]
    assert await types(runtime, "decision.*") == [] and len(list(junk.iterdir())) == 6
    release.set()
    await tasks.drain()
    [decision] = await types(runtime, "decision.made")
    assert decision["planner"] == "llm" and decision["verdict"] == "act"
    assert [kind for kind, _ in tasks.tasks] == ["decide", "action"]
    await tasks.drain()
    assert list(junk.iterdir()) == []


async def test_a_beat_during_a_decision_does_not_start_another(runtime: Runtime, llm: ScriptedLLM,
                                                               junk: Path) -> None:
    tasks, release = Tasks(), threading.Event()
    engine = Engine(runtime, spawn=tasks)
    fill(junk, 6, clock=runtime.clock)
    llm.add(Reply(message(tool_use("notify_only", {"reason": "old logs"})), hold=release))
    await turn(engine)
    runtime.clock.advance(60)  # type: ignore[attr-defined]
    await turn(engine)
    release.set()
    await tasks.drain()
    assert len(tasks.tasks) == 1 and len(llm.requests) == 1
    assert len(await types(runtime, "decision.made")) == 1


async def test_a_decision_cut_short_by_a_stop_is_made_after_the_restart(runtime: Runtime, llm: ScriptedLLM,
                                                                        junk: Path) -> None:
    tasks, release = Tasks(), threading.Event()
    fill(junk, 6, clock=runtime.clock)
    llm.add(Reply(message(text("never delivered")), hold=release))
    await turn(Engine(runtime, spawn=tasks))
    for _, task in tasks.tasks:  # the daemon stops: its drain cancels the decision
        task.cancel()
    await asyncio.gather(*(t for _, t in tasks.tasks), return_exceptions=True)
    release.set()
    assert await types(runtime, "decision.made") == []
    llm.add(message(tool_use("notify_only", {"reason": "old logs"})))
    runtime.clock.advance(60)  # type: ignore[attr-defined]
    await turn(Engine(runtime))  # the restarted agent
    [decision] = await types(runtime, "decision.made")
    assert decision["trigger"] == "retry" and decision["planner"] == "llm"


async def test_an_incident_that_resolves_while_the_model_thinks_is_left_alone(runtime: Runtime, llm: ScriptedLLM,
                                                                              junk: Path) -> None:
    tasks, release = Tasks(), threading.Event()
    engine = Engine(runtime, spawn=tasks)
    fill(junk, 6, clock=runtime.clock)
    llm.add(Reply(message(tool_use("cleanup", {"root": str(junk), "older_than": 0, "rationale": "x"})), hold=release))
    await turn(engine)
    for f in junk.iterdir():
        f.unlink()
    runtime.clock.advance(60)  # type: ignore[attr-defined]
    await turn(engine)
    (junk / "keep.txt").write_text("created after the incident resolved")
    release.set()
    await tasks.drain()
    assert await types(runtime, "decision.made") == []
    [discarded] = await types(runtime, "llm.discarded")
    assert "resolved" in discarded["reason"] and (junk / "keep.txt").exists()


@pytest.mark.parametrize("reply, kind", [
    (message(text("I cannot help with that."), stop_reason="refusal"), "refusal"),
    (message(), "empty"),
    (message(tool_use("cleanup", {"root": "/x"}), stop_reason="max_tokens"), "malformed"),
    ({"type": "message", "role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "cleanup",
                                                             "input": "not an object"}],
      "stop_reason": "tool_use", "model": "m"}, "malformed"),
    (message(tool_use("notify_only", {"reason": "a"}), tool_use("cleanup", {"root": "/x", "rationale": "b"})),
     "malformed"),
], ids=["refusal", "empty", "cut-off", "bad-input", "notify-and-act"])
async def test_unusable_answers_fall_back_to_the_rules(runtime: Runtime, llm: ScriptedLLM, junk: Path,
                                                       reply: dict, kind: str) -> None:
    fill(junk, 6, clock=runtime.clock)
    llm.add(reply)
    await turn(Engine(runtime))
    [fallback] = await types(runtime, "llm.fallback")
    assert fallback["kind"] == kind and fallback["usage"]["calls"] == 1
    [decision] = await types(runtime, "decision.made")
    assert decision["planner"] == "rules" and decision["verdict"] == "act"


async def test_max_steps_bounds_the_investigation(ops: Ops, llm: ScriptedLLM, junk: Path) -> None:
    ops.set_config("llm", "max_steps", 3)
    rt = await open_runtime(ops, llm)
    try:
        fill(junk, 6, clock=rt.clock)
        llm.add(*(message(tool_use("beat_history", {})) for _ in range(5)))
        await turn(Engine(rt))
        assert len(llm.requests) == 3
        [fallback] = await types(rt, "llm.fallback")
        assert fallback["kind"] == "max_steps" and len(fallback["usage"]["tool_calls"]) == 3
        assert "at most 3 turns" in llm.requests[0].body["messages"][0]["content"]
    finally:
        await rt.close()


async def test_system_prompt_and_tools_are_byte_identical_between_calls_and_cached(runtime: Runtime, llm: ScriptedLLM,
                                                                                   junk: Path) -> None:
    fill(junk, 6, clock=runtime.clock)
    thinking = {"type": "thinking", "thinking": "", "signature": "c2lnbmF0dXJl"}
    llm.add(message(thinking, tool_use("probe_detail", {"check": "junk"})),
            message(tool_use("process_list", {"limit": 3})), message(tool_use("notify_only", {"reason": "old logs"})))
    await turn(Engine(runtime))
    bodies = [r.body for r in llm.requests]
    assert len(bodies) == 3
    assert len({repr((b["system"], b["tools"], b["model"], b["output_config"])) for b in bodies}) == 1
    assert "tool_choice" not in bodies[0]  # never forced: current models refuse it
    assert bodies[1]["messages"][1]["content"][0] == thinking  # thinking goes back exactly as received
    assert bodies[0]["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert bodies[0]["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    assert [r.usage["cache_creation_input_tokens"] > 0 for r in llm.requests] == [True, False, False]
    assert all(r.usage["cache_read_input_tokens"] > 0 for r in llm.requests[1:])
    assert all(NAME.match(t["name"]) for t in bodies[0]["tools"])
    [decision] = await types(runtime, "decision.made")
    assert decision["usage"]["cache_read_tokens"] == sum(r.usage["cache_read_input_tokens"] for r in llm.requests)


def _incident(kind: str) -> Any:
    return incident_from_json({"check": "c", "kind": kind, "target": "/t", "severity": "critical", "message": "m"})


def test_only_actions_a_rule_could_allow_are_offered_and_names_fit_the_api() -> None:
    policy = Policy(rules=(
        Rule(name="down", match=Match(kind=["process"]), action="service.restart"),
        Rule(name="never", match=Match(kind=["process"]), action="cleanup", verdicts=Verdicts(medium="deny",
                                                                                             high="notify")),
        Rule(name="dirs", match=Match(kind=["dir_size"]), action="cleanup"),
    ))
    process = _incident("process")
    assert offered_actions(policy, process, "low") == []
    assert [a for a, _ in offered_actions(policy, process, "medium")] == ["service.restart"]
    assert [a for a, _ in offered_actions(policy, process, "high")] == ["service.restart"]
    names = [t.name for t in ToolSet.for_incident(policy, process, "medium").tools]
    assert "service_restart" in names and "cleanup" not in names and names[-1] == "notify_only"
    assert all(NAME.match(n) for n in names)
    assert [t.name for t in ToolSet.for_incident(policy, process, "low").tools if t.kind != "investigate"] == \
        ["notify_only"]
