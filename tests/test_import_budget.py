"""What each process imports, so start-up time and memory do not creep back: the most frequent
commands answer without typer, rich or the libraries of features they do not use; the idle daemon
holds what a beat needs and no more; the fast path (`cli/_fast.py`) prints what typer's path
prints and parses exactly the options typer declares.

Module sets, not milliseconds: a timing assert would flap on a busy machine (bench/cli_latency.py
and bench/idle.py measure the time and the memory).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import typing
from pathlib import Path
from typing import Any

import httpx

from _mcp import destructive_junk, listen
from conftest import Ops, base_env
from fazt_agent.kernel import MODULES as ACTION_MODULE_OF
from fazt_agent.pulse import KINDS

# never needed to read the store or answer a halt
HEAVY = {"typer", "click", "rich", "shellingham", "anthropic", "mcp", "httpx", "httpcore", "apprise", "cryptography",
         "acme", "josepy", "uvicorn", "starlette", "apscheduler", "quickjs", "requests", "psutil"}
# the shipped pulse/system.toml uses `system` and `disk`: the other kinds stay unimported
UNUSED_KINDS = {f"fazt_agent.pulse.{kind}" for kind in set(KINDS) - {"system", "disk"}} | {"fazt_agent.pulse.http_client"}
# the kernel's actions: imported when one is looked up (`kernel.ACTIONS[name]`), never to list the names
ACTION_MODULES = {f"fazt_agent.kernel.{module}" for module in ACTION_MODULE_OF.values()}
# the planner: halts and answers go through the executor alone (`_bodies.executor`)
PLANNER = {"fazt_agent.engine", "fazt_agent.decide.rules"}
# a command that only reads the store imports neither an action nor the event catalogue (the first write does)
READS_NEVER = ACTION_MODULES | PLANNER | {"fazt_agent.event_types"}
# ... and, once a validated command left its snapshot (`_snapshot`), none of the validation and async
# machinery either: the light read path (`cli/_light.py`) is sqlite3, tomllib and json (and no
# dataclasses, inspect or hashlib: ~30 ms of a ~100 ms process on a small server)
LIGHT_NEVER = {"pydantic", "pydantic_core", "annotated_types", "asyncio", "aiosqlite", "typer", "click", "rich",
               "dataclasses", "inspect", "hashlib"}
# what the daemon never holds while idle: the CLI's libraries, the LLM and MCP SDKs (imported at the
# first decision or /mcp request), notification and ACME libraries, check kinds it does not run, and
# the control plane beyond /healthz: starlette and what it loads, the pages, metrics, the webhook and
# the MCP bridge, and uvicorn itself (h11, click) are started at the first request for anything else
# (web/front.py); no websockets (no route takes one); no APScheduler (`_ticker.py` keeps the timetable)
DAEMON_NEVER = {"typer", "rich", "shellingham", "anthropic", "mcp", "httpx", "httpcore", "apprise", "cryptography",
                "acme", "josepy", "quickjs", "requests", "starlette", "anyio", "python_multipart",
                "websockets", "jinja2", "uvicorn", "h11", "click", "apscheduler", "tzlocal"}
# ... nor the package-metadata reader and what it loads (pydantic's plugin scan, fazt_agent/__init__.py)
METADATA = {"importlib.metadata", "email", "email.parser", "zipfile", "csv"}
CONTROL_PLANE = {"fazt_agent.mcp", "fazt_agent.web.metrics", "fazt_agent.web.webhooks", "fazt_agent.web.approvals",
                 "fazt_agent.web.dashboard"}
# a CLI process that writes the modules it imported to argv[1] at exit: as `python -m fazt_agent`, or
# through the typer app (what `main()` does for anything the fast path leaves to typer). Not
# `-X importtime`: it does not see modules imported with importlib.import_module (the check kinds).
_RECORD = ("import atexit, json, sys, runpy; out = sys.argv.pop(1); "
           "atexit.register(lambda: open(out, 'w').write(json.dumps(sorted(sys.modules)))); ")
FAST_PATH = _RECORD + "sys.argv[0] = 'fazt-agent'; runpy.run_module('fazt_agent', run_name='__main__')"
TYPER_PATH = _RECORD + ("from fazt_agent.cli import app, hoist_config; "
                        "app(args=hoist_config(sys.argv[1:]), prog_name='fazt-agent')")
# FAST_PATH that also writes the modules it holds to argv[1].N at its Nth SIGUSR1 (a running daemon's)
SNAPSHOT_PATH = (_RECORD + "import signal\n"
                 "def snapshot(signum, frame, taken=[0]):\n"
                 "    taken[0] += 1\n"
                 "    open(f'{out}.{taken[0]}', 'w').write(json.dumps(sorted(sys.modules)))\n"
                 "signal.signal(signal.SIGUSR1, snapshot)\n"
                 "sys.argv[0] = 'fazt-agent'; runpy.run_module('fazt_agent', run_name='__main__')")


def imports(ops: Ops, *args: str, typer_path: bool = False,
            env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run the CLI (as `python -m fazt_agent`, or through the typer app; in `env`, else `base_env()`):
    its result and every module it imported."""
    out = ops.dir.parent / "modules.json"
    out.unlink(missing_ok=True)
    result = subprocess.run([sys.executable, "-c", TYPER_PATH if typer_path else FAST_PATH, str(out),
                             "--config", str(ops.config), *args],
                            capture_output=True, text=True, timeout=120, env=env or base_env(), cwd=ops.dir)
    return result, set(json.loads(out.read_text()))


