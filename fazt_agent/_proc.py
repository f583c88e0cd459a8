"""Running one child process for a kernel action: argv only, own process group, hard timeout.

The same approach as the `command` check: no shell, `start_new_session=True`, and the whole
process group is killed (and the child reaped) on timeout or when the caller is cancelled.
"""

from __future__ import annotations

import asyncio
import os
import signal
from asyncio.subprocess import DEVNULL, PIPE
from dataclasses import dataclass

TAIL = 2000  # characters of output kept in outcomes


@dataclass(frozen=True)
class Finished:
    """How a child process ended. `exit_code` is None when it was killed on timeout."""

    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def stdout_tail(self) -> str:
        return self.stdout[-TAIL:]

    @property
    def stderr_tail(self) -> str:
        return self.stderr[-TAIL:]

    @property
    def last_error_line(self) -> str:
        lines = [line for line in (self.stderr or self.stdout).splitlines() if line.strip()]
        return lines[-1].strip()[:300] if lines else ""


async def run(argv: list[str], timeout: float) -> Finished:
    """Run `argv` (no shell) and wait at most `timeout` seconds for it.

    Raises:
        OSError: the program cannot be started (missing, not executable).
    """
    proc = await asyncio.create_subprocess_exec(*argv, stdin=DEVNULL, stdout=PIPE, stderr=PIPE,
                                                start_new_session=True)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        return Finished(None, "", "", timed_out=True)
    finally:
        if proc.returncode is None:  # timed out or cancelled: take the group down and reap
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await asyncio.shield(proc.wait())
    return Finished(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def cannot_start(argv: list[str], error: OSError) -> str:
    """A readable message for an `OSError` from `run`."""
    return f"cannot run {argv[0]!r}: {error.strerror or error}"
