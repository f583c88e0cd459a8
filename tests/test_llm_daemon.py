"""LLM decisions inside a real daemon: the SDK is not even imported while all is well, and beats
keep coming while the model thinks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from _helpers import db_rows, stop_daemon, wait_until
from conftest import Ops, base_env
from fazt_agent.testing import Reply, ScriptedLLM, message, tool_use

# `python -m fazt_agent`, writing the imported modules to argv[1] at exit
RUNNER = ("import atexit, json, sys, runpy; out = sys.argv.pop(1); "
          "atexit.register(lambda: open(out, 'w').write(json.dumps(sorted(sys.modules)))); "
          "sys.argv[0] = 'fazt-agent'; runpy.run_module('fazt_agent', run_name='__main__')")


def start(ops: Ops, modules: Path, url: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", RUNNER, str(modules), "--config", str(ops.config), "run"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=base_env(ANTHROPIC_API_KEY="sk-daemon-test", ANTHROPIC_BASE_URL=url))


def types(ops: Ops) -> list[str]:
    return [r["type"] for r in db_rows(ops, "SELECT type FROM events ORDER BY id")]


def test_the_daemon_decides_with_the_llm_as_a_task_and_loads_the_sdk_only_then(ops: Ops, tmp_path: Path,
                                                                             junk: Path) -> None:
    ops.set_config("pulse", "interval", "1s")
    ops.set_config("agent", "autonomy", "medium")
    release = threading.Event()
    with ScriptedLLM() as llm:
        daemon = start(ops, tmp_path / "idle.json", llm.url)
        try:
            wait_until("three healthy beats", lambda: types(ops).count("pulse.beat") >= 3)
        finally:
            stop_daemon(daemon)
        assert "anthropic" not in json.loads((tmp_path / "idle.json").read_text())
        assert llm.requests == []

        for i in range(6):
            (junk / f"old-{i}.log").write_bytes(b"x" * 4096)
            os.utime(junk / f"old-{i}.log", (time.time() - 30 * 86400,) * 2)
        llm.add(Reply(message(tool_use("cleanup", {"root": str(junk), "older_than": "7d", "rationale": "old"})),
                      hold=release))
        daemon = start(ops, tmp_path / "busy.json", llm.url)
        try:
            wait_until("the model to be asked", lambda: len(llm.requests) == 1)
            beats = types(ops).count("pulse.beat")
            wait_until("two more beats while the model thinks", lambda: types(ops).count("pulse.beat") >= beats + 2)
            assert "decision.made" not in types(ops) and len(list(junk.iterdir())) == 6
            release.set()
            wait_until("the cleanup", lambda: "action.succeeded" in types(ops))
        finally:
            release.set()
            stop_daemon(daemon)
    assert "anthropic" in json.loads((tmp_path / "busy.json").read_text())
    assert list(junk.iterdir()) == [] and len(llm.requests) == 1
    assert types(ops).count("decision.made") == 1