def packages(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def ask(ops: Ops, root: Path) -> int:
    """A pending halt: `actions run cleanup` on a destructive root at medium autonomy asks."""
    result = ops.cli("actions", "run", "cleanup", "--arg", f"root={root}", "--arg", "older_than=7d", "--json")
    assert result.returncode == 0, result.stderr
    return int(json.loads(result.stdout)["halt_id"])


def test_the_frequent_commands_import_neither_typer_nor_rich_nor_unused_features(ops: Ops, tmp_path: Path) -> None:
    root, files = destructive_junk(ops, tmp_path)
    assert ops.cli("beat").returncode in (0, 1)
    halt = ask(ops, root)   # a validated command: it leaves the snapshot the reads below use
    # the reads: no pydantic, asyncio, typer or rich, not a check kind nor an action (nothing validated)
    for args, expected in ((["status"], "health"), (["status", "--json"], '"health"'),
                           (["events", "list", "--limit", "50"], "halt.requested"),
                           (["events", "list", "--type", "halt.*", "--json"], '"halt.requested"'),
                           (["halts", "list"], f"{halt:>5} pending"), (["halts", "list", "--all", "--json"], '"pending"')):
        result, modules = imports(ops, *args)
        assert result.returncode == 0, (args, result.stderr)
        assert expected in result.stdout, (args, result.stdout)
        assert not packages(modules) & (HEAVY | LIGHT_NEVER), (args, sorted(packages(modules) & (HEAVY | LIGHT_NEVER)))
        assert not {m for m in modules if m.startswith(("fazt_agent.pulse", "fazt_agent.kernel"))}, args
        assert not modules & READS_NEVER, (args, sorted(modules & READS_NEVER))
    # approving validates and acts: the kinds in use and the plan's action, never typer, rich or the planner
    result, modules = imports(ops, "approve", str(halt))
    assert result.returncode == 0 and f"halt {halt}: approve" in result.stdout, result.stderr
    assert not packages(modules) & HEAVY, sorted(packages(modules) & HEAVY)
    assert not modules & UNUSED_KINDS, sorted(modules & UNUSED_KINDS)
    assert {"fazt_agent.pulse.system", "fazt_agent.pulse.disk"} <= modules   # the kinds in use
    assert not modules & PLANNER, sorted(modules & PLANNER)
    assert modules & ACTION_MODULES == {"fazt_agent.kernel.cleanup"}, sorted(modules & ACTION_MODULES)
    assert not any(f.exists() for f in files)   # the approval ran the cleanup


def test_the_fast_path_prints_what_typer_prints(ops: Ops, tmp_path: Path) -> None:
    """The same output, errors and exit codes either way, typer not imported by the fast one."""
    root, _ = destructive_junk(ops, tmp_path)
    ops.write_pulse("junk", f'[[checks]]\nname = "junk"\nkind = "dir_size"\npath = "{root}"\nwarning = "1KB"\n',
                    only=False)
    assert ops.cli("beat").returncode == 1                    # junk is over its limit: a problem to show
    halt = ask(ops, root)
    ops.write_pulse("broken", '[[checks]]\nname = "x"\nkind = "telepathy"\n', only=False)   # reads warn, approve refuses
    cases = [["status"], ["status", "--json"], ["events", "list", "--limit", "7"],
             ["events", "list", "--type", "halt.*", "--since", "1h", "--json"], ["halts", "list", "--all"],
             ["halts", "list", "--json"], ["events", "list", "--since", "soon"], ["deny", "999"],
             ["approve", str(halt), "--note", "checked the plan"]]
    light = (["status"], ["status", "--json"], ["events", "list", "--limit", "7"],
             ["events", "list", "--type", "halt.*", "--since", "1h", "--json"], ["halts", "list", "--all"],
             ["halts", "list", "--json"],   # after a validated run (the previous case's): the light read path
             ["events", "list", "--since", "soon"])   # refused before the config is read, either way
    for args in cases:
        typer_result, typer_modules = imports(ops, *args, typer_path=True)
        fast_result, fast_modules = imports(ops, *args)
        assert "typer" in packages(typer_modules) and "typer" not in packages(fast_modules), args
        assert (not packages(fast_modules) & LIGHT_NEVER) == (args in light), (args, packages(fast_modules) & LIGHT_NEVER)
        assert (fast_result.returncode, fast_result.stdout, fast_result.stderr) == \
               (typer_result.returncode, typer_result.stdout, typer_result.stderr), args
    assert "kind 'telepathy'" in fast_result.stderr and fast_result.returncode == 2   # approve refused


def test_typer_parses_what_the_fast_path_does_not(ops: Ops) -> None:
    """Help, a bad value, an unknown option, `--` and --version go to typer, which says what it says."""
    for args, code, text in ((["status", "--help"], 0, "Usage: fazt-agent status"),
                             (["events", "list", "--limit", "0"], 2, "Invalid value for '--limit'"),
                             (["events", "list", "--limit", "5_0"], 0, ""),
                             (["halts", "list", "--nope"], 2, "No such option: --nope"),
                             (["approve", "x1"], 2, "Invalid value for 'halt_id'"),
                             (["--version"], 0, "fazt-agent ")):
        result, modules = imports(ops, *args)
        assert result.returncode == code, (args, result.stderr)
        assert text in result.stdout + result.stderr, (args, result.stdout, result.stderr)
        assert "typer" in packages(modules), args
    result, modules = imports(ops, "events", "list", "--limit", "50")   # a plain value: no typer
    assert result.returncode == 0 and "typer" not in packages(modules), result.stderr


def _typer_params(path: list[str]) -> list[dict[str, Any]]:
    import typer.main

    from fazt_agent.cli import app

    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    out = []
    for p in command.params:
        annotation = p.type_descriptor.annotation
        if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType")):
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        assert not (p.envvar or p.multiple or p.callback or p.is_eager or p.nargs != 1 or p.secondary_opts
                    or getattr(p, "prompt", None) or getattr(p, "count", False)), (path, p.name)
        option = type(p).__name__ == "TyperOption"
        out.append({"name": p.name, "flags": sorted(p.opts) if option else [], "kind": annotation.__name__,
                    "default": p.default, "min": p.min, "max": p.max, "required": p.required})
    return out


def test_the_fast_path_knows_exactly_the_options_typer_declares() -> None:
    import typer.main

    from fazt_agent.cli import _fast, app

    for path, params in _fast.describe().items():
        assert params == _typer_params(path.split()), path
    callback = typer.main.get_command(app)
    # the global options: --config (which the fast path reads) and the eager/completion ones it leaves to typer
    config = next(p for p in callback.params if p.name == "config")
    assert sorted(config.opts) == sorted(_fast.CONFIG_FLAGS) and not config.envvar
    assert {p.name for p in callback.params} == {"config", "_version", "install_completion", "show_completion"}


def _snapshot(daemon: subprocess.Popen[str], path: Path) -> set[str]:
    """The modules the running daemon holds now (SNAPSHOT_PATH writes them at SIGUSR1)."""
    daemon.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            return set(json.loads(path.read_text()))
        except (OSError, ValueError):   # not written yet, or half written
            time.sleep(0.05)
    raise AssertionError(f"no module list at {path}")


def _healthz(url: str) -> tuple[int, list[str], str, list[str]]:
    """/healthz as its client sees it: status, header names (without date), content type, JSON keys."""
    reply = httpx.get(url, timeout=5)
    return (reply.status_code, sorted(k for k in reply.headers if k != "date"), reply.headers["content-type"],
            sorted(reply.json()))


def test_the_idle_daemon_holds_what_a_beat_needs(ops: Ops, tmp_path: Path) -> None:
    """Idle (beats, /healthz polled), the daemon holds what a beat needs; /mcp is served by the front
    door and the worker without uvicorn or the MCP SDK in the daemon; the first request for anything
    else builds the rest of the control plane, and /healthz answers alike before and after."""
    out = tmp_path / "daemon-modules.json"
    daemon = subprocess.Popen([sys.executable, "-c", SNAPSHOT_PATH, str(out), "--config", str(ops.config), "run"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=base_env())
    healthz = f"http://{listen(ops)}/healthz"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert daemon.poll() is None, daemon.stderr.read() if daemon.stderr else ""
            try:
                health = httpx.get(healthz, timeout=1).json()
                if health.get("last_beat"):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError("no beat within 60 s")
        before = _healthz(healthz)
        assert httpx.head(healthz, timeout=5).status_code == 200
        idle = _snapshot(daemon, Path(f"{out}.1"))
        mcp = httpx.post(f"http://{listen(ops)}/mcp", json={}, timeout=60)   # the worker starts, refuses: no token
        assert mcp.status_code == 401 and mcp.headers["www-authenticate"].startswith("Bearer"), mcp.text
        through_mcp = _snapshot(daemon, Path(f"{out}.2"))
        assert httpx.get(f"http://{listen(ops)}/metrics", timeout=5).status_code == 401   # no token: refused
        after = _healthz(healthz)
        served = _snapshot(daemon, Path(f"{out}.3"))
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=20)
    assert daemon.returncode == 0, err
    assert not packages(idle) & DAEMON_NEVER, sorted(packages(idle) & DAEMON_NEVER)
    assert not idle & METADATA, sorted(idle & METADATA)
    assert not idle & UNUSED_KINDS, sorted(idle & UNUSED_KINDS)
    assert not {m for m in idle if m.startswith("fazt_agent.cli.") and m not in
                ("fazt_agent.cli._fast", "fazt_agent.cli._bodies", "fazt_agent.cli._common")}
    assert not {m for m in idle if m.startswith(tuple(CONTROL_PLANE))}, sorted(m for m in idle if "web." in m)
    assert not idle & ACTION_MODULES, sorted(idle & ACTION_MODULES)   # nothing was planned
    assert {"fazt_agent.pulse.system", "fazt_agent.pulse.disk", "psutil"} <= idle   # what its beat runs
    http_server = {"uvicorn", "h11", "click", "starlette", "anyio", "mcp", "jinja2"}
    assert not packages(through_mcp) & http_server, sorted(packages(through_mcp) & http_server)
    assert {"fazt_agent.mcp.worker", "fazt_agent.mcp.bridge"} <= through_mcp
    assert not {m for m in through_mcp if m.startswith(tuple(CONTROL_PLANE - {"fazt_agent.mcp"}))}
    assert CONTROL_PLANE | {"starlette", "uvicorn"} <= served | packages(served), sorted(CONTROL_PLANE - served)
    assert before == after == (200, ["content-length", "content-type", "server"], "application/json",
                               ["last_beat", "last_beat_age_s", "last_beat_status", "mcp_worker_pid", "ready", "status",
                                "uptime_s", "version"])


def printed(code: str) -> Any:
    """What `python -c code` prints, as JSON (the process must succeed)."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=base_env())
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_pydantic_finds_no_plugins_and_never_scans_the_installed_packages() -> None:
    """fazt_agent's stand-in for pydantic's plugin loader: models build and validate without it reading
    any package's metadata, and pydantic still asks the loader for nothing but `get_plugins` (a pydantic
    that asked for more would fail here, not in the daemon)."""
    code = ("import sys, json, fazt_agent, pydantic\n"
            "class M(pydantic.BaseModel):\n    port: int\n"
            "from pydantic.plugin import _schema_validator\n"
            "print(json.dumps([M(port='8080').port, 'importlib.metadata' in sys.modules, "
            "type(M.__pydantic_validator__).__name__]))")
    assert printed(code) == [8080, False, "SchemaValidator"]
    import pydantic

    uses = []
    for path in Path(pydantic.__file__).parent.rglob("*.py"):
        if path.name != "_loader.py":
            uses += [line.strip() for line in path.read_text().splitlines() if "_loader" in line]
    assert uses == ["from ._loader import get_plugins"], uses


def test_importing_the_code_builds_no_model() -> None:
    """Every model base defers its build: importing the daemon's and the commands' code (every check
    kind and kernel action, the event catalogue) builds no pydantic validator; a command builds the
    models it validates, when it validates them."""
    code = ("import importlib, json, pydantic, fazt_agent.daemon, fazt_agent.engine, fazt_agent.definitions, "
            "fazt_agent.event_types, fazt_agent.web.webhooks, fazt_agent.decide.investigate\n"
            "from fazt_agent.kernel import ACTIONS\nfrom fazt_agent.pulse import CHECKS\n"
            "kinds, actions = list(CHECKS.values()), list(ACTIONS.values())\n"
            "def every(cls):\n"
            "    for sub in cls.__subclasses__():\n"
            "        yield sub\n"
            "        yield from every(sub)\n"
            "ours = {m for m in every(pydantic.BaseModel) if m.__module__.startswith('fazt_agent.')}\n"
            "print(json.dumps([len(ours), sorted(f'{m.__module__}.{m.__qualname__}' for m in ours "
            "if m.__pydantic_complete__)]))")
    count, built = printed(code)
    assert count > 100 and built == [], built


def test_the_kernel_lists_every_action_with_the_module_that_registers_it() -> None:
    """`kernel.MODULES` is what the action modules register: a lookup imports the right module, and an
    action added without its line there fails here."""
    import importlib
    import pkgutil

    from fazt_agent import kernel
    from fazt_agent.kernel import base

    for module in pkgutil.iter_modules(kernel.__path__):
        importlib.import_module(f"fazt_agent.kernel.{module.name}")
    assert {name: cls.__module__ for name, cls in base.ACTIONS.items()} == \
           {name: f"fazt_agent.kernel.{module}" for name, module in kernel.MODULES.items()}
    assert list(kernel.ACTIONS) == list(kernel.MODULES) and kernel.ACTIONS["cleanup"] is base.ACTIONS["cleanup"]
    assert "nope" not in kernel.ACTIONS and kernel.ACTIONS.get("nope") is None


def test_each_check_table_is_validated_by_its_own_kind(ops: Ops) -> None:
    """Only the kinds in use are built, and the keys of an error are the table's own (a `command`
    check's own `command` key is not taken for the kind's name); an unknown kind lists every kind."""
    path = ops.write_pulse("c", '[[checks]]\nname = "c"\nkind = "command"\ncommand = 5\ntimeout = "abc"\n')
    result = ops.cli("config", "check")
    assert result.returncode == 2
    assert f"{path}:checks[0].timeout: expected a duration" in result.stderr, result.stderr
    assert f"{path}:checks[0].command: Input should be a valid list (got 5)" in result.stderr, result.stderr
    path = ops.write_pulse("u", '[[checks]]\nname = "s"\nkind = "system"\n\n[[checks]]\nname = "u"\nkind = "nope"\n')
    result = ops.cli("config", "check")
    accepted = ", ".join(repr(kind) for kind in KINDS)
    assert f"{path}:checks[1].kind: unknown kind 'nope' (accepted: {accepted})" in result.stderr, result.stderr
