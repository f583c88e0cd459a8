"""The light read path (`cli/_light.py`): `status`, `events list` and `halts list` answer with
sqlite3, tomllib and json from the snapshot the last validated command left (`_snapshot`), and
print exactly what the validated path prints; anything it cannot vouch for (an edit of the config
or of a definition, `${NAME}`, an LLM key that came or went, a `--since` that is no duration, a halt due for its reminder or expiry) goes
to the validated path, which says what it always said.

Each comparison runs the command through the typer app (always validated) and as `python -m
fazt_agent` (the light path once a snapshot exists), on the same ops folder, and checks the second
imported no pydantic (so it really was the light path that answered).
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

from _mcp import destructive_junk, fill
from conftest import Ops, base_env
from test_import_budget import LIGHT_NEVER, ask, imports, packages

LIGHT_READS = (["status"], ["status", "--json"], ["events", "list", "--limit", "50"],
               ["events", "list", "--type", "halt.*", "--limit", "3", "--json"], ["halts", "list"],
               ["halts", "list", "--all"], ["halts", "list", "--all", "--json"])


def same_both_ways(ops: Ops, args: list[str], *, light: bool | None,
                   env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run `args` as the fast path, then validated: the same exit code, stdout and stderr; `light`: the
    first imported none of the validation and async machinery (False: it did; None: either). The fast
    path runs first: the validated run writes a snapshot, so after an edit it would make the fast one
    light."""
    fast, modules = imports(ops, *args, env=env)
    validated, _ = imports(ops, *args, typer_path=True, env=env)
    assert (fast.returncode, fast.stdout, fast.stderr) == (validated.returncode, validated.stdout, validated.stderr), args
    if light is not None:
        assert (not packages(modules) & LIGHT_NEVER) == light, (args, sorted(packages(modules) & LIGHT_NEVER))
    return fast.returncode, fast.stdout, fast.stderr


def test_the_light_path_prints_what_the_validated_path_prints(ops: Ops, tmp_path: Path) -> None:
    root, _ = destructive_junk(ops, tmp_path)
    ops.set_config("llm", "model", "claude-unpriced-1")   # a warning: no price known (a note in status)
    assert ops.cli("beat").returncode in (0, 1)
    for sub in ("b", "c"):
        (root / sub).mkdir()
        fill(root / sub, 2)
    denied, approved, pending = ask(ops, root), ask(ops, root / "b"), ask(ops, root / "c")
    assert ops.cli("deny", str(denied), "--note", "not today").returncode == 0
    assert ops.cli("approve", str(approved)).returncode == 0
    for args in LIGHT_READS:
        same_both_ways(ops, args, light=True)
    assert ops.cli("autonomy", "high").returncode == 0   # an override in force
    assert ops.cli("pause").returncode == 0              # paused, by cli
    ops.write_pulse("broken", '[[checks]]\nname = "x"\nkind = "telepathy"\n', only=False)   # a warning line
    code, out, err = same_both_ways(ops, ["status"], light=False)   # the edit: validated, then a new snapshot
    for args in LIGHT_READS:
        code, out, err = same_both_ways(ops, args, light=True)
    status = json.loads(imports(ops, "status", "--json")[0].stdout)
    assert status["paused"] and status["paused_by"] == "cli" and status["autonomy"] == "high", status
    assert status["autonomy_detail"]["source"] == "override" and status["checks"] == 2, status
    assert any("claude-unpriced-1" in note for note in status["notes"]), status["notes"]
    assert "warning: broken definitions:" in err and "telepathy" in err, err
    listed = json.loads(imports(ops, "halts", "list", "--all", "--json")[0].stdout)
    assert {(h["id"], h["status"], h["answer"]) for h in listed} >= {
        (denied, "answered", "deny"), (approved, "answered", "approve"), (pending, "pending", None)}, listed


def test_a_config_edit_is_validated_before_a_light_answer(ops: Ops) -> None:
    """A bad value of a key status uses, and of one it does not, stop it as they always did (the
    validated path's `FILE:KEY: message`, exit 2): the light path never answers for bytes that were
    not validated. Put back as it was validated, the snapshot of those bytes holds again."""
    assert ops.cli("beat").returncode in (0, 1)
    same_both_ways(ops, ["status"], light=True)
    good = ops.config.read_text()
    for section, key, value, message in (
            ("pulse", "interval", "soon", "expected a duration"),          # status reads it (its horizon)
            ("agent", "data_dir", 5, "agent.data_dir"),                    # where the store is
            ("agent", "personality", "grumpy", "agent.personality"),      # shown by --json
            ("http", "listen", "nowhere", "expected HOST:PORT")):          # not read by status: refused as ever
        ops.set_config(section, key, value)
        code, out, err = same_both_ways(ops, ["status"], light=False)
        assert code == 2 and out == "" and f"{ops.config}:{section}.{key}: " in err and message in err, err
        ops.config.write_text(good)
    same_both_ways(ops, ["status"], light=True)   # the bytes validated before: light at once
    ops.config.write_text(good + "\n# an edit that changes nothing but the bytes\n")
    same_both_ways(ops, ["status"], light=False)   # other bytes: validated once ...
    same_both_ways(ops, ["status"], light=True)    # ... then light


