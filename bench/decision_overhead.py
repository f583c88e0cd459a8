"""Decision overhead of the rules planner: beat -> verdict -> apply started, for 1 and 100 incidents.

Makes an ops folder with `fazt-agent init` per scenario, autonomy "medium", N cleanup roots
(small directories of old files) each watched by its own `dir_size` check and all allowed in
`[constraints] cleanup_roots` of policies/local.toml; the shipped rule "directory-pressure"
proposes `cleanup` with root = "{target}". In process, with a fake clock, it times
`Engine.on_beat` on a BeatResult built from synthetic warning results (no check runs inside
the timing) until the last `decision.made` event (verdict) and the last action start seen by
the engine's `spawn` (apply started; the coroutine is closed, so no file is deleted and every
round plans the same files). Between rounds an all-ok beat resolves the incidents and the
clock moves 25 h on, past the cooldown (1 h) and the max_actions window (24 h).

Scenarios: N=1; N=100 with `max_actions` raised to 1000 in the ops folder's policy (so every
incident acts); N=100 with the shipped `max_actions = 5` (5 act, the rest are held back and
notified, for the record). There is no target: exit 0 when every round decided as expected,
1 when a scenario failed, 2 for bad arguments.

    python bench/decision_overhead.py [--rounds-1 20] [--rounds-100 10] [--rounds-shipped 5]
                                      [--files 5] [--max-seconds 50] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import tempfile
import time
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator

import tomli_w

from _common import make_ops, print_json, stats

DAY = 86400.0
RAISED_MAX_ACTIONS = 1000


class FakeClock:
    """Real time at start, then moved on by hand (as tests/test_loop_engine.py does)."""

    def __init__(self) -> None:
        self.t = datetime.now(timezone.utc)
        self.mono = 1000.0

    def now(self) -> datetime:
        return self.t

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)
        self.mono += seconds


@dataclass
class Meter:
    """Time spent inside Store calls and inside the cleanup action's validate and plan.

    Installed by wrapping the classes' methods in this process only. Calls are counted at the
    level where they do not nest: `Store.transaction` (every write; `execute` and `emit_many`
    go through it), `Store.fetchall` / `Store.fetchone` (every read), `Cleanup.validate`,
    `Cleanup.plan` (the directory walk runs in a worker thread inside it).
    """

    writes: int = 0
    reads: int = 0
    store_s: float = 0.0
    plans: int = 0
    plan_s: float = 0.0
    validates: int = 0
    validate_s: float = 0.0
    installed: list[tuple[type, str, Any]] = field(default_factory=list)

    def reset(self) -> None:
        self.writes = self.reads = self.plans = self.validates = 0
        self.store_s = self.plan_s = self.validate_s = 0.0

    def install(self) -> None:
        from fazt_agent.kernel.cleanup import Cleanup
        from fazt_agent.store import Store

        meter = self
        tx, fetchall, fetchone = Store.transaction, Store.fetchall, Store.fetchone
        validate, plan = Cleanup.validate, Cleanup.plan

        @contextlib.asynccontextmanager
        async def transaction(store: Store) -> AsyncIterator[Any]:
            t0 = time.perf_counter()
            try:
                async with tx(store) as db:
                    yield db
            finally:
                meter.writes += 1
                meter.store_s += time.perf_counter() - t0

        async def timed_fetchall(store: Store, sql: str, params: Any = ()) -> Any:
            t0 = time.perf_counter()
            try:
                return await fetchall(store, sql, params)
            finally:
                meter.reads += 1
                meter.store_s += time.perf_counter() - t0

        async def timed_fetchone(store: Store, sql: str, params: Any = ()) -> Any:
            t0 = time.perf_counter()
            try:
                return await fetchone(store, sql, params)
            finally:
                meter.reads += 1
                meter.store_s += time.perf_counter() - t0

        def timed_validate(action: Cleanup, args: Any, ctx: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return validate(action, args, ctx)
            finally:
                meter.validates += 1
                meter.validate_s += time.perf_counter() - t0

        async def timed_plan(action: Cleanup, args: Any, ctx: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await plan(action, args, ctx)
            finally:
                meter.plans += 1
                meter.plan_s += time.perf_counter() - t0

        for cls, name, new in ((Store, "transaction", transaction), (Store, "fetchall", timed_fetchall),
                               (Store, "fetchone", timed_fetchone), (Cleanup, "validate", timed_validate),
                               (Cleanup, "plan", timed_plan)):
            self.installed.append((cls, name, cls.__dict__[name]))
            setattr(cls, name, new)

    def uninstall(self) -> None:
        for cls, name, old in reversed(self.installed):
            setattr(cls, name, old)
        self.installed.clear()


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    n: int
    rounds: int
    max_actions: int | None   # None: the shipped policy's value
    expect_act: int           # how many incidents must get `act` in every round


def prepare(parent: Path, n: int, files: int, max_actions: int | None) -> tuple[Path, list[Path]]:
    """An ops folder: autonomy medium, N roots with old files, a dir_size check and a cleanup root each."""
    ops = make_ops(parent)
    roots = []
    then = time.time() - 30 * DAY
    for i in range(n):
        root = (parent / "roots" / f"r{i:03}").resolve()
        root.mkdir(parents=True)
        for j in range(files):
            path = root / f"old-{j:02}.log"
            path.write_bytes(b"x" * 4096)
            os.utime(path, (then, then))
        roots.append(root)
    for p in (ops.dir / "pulse").glob("*.toml"):
        p.unlink()
    (ops.dir / "pulse" / "bench.toml").write_text(tomli_w.dumps({"checks": [
        {"name": f"dir-{i:03}", "kind": "dir_size", "path": str(r), "warning": "1KB"} for i, r in enumerate(roots)]}))
    (ops.dir / "policies" / "local.toml").write_text(
        tomli_w.dumps({"constraints": {"cleanup_roots": [str(r) for r in roots]}}))
    if max_actions is not None:
        default = ops.dir / "policies" / "default.toml"
        text = default.read_text()
        line = next((x for x in text.splitlines() if x.startswith("max_actions =")), None)
        if line is None:
            raise RuntimeError("policies/default.toml has no 'max_actions =' line to raise")
        default.write_text(text.replace(line, f"max_actions = {max_actions}", 1))
    data = tomllib.loads(ops.config.read_text())
    data.setdefault("agent", {})["autonomy"] = "medium"
    ops.config.write_text(tomli_w.dumps(data))
    return ops.config, roots


def synthetic(roots: list[Path], status: str) -> list[Any]:
    """What the dir_size checks report for each root, built directly (no walk, no thread)."""
    from fazt_agent.pulse.base import CheckResult

    size = 0 if status == "ok" else 5 * 4096
    return [CheckResult(check=f"dir-{i:03}", kind="dir_size", target=str(r), status=status,  # type: ignore[arg-type]
                        message=f"{r} holds {size} B in 5 files", metrics={"size_bytes": float(size), "files": 5.0})
            for i, r in enumerate(roots)]


async def run_scenario(sc: Scenario, config_path: Path, roots: list[Path], meter: Meter,
                       deadline: float) -> dict[str, Any]:
    from fazt_agent.config import load_config
    from fazt_agent.engine import Engine
    from fazt_agent.kernel.cleanup import CleanupArgs, _scan
    from fazt_agent.pulse.runner import BeatResult
    from fazt_agent.runtime import Runtime

    clock = FakeClock()
    rt = await Runtime.open(load_config(config_path), clock=clock)
    try:
        policy = rt.definitions.policy
        if policy.defaults.max_actions != (sc.max_actions or policy.defaults.max_actions) or \
                len(policy.constraints.cleanup_roots) != sc.n or await rt.autonomy() != "medium":
            raise RuntimeError(f"ops folder not as intended: max_actions {policy.defaults.max_actions}, "
                               f"{len(policy.constraints.cleanup_roots)} roots, autonomy {await rt.autonomy()}")
        warn, ok = synthetic(roots, "warning"), synthetic(roots, "ok")
        # The synthetic results must be what the real checks say (checked once, outside the timing).
        real = await rt.pulse.beat(everything=True)
        seen = sorted((r.check, r.kind, r.target, r.status) for r in real.results)
        if seen != sorted((r.check, r.kind, r.target, r.status) for r in warn):
            raise RuntimeError(f"the real dir_size checks disagree with the synthetic results: {seen[:3]} ...")

        started: list[float] = []
        verdicts: list[tuple[float, str]] = []
        opened: list[float] = []

        def spawn(name: str, coro: Any) -> None:
            started.append(time.perf_counter())   # "apply started"; then it is not run
            coro.close()

        rt.events.subscribe(lambda e: verdicts.append((time.perf_counter(), e.data["verdict"])), "decision.made")
        rt.events.subscribe(lambda e: opened.append(time.perf_counter()), "incident.opened")
        engine = Engine(rt, spawn=spawn)

        rounds: list[dict[str, Any]] = []
        cold: dict[str, Any] | None = None
        problems: list[str] = []
        for i in range(sc.rounds + 1):   # round 0 is cold: reported apart
            if i > 0 and time.monotonic() > deadline:
                problems.append(f"stopped after {len(rounds)} of {sc.rounds} rounds (--max-seconds)")
                break
            if await engine.incidents.open_incidents():
                raise RuntimeError("a round would start with open incidents")
            started.clear()
            verdicts.clear()
            opened.clear()
            first_id = await rt.events.last_id()
            beat = BeatResult(ts=clock.now(), results=warn, duration_ms=0.0)
            meter.reset()
            t0 = time.perf_counter()
            await engine.on_beat(beat)
            t1 = time.perf_counter()
            m = (meter.writes, meter.reads, meter.store_s, meter.plans, meter.plan_s, meter.validate_s)
            events = await rt.events.last_id() - first_id
            by_type = Counter(e.type for e in await rt.events.list(after_id=first_id, limit=None))
            mix = Counter(v for _, v in verdicts)
            if len(verdicts) != sc.n or mix["act"] != sc.expect_act or len(started) != sc.expect_act:
                problems.append(f"round {i}: {len(verdicts)} decisions {dict(mix)}, {len(started)} started; "
                                f"expected {sc.n} decisions, {sc.expect_act} act")
            ms = lambda t: (t - t0) * 1000  # noqa: E731
            total = (t1 - t0) * 1000
            store_ms, plan_ms, validate_ms = m[2] * 1000, m[4] * 1000, m[5] * 1000
            row = {"total_ms": total, "per_incident_ms": total / sc.n,
                   "incidents_recorded_ms": ms(opened[-1]) if opened else None,
                   "verdict_first_ms": ms(verdicts[0][0]) if verdicts else None,
                   "verdict_last_ms": ms(verdicts[-1][0]) if verdicts else None,
                   "apply_first_ms": ms(started[0]) if started else None,
                   "apply_last_ms": ms(started[-1]) if started else None,
                   "events": events, "event_types": dict(by_type), "verdicts": dict(mix),
                   "writes": m[0], "reads": m[1], "store_ms": store_ms, "plans": m[3], "plan_ms": plan_ms,
                   "validate_ms": validate_ms, "other_ms": total - store_ms - plan_ms - validate_ms}
            if i == 0:
                cold = row
            else:
                rounds.append(row)
            # Back to no open incidents the product's way: an all-ok beat, then past cooldown and window.
            await engine.on_beat(BeatResult(ts=clock.now(), results=ok, duration_ms=0.0))
            clock.advance(25 * 3600)

        # The directory walk alone: the cleanup scan of one root, called directly (no thread, no asyncio).
        args = CleanupArgs(root=str(roots[0]), older_than=7 * DAY)
        now = clock.now().timestamp()
        walks = []
        for _ in range(200):
            t0 = time.perf_counter()
            found, _s = _scan([str(roots[0])], args, now)
            walks.append((time.perf_counter() - t0) * 1000)
        if len(found) != len(list(roots[0].iterdir())):
            problems.append(f"the scan found {len(found)} files, the root holds {len(list(roots[0].iterdir()))}")
    finally:
        await rt.close()

    def col(name: str) -> dict[str, float]:
        return stats([r[name] for r in rounds if r[name] is not None])

    numeric = ["total_ms", "per_incident_ms", "incidents_recorded_ms", "verdict_first_ms", "verdict_last_ms",
               "apply_first_ms", "apply_last_ms", "events", "writes", "reads", "store_ms", "plans", "plan_ms",
               "validate_ms", "other_ms"]
    return {"label": sc.label, "n": sc.n, "rounds": len(rounds), "max_actions": sc.max_actions or "shipped",
            "expect_act": sc.expect_act, "ok": not problems, "problems": problems,
            **{k: col(k) for k in numeric},
            "event_types": rounds[-1]["event_types"] if rounds else {},
            "verdicts": rounds[-1]["verdicts"] if rounds else {},
            "cold": cold, "scan_one_root_ms": stats(walks), "rounds_total_ms": [r["total_ms"] for r in rounds]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Decision overhead of the rules planner (beat -> verdict -> apply).")
    parser.add_argument("--rounds-1", type=int, default=20, help="rounds with 1 incident (default 20)")
    parser.add_argument("--rounds-100", type=int, default=10, help="rounds with 100 incidents, all acting (default 10)")
    parser.add_argument("--rounds-shipped", type=int, default=5,
                        help="rounds with 100 incidents under the shipped max_actions = 5; 0 skips (default 5)")
    parser.add_argument("--files", type=int, default=5, help="old files per cleanup root (default 5)")
    parser.add_argument("--max-seconds", type=float, default=50.0,
                        help="stop early after this long, reporting what was measured (default 50)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    if args.rounds_1 < 1 or args.rounds_100 < 1 or args.rounds_shipped < 0 or args.files < 1 or args.max_seconds <= 0:
        parser.error("--rounds-1/--rounds-100/--files must be at least 1, --rounds-shipped >= 0, --max-seconds > 0")
    logging.basicConfig(level=logging.ERROR)   # the log notification channel would print every notice

    scenarios = [Scenario("n1", "1 incident", 1, args.rounds_1, None, 1),
                 Scenario("n100", f"100 incidents (max_actions {RAISED_MAX_ACTIONS})", 100, args.rounds_100,
                          RAISED_MAX_ACTIONS, 100)]
    if args.rounds_shipped:
        scenarios.append(Scenario("n100_shipped", "100 incidents (shipped max_actions 5)", 100,
                                  args.rounds_shipped, None, 5))
    start = time.monotonic()
    results: dict[str, Any] = {}
    meter = Meter()
    meter.install()
    try:
        for k, sc in enumerate(scenarios):
            # Each scenario may use its share of what is left of the budget.
            deadline = time.monotonic() + (args.max_seconds - (time.monotonic() - start)) / (len(scenarios) - k)
            with tempfile.TemporaryDirectory(prefix="fazt-bench-decide-") as tmp:
                try:
                    config, roots = prepare(Path(tmp), sc.n, args.files, sc.max_actions)
                    results[sc.key] = asyncio.run(run_scenario(sc, config, roots, meter, deadline))
                except RuntimeError as e:
                    results[sc.key] = {"label": sc.label, "n": sc.n, "ok": False, "problems": [str(e)]}
    finally:
        meter.uninstall()
    ok = all(r["ok"] for r in results.values())
    report = {"bench": "decision_overhead", "files_per_root": args.files, "wall_s": time.monotonic() - start,
              "scenarios": results, "target": None, "note": "no target: reported for the record", "ok": ok}
    if args.json:
        print_json(report)
        return 0 if ok else 1

    print(f"decision overhead, rules planner, autonomy medium, cleanup roots of {args.files} old 4 KiB files; "
          "one on_beat per round, state reset between rounds by an all-ok beat + 25 h")
    for r in results.values():
        print(f"{r['label']}:")
        if "total_ms" not in r:
            print(f"  FAILED: {'; '.join(r['problems'])}")
            continue
        c = r["cold"] or {}
        print(f"  {r['rounds']} rounds; verdicts per round {r['verdicts']}; "
              f"cold first round {c.get('total_ms', 0):.1f} ms (not counted)")
        print(f"  {'ms from the start of on_beat':34} {'median':>8} {'p95':>8} {'min':>8} {'max':>8}")
        for key, label in (("incidents_recorded_ms", "incidents recorded (last opened)"),
                           ("verdict_first_ms", "verdict, first decision.made"),
                           ("verdict_last_ms", "verdict, last decision.made"),
                           ("apply_first_ms", "apply started, first"), ("apply_last_ms", "apply started, last"),
                           ("total_ms", "on_beat returned (total)"), ("per_incident_ms", "per incident (total / N)")):
            s = r[key]
            if s["n"]:
                print(f"  {label:34} {s['median']:8.3f} {s['p95']:8.3f} {s['min']:8.3f} {s['max']:8.3f}")
        tot = r["total_ms"]["median"]

        def part(key: str) -> str:
            v = r[key]["median"]
            return f"{v:8.3f} ms ({100 * v / tot:4.1f} %)"

        print(f"  split (medians): store calls {part('store_ms')}: {r['writes']['median']:.0f} write transactions, "
              f"{r['reads']['median']:.0f} reads, {r['events']['median']:.0f} events {r['event_types']}")
        print(f"                   cleanup plan {part('plan_ms')} for {r['plans']['median']:.0f} plans "
              f"(the walk alone, one root: {r['scan_one_root_ms']['median']:.3f} ms)")
        print(f"                   cleanup validate {part('validate_ms')}; the rest (engine, gate, "
              f"event validation, messages) {part('other_ms')}")
        for p in r["problems"]:
            print(f"  PROBLEM: {p}")
    print(f"no target: reported for the record ({report['wall_s']:.1f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
