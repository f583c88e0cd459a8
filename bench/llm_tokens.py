"""Tokens per LLM decision, and the decision overhead excluding model time, on the shipped scenarios.

Each scenario makes an ops folder with `fazt-agent init`, adds the checks and constraints that
make one shipped policy rule apply, and runs the real LLM planner (the official SDK) against the
scripted Messages API server of `fazt_agent.testing`, in process with a fake clock. The scripted
model investigates with one or two read-only tools and then answers as a real model would for
that incident. Tokens are the usage the scripted server reports: UTF-8 bytes / 4 of the JSON
sent, with the tools + system prompt prefix counted as a cache write the first time and a cache
read afterwards (at least 1024 tokens, Sonnet's minimum). Output tokens are those of the scripted
replies: a real model (with adaptive thinking) writes more.

Every round: the warning beat is stored (so the prompt has a trend and, from round 2 on, earlier
incidents of the same check with their outcomes), `Engine.on_beat` runs and the decision task is
awaited, then an all-ok beat resolves the incident and the clock moves 25 h on. Actions are
started but not applied (the engine's `spawn` closes them). Overhead = wall time of the decision
minus the time inside Messages API calls (SDK + loopback HTTP, from `llm_calls.latency_ms`). The
rules planner's decision on the same scenario is timed for comparison. Round 1 is cold (the
cache is written); the other rounds are reported as their median.

    python bench/llm_tokens.py [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import tomli_w

from _common import make_ops, print_json, stats

DAY = 86400.0
UNIT = "web.service"


class FakeClock:
    def __init__(self) -> None:
        self.t = datetime.now(timezone.utc)

    def now(self) -> datetime:
        return self.t

    def monotonic(self) -> float:
        return self.t.timestamp()

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    autonomy: str
    verdict: str                                        # what the LLM decision must come to
    checks: Callable[[Path, int], list[dict[str, Any]]]  # (scratch dir, closed port) -> pulse checks
    script: Callable[[Path], list[Any]]                  # (scratch dir) -> the scripted replies of one decision


def _old_files(folder: Path, count: int = 5) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    then = time.time() - 30 * DAY
    for i in range(count):
        (folder / f"old-{i:02}.log").write_bytes(b"GET /index.html 200\n" * 200)
        os.utime(folder / f"old-{i:02}.log", (then, then))
    return folder


def _scenarios() -> list[Scenario]:
    from fazt_agent.testing import message, tool_use

    def cleanup(d: Path) -> list[Any]:
        return [message(tool_use("largest_paths", {"root": str(d / "junk"), "top": 10})),
                message(tool_use("cleanup", {"root": str(d / "junk"), "older_than": "7d",
                                             "rationale": "Five month-old access logs fill the folder."}))]

    def restart(check: str) -> Callable[[Path], list[Any]]:
        return lambda d: [message(tool_use("probe_detail", {"check": check})),
                          message(tool_use("service_restart", {"unit": UNIT, "rationale": f"{check} is down."}))]

    return [
        Scenario("directory-pressure", "dir_size above its limit -> cleanup", "medium", "act",
                 lambda d, p: [{"name": "junk", "kind": "dir_size", "path": str(_old_files(d / "junk")),
                                "warning": "1KB"}], cleanup),
        Scenario("service-down", "process missing -> service.restart", "medium", "act",
                 lambda d, p: [{"name": "web", "kind": "process", "process": "fazt-bench-absent", "service": UNIT}],
                 restart("web")),
        Scenario("probe-failing", "HTTP probe refused -> service.restart", "medium", "act",
                 lambda d, p: [{"name": "site", "kind": "http", "url": f"http://127.0.0.1:{p}/", "service": UNIT}],
                 restart("site")),
        Scenario("unmatched", "stale backups, no rule -> notify only", "medium", "notify",
                 lambda d, p: [{"name": "backups", "kind": "file_age", "path": str(_old_files(d / "backups", 1)),
                                "warning": "26h"}],
                 lambda d: [message(tool_use("beat_history", {"hours": 24})),
                            message(tool_use("notify_only", {"reason": "The newest backup is 30 days old."}))]),
        Scenario("low-autonomy", "dir_size at low autonomy -> notify only", "low", "notify",
                 lambda d, p: [{"name": "junk", "kind": "dir_size", "path": str(_old_files(d / "junk")),
                                "warning": "1KB"}],
                 lambda d: [message(tool_use("tail_log", {"path": str(d / "junk" / "old-00.log"), "lines": 20})),
                            message(tool_use("notify_only", {"reason": "Old access logs; a cleanup would help."}))]),
    ]


def prepare(parent: Path, sc: Scenario, url: str) -> Path:
    ops = make_ops(parent)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]   # nothing listens here once the socket is closed
    for p in (ops.dir / "pulse").glob("*.toml"):
        p.unlink()
    (ops.dir / "pulse" / "bench.toml").write_text(tomli_w.dumps({"checks": sc.checks(parent, closed)}))
    (ops.dir / "policies" / "local.toml").write_text(tomli_w.dumps(
        {"constraints": {"cleanup_roots": [str(parent / "junk")], "service_units": [UNIT]}}))
    (ops.dir / "kernel" / "actions.toml").write_text('[service]\nrestart_command = ["/bin/true", "{unit}"]\n')
    data = tomllib.loads(ops.config.read_text())
    data["agent"]["autonomy"] = sc.autonomy
    data["llm"] = {"base_url": url}
    ops.config.write_text(tomli_w.dumps(data))
    return ops.config


async def run_scenario(sc: Scenario, rounds: int, parent: Path) -> dict[str, Any]:
    from fazt_agent.config import load_config
    from fazt_agent.decide.budget import Usage
    from fazt_agent.engine import Engine
    from fazt_agent.pulse.runner import BeatResult
    from fazt_agent.runtime import Runtime
    from fazt_agent.testing import ScriptedLLM

    with ScriptedLLM() as llm:
        config = load_config(prepare(parent, sc, llm.url), env={**os.environ, "ANTHROPIC_API_KEY": "sk-bench"})
        clock = FakeClock()
        rt = await Runtime.open(config, clock=clock)
        tasks: list[asyncio.Task[None]] = []

        def spawn(kind: str, coro: Any) -> None:
            if kind == "decide":
                tasks.append(asyncio.get_running_loop().create_task(coro))
            else:
                coro.close()  # an action: started, not applied

        try:
            engine = Engine(rt, spawn=spawn)
            bad = await rt.pulse.beat(everything=True)
            if bad.status == "ok":
                raise RuntimeError(f"{sc.key}: the scenario's checks are all ok: {bad.to_json()}")
            ok = [replace(r, status="ok") for r in bad.results]
            rows, baseline = [], []
            for planner in ("llm",) * rounds + ("rules",) * rounds:
                rt.config = config if planner == "llm" else replace(config, llm_key=None)
                llm.add(*sc.script(parent))
                seen, calls_before = len(llm.requests), await rt.store.scalar("SELECT COUNT(*) FROM llm_calls")
                await rt.beats.save(replace(bad, ts=clock.now()))
                beat = BeatResult(clock.now(), bad.results, 0.0)
                t0 = time.perf_counter()
                await engine.on_beat(beat)
                await asyncio.gather(*tasks)
                wall = (time.perf_counter() - t0) * 1000
                tasks.clear()
                made = [e.data for e in await rt.events.list(type_glob="decision.made", limit=1)][0]
                if made["planner"] != planner or (planner == "llm" and made["verdict"] != sc.verdict):
                    raise RuntimeError(f"{sc.key}: expected {planner} {sc.verdict}, got {made}")
                if planner == "rules":
                    baseline.append(wall)
                else:
                    model = await rt.store.scalar("SELECT COALESCE(SUM(latency_ms), 0) FROM llm_calls WHERE id > ?",
                                                  (calls_before,))
                    usage = [r.usage for r in llm.requests[seen:]]
                    total = sum((Usage.from_api(u) for u in usage), Usage())
                    rows.append({"calls": len(usage), **total.to_json(), "cost_usd": total.cost(config.file.llm.price),
                                 "prompt_bytes": sum(len(str(r.body)) for r in llm.requests[seen:]),
                                 "wall_ms": wall, "model_ms": model, "overhead_ms": wall - model})
                await engine.on_beat(BeatResult(clock.now(), ok, 0.0))
                clock.advance(25 * 3600)
                llm.queue.clear()
        finally:
            await rt.close()
    warm = rows[1:] or rows
    return {"label": sc.label, "cold": rows[0],
            "warm": {k: stats([r[k] for r in warm])["median"] for k in rows[0]},
            "overhead_ms": stats([r["overhead_ms"] for r in rows]), "model_ms": stats([r["model_ms"] for r in rows]),
            "rules_ms": stats(baseline), "rounds": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Tokens per LLM decision and decision overhead, scripted model.")
    parser.add_argument("--rounds", type=int, default=5, help="decisions per scenario (and as many by the rules)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    logging.basicConfig(level=logging.ERROR)  # the log notification channel would print every notice
    report: dict[str, Any] = {"rounds": args.rounds, "scenarios": {}, "ok": True}
    for sc in _scenarios():
        with tempfile.TemporaryDirectory(prefix="fazt-bench-llm-") as tmp:
            try:
                report["scenarios"][sc.key] = asyncio.run(run_scenario(sc, args.rounds, Path(tmp)))
            except Exception as e:  # one failed scenario is reported, the others still run
                report["scenarios"][sc.key] = {"error": f"{type(e).__name__}: {e}"}
                report["ok"] = False
    if args.json:
        print_json(report)
        return 0 if report["ok"] else 1
    print(f"tokens per decision (scripted model; cold = first decision, warm = median of the other "
          f"{args.rounds - 1}); times in ms, median")
    print(f"{'scenario':20} {'':5} {'calls':>5} {'input':>6} {'c.write':>7} {'c.read':>6} {'output':>6} "
          f"{'$/dec':>8} {'overhead':>8} {'model':>6} {'rules':>6}")
    for key, r in report["scenarios"].items():
        if "error" in r:
            print(f"{key:20} FAILED: {r['error']}")
            continue
        for name in ("cold", "warm"):
            t = r[name]
            times = (f"{r['overhead_ms']['median']:8.1f} {r['model_ms']['median']:6.1f} {r['rules_ms']['median']:6.1f}"
                     if name == "cold" else "")
            print(f"{key if name == 'cold' else '':20} {name:5} {t['calls']:5.0f} {t['input_tokens']:6.0f} "
                  f"{t['cache_write_tokens']:7.0f} {t['cache_read_tokens']:6.0f} {t['output_tokens']:6.0f} "
                  f"{t['cost_usd']:8.5f} {times}")
    print("overhead = decision wall time minus time inside Messages API calls; rules = the rules planner alone")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
