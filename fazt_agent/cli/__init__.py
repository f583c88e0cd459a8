"""The `fazt-agent` command line: a thin typer app that parses, loads config and calls the library.

The commands are declared in `_app` (the typer app, `fazt_agent.cli.app`), built on first use:
`main()` first lets `_fast` run the most frequent commands, which need neither typer nor rich.
"""

from __future__ import annotations

from typing import Any


def version() -> str:
    """The installed package's version (what pip and the wheel say), else the source's."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("fazt-agent")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from .. import __version__

        return __version__


def hoist_config(argv: list[str]) -> list[str]:
    """Accept `--config PATH` anywhere (`fazt-agent run --config X`) by moving it to the front."""
    rest, front, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest += argv[i:]
            break
        if arg == "--config" and i + 1 < len(argv):
            front += argv[i:i + 2]
            i += 2
            continue
        if arg.startswith("--config="):
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest


def main() -> None:
    import gc
    import sys

    from ._fast import run_fast

    argv = hoist_config(sys.argv[1:])
    try:
        run_fast(argv)   # exits when it ran the command; returns when typer is needed
        from ._app import app

        app(args=argv, prog_name="fazt-agent")
    except OSError as e:   # stdout on a full disk, a path that cannot be written: one line, no traceback
        from ._common import report_os_error

        report_os_error(e)
    finally:
        gc.freeze()   # the command is done: the interpreter's exit need not search its objects for cycles (~30 ms)


def __getattr__(name: str) -> Any:
    """`fazt_agent.cli.app`, the typer app, imported (and built) on first use."""
    if name == "app":
        from ._app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
