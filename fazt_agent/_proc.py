"""Running one child process (kernel actions, hooks, `command` checks): argv only, own process
group, hard timeout. And `peer_credentials`: which process is at the other end of a unix socket.

No shell, `start_new_session=True`, and the whole process group is killed (and the child reaped)
on timeout or when the caller is cancelled. Output goes to unlinked temporary files rather than
pipes, so a daemon the command leaves behind holding stdout cannot keep us waiting; only the
tails (`run`) or heads (`output`) are read back.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
from asyncio.subprocess import DEVNULL
from dataclasses import dataclass
from typing import IO

TAIL = 2000  # characters of output kept in outcomes


@dataclass(frozen=True)
class Finished:
    """How a child process ended. `exit_code` is None when it was killed on timeout."""

    exit_code: int | None
    stdout_tail: str
    stderr_tail: str
    timed_out: bool = False

    @property
    def last_error_line(self) -> str:
        lines = [line for line in (self.stderr_tail or self.stdout_tail).splitlines() if line.strip()]
        return lines[-1].strip()[:300] if lines else ""


async def run(argv: list[str], timeout: float) -> Finished:
    """Run `argv` (no shell) and wait at most `timeout` seconds for it to exit.

    Raises:
        OSError: the program cannot be started (missing, not executable).
    """
    import tempfile   # here: the MCP bridge imports this module for peer_credentials alone

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        code = await _wait(argv, out, err, timeout)
        return Finished(code, _tail(out), _tail(err), code is None)


async def output(argv: list[str], *, cwd: str | None = None, env: dict[str, str] | None = None,
                 limit: int = 65536) -> tuple[int, str, str]:
    """Run `argv` (no shell) until it exits or the caller is cancelled (a check's timeout): the
    exit code and the first `limit` bytes of stdout and of stderr.

    Raises:
        OSError: the program cannot be started (missing, not executable, bad cwd).
    """
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        code = await _wait(argv, out, err, None, cwd=cwd, env=env)
        assert code is not None
        return code, _head(out, limit), _head(err, limit)


async def _wait(argv: list[str], out: IO[bytes], err: IO[bytes], timeout: float | None, *,
                cwd: str | None = None, env: dict[str, str] | None = None) -> int | None:
    """The exit code, or None when `timeout` passed first; the group is killed on either that or
    cancellation."""
    proc = await asyncio.create_subprocess_exec(*argv, stdin=DEVNULL, stdout=out, stderr=err, cwd=cwd, env=env,
                                                start_new_session=True)
    timed_out = False
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        timed_out = True
    finally:
        if proc.returncode is None:  # timed out or cancelled: take the group down and reap
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await asyncio.shield(proc.wait())
    return None if timed_out else proc.returncode


def _tail(file: IO[bytes]) -> str:
    size = file.seek(0, os.SEEK_END)
    file.seek(max(0, size - 4 * TAIL))  # enough bytes for TAIL characters of UTF-8
    return file.read().decode(errors="replace")[-TAIL:]


def _head(file: IO[bytes], limit: int) -> str:
    file.seek(0)
    return file.read(limit).decode(errors="replace")


def cannot_start(argv: list[str], error: OSError) -> str:
    """A readable message for an `OSError` from `run`."""
    return f"cannot run {argv[0]!r}: {error.strerror or error}"


def peer_credentials(transport: asyncio.BaseTransport) -> tuple[int, int] | None:
    """(pid, uid) of the process at the other end of a unix socket connection (SO_PEERCRED), or None."""
    sock = transport.get_extra_info("socket")
    try:
        pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                             struct.calcsize("3i")))
    except (OSError, AttributeError, struct.error):
        return None
    return int(pid), int(uid)
