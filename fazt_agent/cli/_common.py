"""What every CLI command shares: the loaded config, async running, output and errors.

Exit codes: 0 ok, 1 a problem was found (or the operation failed), 2 usage or config error.
"""

from __future__ import annotations

import asyncio
import json
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, NoReturn, TypeVar

import typer

from ..errors import ConfigError, FaztAgentError

T = TypeVar("T")

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2


class State:
    """Global options, set by the app callback."""

    config_path: Path | None = None


state = State()


def fail(message: str, hint: str | None = None, code: int = EXIT_PROBLEM) -> NoReturn:
    """Print one readable error line (and a hint) to stderr and exit with `code`."""
    typer.secho(f"error: {message}", err=True, fg="red")
    if hint:
        typer.echo(f"hint: {hint}", err=True)
    raise typer.Exit(code)


NOTIFY_LOGGER = "fazt_agent.notify"


def cli_logging() -> None:
    """Logs of a one-shot command: warnings and worse, and every notification. Without notification
    URLs the log is the owner's channel, so `beat` shows "done: ..." (info) as well as the warnings."""
    import logging

    from .. import logs

    logs.setup("warning")
    logging.getLogger(NOTIFY_LOGGER).setLevel(logging.INFO)


def service_logging(level: str, fmt: str) -> None:
    """Logs of a long-running process (`run`, `mcp serve --http`): the configured level and format
    for everything, notifications included."""
    import logging

    from .. import logs

    logs.setup(level, fmt)
    logging.getLogger(NOTIFY_LOGGER).setLevel(logging.NOTSET)


def load() -> Any:
    """The configuration, or exit 2 with `FILE:KEY` lines."""
    from .. import logs
    from ..config import load_config

    try:
        config = load_config(state.config_path)
    except ConfigError as e:
        report_config_error(e)
    logs.add_secrets(config.secrets)
    return config


def report_config_error(e: ConfigError) -> NoReturn:
    for issue in e.issues:
        typer.secho(str(issue), err=True, fg="red")
    raise typer.Exit(EXIT_USAGE)


def report_broken(e: Any) -> NoReturn:
    """A command that acts on the definitions, refused while one is broken: the FILE:KEY lines, then why."""
    for issue in e.issues:
        typer.secho(str(issue), err=True, fg="red")
    fail(f"{e.what} needs valid definitions: fix what is listed above (`fazt-agent config check` lists every "
         "error); a running daemon keeps its last good definitions", hint=e.hint, code=EXIT_USAGE)


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Run an async command body, turning our errors into one-line messages."""
    from ..definitions import DefinitionsBroken

    try:
        return asyncio.run(coro_fn())  # type: ignore[arg-type]
    except DefinitionsBroken as e:
        report_broken(e)
    except ConfigError as e:
        report_config_error(e)
    except FaztAgentError as e:
        fail(str(e))


@asynccontextmanager
async def runtime(config: Any = None, *, needs_definitions: str | None = "this command",
                  hint: str | None = None) -> AsyncIterator[Any]:
    """An open Runtime on the configured data dir, closed afterwards.

    `needs_definitions` says what the command does with the definitions (the policy, checks,
    kernel settings, prompts): while a file is broken it is refused (exit 2, the FILE:KEY lines
    and `hint`). None for commands that only read the store or deny (status, lists, `deny`, the
    event log, tokens, pause): they work with what loaded and one warning line naming the broken
    file, so one bad edit never locks the owner out while the daemon keeps its last good set.
    """
    from ..definitions import broken_summary
    from ..runtime import Runtime

    rt = await Runtime.open(config or load(), lenient=True)
    try:
        if needs_definitions is not None:
            rt.require_definitions(needs_definitions, hint)
        elif rt.issues:
            typer.secho(f"warning: broken definitions: {broken_summary(rt.issues)} (a running daemon keeps its last "
                        "good definitions; commands that act on them refuse until it is fixed)", err=True, fg="yellow")
        yield rt
    finally:
        await rt.close()


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def console() -> Any:
    """A rich console that never interprets markup: check messages, paths and targets are
    untrusted text (`disk[/]` must print as it is)."""
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True, markup=False)


STATUS_STYLE = {"ok": "green", "warning": "yellow", "critical": "bold red", "unknown": "magenta"}


def styled(status: str) -> Any:
    """A status word in its colour (a rich Text, safe in tables and `line()`)."""
    from rich.text import Text

    return Text(status, style=STATUS_STYLE.get(status, ""))


def line(*parts: Any) -> Any:
    """One output line from plain strings (printed as they are) and styled Text pieces."""
    from rich.text import Text

    return Text.assemble(*parts)
