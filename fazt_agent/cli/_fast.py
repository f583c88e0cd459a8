"""The most frequent commands, run before typer is imported.

typer costs more than these commands may take in all: importing it (and its click) and building a
pydantic TypeAdapter for every parameter at parse time make a two-option typer app ~140 ms of CPU
per process (`python -c pass` 11 ms, `monit status` 8 ms), and add ~60 ms to `status` here, where
pydantic is loaded anyway. So `run`, `status`, `events list`, `halts list`, `approve` and
`deny` are parsed here when their arguments are plain: the options below, each at most once, with
values that need no conversion beyond digits, `--config` before the command. Anything else (help,
--version, completion, a typo, `--limit 5_0`, an option value that starts with `-`, `--`) returns
to `main()`, and typer parses it and prints its usual help or error. Both ways call the same
bodies (`_bodies`) after the same global setup (`_app._global`). tests/test_import_budget.py checks
that the options here are typer's (names, defaults, bounds), so the two cannot drift apart.

The reads (`status`, `events list`, `halts list`, marked `light`) go one step further first:
`_light` answers them with sqlite3, tomllib and json from the snapshot the last validated command
left (no pydantic, asyncio or aiosqlite), or declines having printed nothing, and `_bodies` runs.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, NamedTuple

MAX_DIGITS = 18   # beyond this typer decides (a number too large for SQLite, its bounds)


class Param(NamedTuple):
    """One option (flags) or, without flags, the next positional argument."""

    name: str                      # the keyword of the body
    kind: type                     # bool (a flag), int or str
    default: Any = None
    flags: tuple[str, ...] = ()
    min: int | None = None
    max: int | None = None
    required: bool = False


class Command(NamedTuple):
    body: str                      # the function of `_bodies` that runs it
    params: tuple[Param, ...] = ()
    light: bool = False            # `_light` may answer it (reads the store only), before `_bodies`


JSON = Param("as_json", bool, False, ("--json",))
NOTE = Param("note", str, None, ("--note",))
HALT_ID = Param("halt_id", int, required=True)
SERVER = Param("server", str, None, ("--server",))   # another agent, through its /mcp (fleet/commands.py)

COMMANDS: dict[tuple[str, ...], Command] = {
    ("run",): Command("run_daemon", (Param("log_format", str, None, ("--log-format",)),
                                     Param("log_level", str, None, ("--log-level",)))),
    ("status",): Command("status", (JSON, SERVER), light=True),
    ("events", "list"): Command("events_list", (Param("type_glob", str, None, ("--type",)),
                                                Param("since", str, None, ("--since",)),
                                                Param("limit", int, 50, ("--limit",), min=1),
                                                JSON, SERVER), light=True),
    ("halts", "list"): Command("halts_list", (Param("all_", bool, False, ("--all",)), JSON, SERVER), light=True),
    ("approve",): Command("approve", (HALT_ID, NOTE, JSON, SERVER)),
    ("deny",): Command("deny", (HALT_ID, NOTE, JSON, SERVER)),
}
CONFIG_FLAGS = ("--config", "-c")
COMPLETE_VAR = "_FAZT_AGENT_COMPLETE"   # typer's shell completion asks through this


def run_fast(argv: list[str]) -> None:
    """Run `argv` here when it is a plain form of a command above (never returns then: exits with
    the command's code); return when typer is needed."""
    parsed = parse(argv)
    if parsed is None:
        return
    command, config, kwargs = parsed
    from ._common import state

    state.config_path = config
    body = command.body
    try:
        if command.light:   # status, events list, halts list: without pydantic or asyncio when it can
            from . import _light

            if _light.run(body, kwargs):
                raise SystemExit(0)
        from . import _bodies
        from ._common import cli_logging

        if body not in ("approve", "deny"):   # those set logging up when they answer here, not through the daemon
            cli_logging()
        getattr(_bodies, body)(**kwargs)
    except KeyboardInterrupt:
        raise SystemExit(130) from None   # as typer: quietly, 128 + SIGINT
    raise SystemExit(0)   # an OSError (a closed pipe, a full disk) goes to main(), as from typer


def parse(argv: list[str]) -> tuple[Command, Path | None, dict[str, Any]] | None:
    """(command, --config, keyword arguments), or None when typer must parse `argv`."""
    if os.environ.get(COMPLETE_VAR):
        return None
    config, i = None, 0
    while i < len(argv) and argv[i].startswith("-"):
        flag, eq, value = argv[i].partition("=")
        if flag not in CONFIG_FLAGS or config is not None or (eq and flag != "--config"):
            return None
        if not eq:
            if i + 1 >= len(argv):
                return None
            value, i = argv[i + 1], i + 1
        config = _config_path(value)
        if config is None:
            return None
        i += 1
    for size in (2, 1):
        command = COMMANDS.get(tuple(argv[i:i + size]))
        if command is not None:
            kwargs = _parse_params(command.params, argv[i + size:])
            return None if kwargs is None else (command, config, kwargs)
    return None


def _parse_params(params: tuple[Param, ...], args: list[str]) -> dict[str, Any] | None:
    options = {flag: p for p in params for flag in p.flags}
    positional = [p for p in params if not p.flags]
    given: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-") and arg != "-":
            flag, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
            param = options.get(flag)
            if param is None or param.name in given:
                return None
            if param.kind is bool:
                if eq:
                    return None
                given[param.name] = True
                i += 1
                continue
            if not eq:
                if i + 1 >= len(args):
                    return None
                value, i = args[i + 1], i + 1
            if value.startswith("-"):
                return None
        else:
            if not positional:
                return None
            param, value = positional.pop(0), arg
        converted = _convert(param, value)
        if converted is None:
            return None
        given[param.name] = converted
        i += 1
    if any(p.required for p in positional):
        return None
    return {p.name: given.get(p.name, p.default) for p in params}


def _convert(param: Param, value: str) -> Any:
    """The value as typer would have it, or None when only typer can say (or refuse)."""
    if param.kind is int:
        if not (value.isascii() and value.isdigit()) or len(value) > MAX_DIGITS:
            return None
        number = int(value)
        if (param.min is not None and number < param.min) or (param.max is not None and number > param.max):
            return None
        return number
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:   # undecodable bytes in argv: typer's conversion decides
        return None
    return value


def _config_path(value: str) -> Path | None:
    """`--config FILE` as typer's check leaves it (a path that is not a directory and is readable if it
    exists); None when typer must judge it (it then says what is wrong)."""
    if not value or value.startswith("-") or "\0" in value or _convert(Param("config", str), value) is None:
        return None
    try:
        mode = os.stat(value).st_mode
    except OSError:
        return Path(value)   # a missing file: load_config says so
    if stat.S_ISDIR(mode) or not os.access(value, os.R_OK):
        return None
    return Path(value)


def describe() -> dict[str, list[dict[str, Any]]]:
    """The parameters of every command here, in the shape the typer declarations are compared in."""
    return {" ".join(path): [_describe(p) for p in command.params] for path, command in COMMANDS.items()}


def _describe(p: Param) -> dict[str, Any]:
    return {"name": p.name, "flags": sorted(p.flags), "kind": p.kind.__name__, "default": p.default,
            "min": p.min, "max": p.max, "required": p.required}


