"""What every CLI command shares: the loaded config, async running, output and errors.

Exit codes: 0 ok, 1 a problem was found (or the operation failed), 2 usage or config error.

Nothing here imports typer or rich: the most frequent commands run without them (`_fast`), so
output and exits are plain functions (`echo`, `secho`, `SystemExit`) that behave as typer's do,
and rich is imported only when a table is printed.
"""

from __future__ import annotations

import json
import os
import re
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, NamedTuple, NoReturn, TextIO, TypeVar

from ..errors import ConfigError, FaztAgentError

T = TypeVar("T")

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2


class State:
    """Global options, set by the app callback."""

    config_path: Path | None = None


state = State()


# -- plain output (what typer.echo / typer.secho do) ------------------------------------------

_ANSI = re.compile(r"\033\[[;?0-9]*[a-zA-Z]")
_SGR = {"bold": "1", "red": "31", "green": "32", "yellow": "33", "magenta": "35"}


def _tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except Exception:  # a closed or odd stream
        return False


def echo(message: str = "", err: bool = False, nl: bool = True) -> None:
    """One line to stdout (or stderr), flushed; escape codes are removed unless it is a terminal
    (click's `echo`, which typer.echo is)."""
    stream = sys.stderr if err else sys.stdout
    text = message + ("\n" if nl else "")
    if not _tty(stream):
        text = _ANSI.sub("", text)
    stream.write(text)
    stream.flush()


def secho(message: str, err: bool = False, fg: str | None = None) -> None:
    """`echo` in a colour (shown on a terminal only)."""
    echo(f"\033[{_SGR[fg]}m{message}\033[0m" if fg else message, err=err)


def fail(message: str, hint: str | None = None, code: int = EXIT_PROBLEM) -> NoReturn:
    """Print one readable error line (and a hint) to stderr and exit with `code`."""
    secho(f"error: {message}", err=True, fg="red")
    if hint:
        echo(f"hint: {hint}", err=True)
    raise SystemExit(code)


def report_os_error(e: OSError) -> NoReturn:
    """An OSError no command turned into a message (stdout on a full disk, a path that cannot be
    written): one line and exit 1, never a traceback; a closed pipe (`| head`) quietly. stdout is
    then pointed at /dev/null, so the flush at exit cannot fail again."""
    if not isinstance(e, BrokenPipeError):
        try:
            secho(f"error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}", err=True, fg="red")
        except OSError:
            pass
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    raise SystemExit(EXIT_PROBLEM)


INT64_MAX = 2**63 - 1   # SQLite's largest INTEGER (units.INT64_MAX, without importing pydantic here)


def bounded(value: T, what: str, minimum: float = 1, maximum: float = INT64_MAX) -> T:
    """`value` when it is from `minimum` to `maximum`, else one `error:` line and exit 2. Ids and
    limits default to SQLite's range: beyond it the driver raises OverflowError (a traceback), and
    no row has an id below 1."""
    if minimum <= value <= maximum:  # type: ignore[operator]
        return value
    from ..units import out_of_range

    fail(out_of_range(value, what, minimum, maximum) or f"{what} is out of range", code=EXIT_USAGE)  # type: ignore[arg-type]


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
        secho(str(issue), err=True, fg="red")
    raise SystemExit(EXIT_USAGE)