def test_a_definition_edit_is_seen_by_the_next_command(ops: Ops) -> None:
    assert ops.cli("beat").returncode in (0, 1)
    same_both_ways(ops, ["status", "--json"], light=True)
    ops.write_pulse("more", '[[checks]]\nname = "system-2"\nkind = "system"\n', only=False)
    _, out, err = same_both_ways(ops, ["status", "--json"], light=False)
    assert json.loads(out)["checks"] == 3 and err == "", err
    _, out, _ = same_both_ways(ops, ["status", "--json"], light=True)
    assert json.loads(out)["checks"] == 3
    (ops.dir / "policies" / "zz.toml").write_text("[[rules]]\nnope = 1\n")   # a broken policy: a warning line
    _, _, err = same_both_ways(ops, ["events", "list"], light=False)
    assert "warning: broken definitions:" in err and "zz.toml" in err, err
    _, _, err = same_both_ways(ops, ["events", "list"], light=True)
    assert "warning: broken definitions:" in err and "zz.toml" in err, err


def test_what_the_light_path_cannot_vouch_for_is_validated(ops: Ops, tmp_path: Path) -> None:
    root, _ = destructive_junk(ops, tmp_path)
    assert ops.cli("beat").returncode in (0, 1)
    halt = ask(ops, root)
    same_both_ways(ops, ["halts", "list"], light=True)
    # --since: parsed without pydantic; the events of the window (ours: all of them, then none)
    _, out, _ = same_both_ways(ops, ["events", "list", "--since", "1h", "--json"], light=True)
    assert any(e["type"] == "halt.requested" for e in json.loads(out)), out
    _, out, _ = same_both_ways(ops, ["events", "list", "--type", "halt.*", "--since", "0s", "--json"], light=True)
    assert json.loads(out) == [], out
    # not a duration: refused as ever (before the config is read either way)
    code, out, err = same_both_ways(ops, ["events", "list", "--since", "soon"], light=None)
    assert code == 2 and "expected a duration" in err, err
    # an LLM key that comes or goes changes what status says of the LLM: validated once, then light;
    # with the LLM in use, its spending is counted from llm_calls as decide.budget counts it
    now = datetime.now(timezone.utc)
    with sqlite3.connect(ops.data_dir / "fazt-agent.db") as db:
        db.executemany("INSERT INTO llm_calls(ts, purpose, model, input_tokens, output_tokens, cached_tokens,"
                       " cost_usd, latency_ms, ok) VALUES (?, 'decide', 'm', ?, 50, 10, 0.0125, 900, 1)",
                       [((now - ago).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), tokens) for ago, tokens in (
                           (timedelta(minutes=5), 1000), (timedelta(hours=3), 2000), (timedelta(days=2), 4000))])
    keyed = base_env(ANTHROPIC_API_KEY="sk-test")
    _, out, _ = same_both_ways(ops, ["status", "--json"], light=False, env=keyed)
    _, out, _ = same_both_ways(ops, ["status", "--json"], light=True, env=keyed)
    llm = json.loads(out)["llm"]
    assert llm["configured"] is True and llm["spent"] == {
        "calls_per_hour": 1, "tokens_per_day": 3120, "usd_per_day": 0.025}, llm
    _, out, _ = same_both_ways(ops, ["status", "--json"], light=False)   # the key went
    assert json.loads(out)["llm"]["configured"] is False
    same_both_ways(ops, ["status"], light=True)
    # the halt's expiry is due: the validated path expires it (and records it) before listing
    past = (datetime.now(timezone.utc) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    with sqlite3.connect(ops.data_dir / "fazt-agent.db") as db:
        db.execute("UPDATE halts SET expires_at = ? WHERE id = ?", (past, halt))
    result, modules = imports(ops, "halts", "list")   # (only the first run expires it and tells the owner)
    assert result.returncode == 0 and result.stdout == "no pending halts\n", result.stdout
    assert f"Halt {halt} got no answer" in result.stderr and "pydantic" in packages(modules), result.stderr
    assert f'"halt_id": {halt}' in imports(ops, "events", "list", "--type", "halt.expired", "--json")[0].stdout
    # a ${NAME} in the config: its value is a secret the snapshot must not hold, so every run validates
    config = ops.config.read_text().replace('personality = "helpful"', 'personality = "${TONE}"')
    ops.config.write_text(config)
    for _ in range(2):
        result = ops.cli("status", "--json", env=base_env(TONE="terse"))
        assert result.returncode == 0 and json.loads(result.stdout)["personality"] == "terse", result.stderr
    result = ops.cli("status", "--json")   # unset: the validated path says which variable
    assert result.returncode == 2 and f"{ops.config}:agent.personality: environment variable 'TONE' is not set" \
        in result.stderr, result.stderr


def test_the_light_path_reads_with_the_runtimes_queries() -> None:
    """What `_light` repeats of the Runtime's read side (constants it cannot import without
    pydantic; the queries themselves are shared, `fazt_agent/_sql.py`) is the same as there: the
    output tests above cover the rows, this the rest."""
    from fazt_agent import _ready_db, status, store
    from fazt_agent.cli import _light
    from fazt_agent.kernel.base import Plan
    from fazt_agent.pulse import base

    assert _ready_db.APPLICATION_ID == store.APPLICATION_ID
    assert status.SEVERITY == base.SEVERITY
    assert _light.PLAN_KEYS == tuple(Plan.__dataclass_fields__)
    assert {k: v.default_factory() if callable(v.default_factory) else v.default   # type: ignore[misc]
            for k, v in Plan.__dataclass_fields__.items() if k in _light.PLAN_DEFAULTS} == _light.PLAN_DEFAULTS