def report_broken(e: Any) -> NoReturn:
    """A command that acts on the definitions, refused while one is broken: the FILE:KEY lines, then why."""
    for issue in e.issues:
        secho(str(issue), err=True, fg="red")
    fail(f"{e.what} needs valid definitions: fix what is listed above (`fazt-agent config check` lists every "
         "error); a running daemon keeps its last good definitions", hint=e.hint, code=EXIT_USAGE)


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Run an async command body, turning our errors into one-line messages."""
    import asyncio   # here: the light read path (`_light`) imports this module and never runs a loop

    try:
        return asyncio.run(coro_fn())  # type: ignore[arg-type]
    except ConfigError as e:
        from ..definitions import DefinitionsBroken   # here: `run` opens its door before pydantic loads

        if isinstance(e, DefinitionsBroken):
            report_broken(e)
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

    observed = None
    if config is None:   # the inputs as the light read path sees them, before the validated load reads them
        from .._snapshot import observe

        observed = observe(state.config_path)
        config = load()
    rt = await Runtime.open(config, lenient=True)
    try:
        if observed is not None:
            from .._snapshot import remember

            remember(observed, state.config_path, rt)
        if needs_definitions is not None:
            rt.require_definitions(needs_definitions, hint)
        elif rt.issues:
            warn_broken(broken_summary(rt.issues))
        yield rt
    finally:
        await rt.close()


def warn_broken(summary: str) -> None:
    """The warning of a command that works with the definitions that loaded (`summary`: what did not)."""
    secho(f"warning: broken definitions: {summary} (a running daemon keeps its last good definitions; commands "
          "that act on them refuse until it is fixed)", err=True, fg="yellow")


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


# -- styled lines and tables ------------------------------------------------------------------

STATUS_STYLE = {"ok": "green", "warning": "yellow", "critical": "bold red", "unknown": "magenta"}
_CONTROL = dict.fromkeys((7, 8, 11, 12, 13))   # bell, backspace, VT, FF, CR: never printed (as rich)


class Styled(NamedTuple):
    """A piece of text in a style (rich style words: "bold red"); a cell in a rich table too."""

    text: str
    style: str

    def __rich__(self) -> Any:
        from rich.text import Text

        return Text(self.text, style=self.style)


class Line(tuple):  # type: ignore[type-arg]
    """One output line: plain strings (printed as they are) and Styled pieces."""

    def __rich__(self) -> Any:
        from rich.text import Text

        return Text.assemble(*((p.text, p.style) if isinstance(p, Styled) else p for p in self))


def styled(status: str) -> Styled:
    """A status word in its colour (safe in tables and `line()`)."""
    return Styled(status, STATUS_STYLE.get(status, ""))


def line(*parts: str | tuple[str, str] | Styled) -> Line:
    """One output line from plain strings (printed as they are) and styled pieces ((text, style))."""
    return Line(Styled(*p) if isinstance(p, tuple) and not isinstance(p, Styled) else p for p in parts)


def _colour(stream: TextIO) -> bool:
    """Whether to colour: a terminal, unless NO_COLOR or a dumb terminal; FORCE_COLOR forces it."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return os.environ.get("TERM", "").lower() not in ("dumb", "unknown") and _tty(stream)


def _printable(pieces: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Untrusted text made printable as rich prints it: control codes dropped, tabs expanded to
    8-column stops counted over the whole line (wide characters take two columns)."""
    out, column = [], 0
    for text, style in pieces:
        text, column = _expand_tabs(text.translate(_CONTROL), column)
        out.append((text, style))
    return out


def _expand_tabs(text: str, column: int) -> tuple[str, int]:
    """`text` with its tabs expanded, starting at `column`; and the column after it."""
    if "\t" not in text:
        head, newline, tail = text.rpartition("\n")
        return text, (0 if newline else column) + _width(tail)
    chars = []
    for ch in text:
        if ch == "\t":
            pad = 8 - column % 8
            chars.append(" " * pad)
            column += pad
        else:
            chars.append(ch)
            column = 0 if ch == "\n" else column + _width(ch)
    return "".join(chars), column


def _width(text: str) -> int:
    if text.isascii():
        return len(text)
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


class Console:
    """Prints text lines without rich (no markup, no emoji codes: check messages, paths and targets
    are untrusted text, `disk[/]` and `a:x:` print as they are); anything else (a rich Table)
    through a rich console."""

    def __init__(self) -> None:
        self._rich: Any = None

    def print(self, item: Any = "") -> None:
        if isinstance(item, Line):
            pieces = [(p.text, p.style) if isinstance(p, Styled) else (p, "") for p in item]
        elif isinstance(item, Styled):
            pieces = [(item.text, item.style)]
        elif isinstance(item, str):
            pieces = [(item, "")]
        else:
            self._rich_console().print(item)
            return
        colour = _colour(sys.stdout)
        sys.stdout.write("".join(_paint(text, style, colour) for text, style in _printable(pieces)) + "\n")
        sys.stdout.flush()

    def _rich_console(self) -> Any:
        if self._rich is None:
            from rich.console import Console as RichConsole

            self._rich = RichConsole(highlight=False, soft_wrap=True, markup=False)
        return self._rich


def _paint(text: str, style: str, colour: bool) -> str:
    codes = ";".join(_SGR[word] for word in style.split() if word in _SGR)
    return f"\033[{codes}m{text}\033[0m" if colour and codes and text else text


def console() -> Console:
    """Where commands print: plain lines, or a rich Table (rich is imported only then)."""
    return Console()
