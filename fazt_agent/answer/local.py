"""`approve` and `deny` from the command line, answered by the running daemon.

The daemon listens on a unix socket in its data dir (`DATA_DIR/agent.sock`, mode 0600: only the
account the daemon runs as, and root, can connect; the file's permissions are the authentication,
as with Monit's or Docker's). `fazt-agent approve N` sends one JSON line and the daemon answers
through `Executor.answer`, the same exactly-once path as every channel, and replies with the
result the command prints. So the command costs what reading a snapshot and a socket round trip
cost (the light path: no pydantic, asyncio or aiosqlite in the command), the plan runs in the
daemon's process (its environment and privileges, as a Slack or email approval), and the daemon's
drain covers it.

The daemon answers only under the files the command sees: the request carries the stamp of the
config and definition files as the command reads them now (`_snapshot.observe`), and a daemon
started under other bytes (an edit since it started, another config) replies `stale`; the command
then answers in its own process, validating the files as before. No daemon (no socket, nobody
listening, a socket not ours to open, a data dir whose path is too long for a unix socket): the
command answers in its own process too.

One request per connection: `{"op": "answer", "halt": N, "option": "approve", "note": null,
"stamp": "..."}` and one reply line: `{"ok": true, "result": {...}}`, `{"ok": false, "error": "..."}`,
or `{"ok": false, "stale": true}`. A request that is not that (not JSON, too long, other fields)
is refused with `ok: false` and recorded as `local.refused`.
"""

from __future__ import annotations

import _socket   # the C module: `socket` adds selectors and four enum conversions (~4 ms) the command does not need
import json
import os
from pathlib import Path
from typing import Any, Callable

SOCKET = "agent.sock"
MAX_REQUEST = 64 * 1024
READ_TIMEOUT = 10.0
FIELDS = {"op", "halt", "option", "note", "stamp"}


class DaemonGone(Exception):
    """The daemon took the request and closed the connection without a reply (it stopped)."""


def forward(data_dir: Path, stamp: str, halt_id: int, option: str, note: str | None) -> dict[str, Any] | None:
    """Ask the daemon on `data_dir` to answer; its reply, or None when this process must answer (no
    daemon, or one whose view of the files is not `stamp`).

    Raises:
        DaemonGone: the daemon took the request and stopped before replying (the answer may or may
            not be recorded: `halts list` says).
    """
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        try:
            conn.connect(str(data_dir / SOCKET))
        except OSError:   # no socket, no daemon behind it, not ours, a path too long
            return None
        request = {"op": "answer", "halt": halt_id, "option": option, "note": note, "stamp": stamp}
        try:
            conn.sendall(json.dumps(request).encode() + b"\n")
        except OSError:
            return None   # the daemon closed before reading anything: nothing was answered
        chunks = []
        while chunk := conn.recv(65536):   # no deadline: the plan may run for minutes (each action has its own)
            chunks.append(chunk)
    except OSError as e:
        raise DaemonGone(str(e)) from None
    finally:
        conn.close()
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError:
        raise DaemonGone("no reply") from None
    if not isinstance(reply, dict) or reply.get("stale"):
        return None
    return reply


def _log() -> Any:
    import logging   # the daemon's side only: the command's side imports no logging

    return logging.getLogger(__name__)


class LocalAnswers:
    """The daemon's end: answers on `DATA_DIR/agent.sock` through `executor` (`Executor`), each
    answer spawned with `spawn` (so the daemon's drain waits for a plan that is running)."""

    def __init__(self, executor: Any, stamp: str | None, spawn: Callable[[str, Any], None]):
        self.executor = executor
        self.stamp = stamp
        self.spawn = spawn
        self.server: Any = None
        self.path: Path | None = None

    async def start(self, data_dir: Path) -> None:
        """Listen; a socket that cannot be made is logged (the command then answers by itself)."""
        import asyncio

        path = data_dir / SOCKET
        try:
            path.unlink(missing_ok=True)   # a stale one: the data-dir lock is ours, so no daemon uses it
            umask = os.umask(0o177)
            try:
                self.server = await asyncio.start_unix_server(self._serve, path=str(path), limit=MAX_REQUEST)
            finally:
                os.umask(umask)
            os.chmod(path, 0o600)
        except OSError as e:
            _log().warning("no local socket at %s (%s): `fazt-agent approve` answers in its own process", path,
                        e.strerror or e)
            return
        self.path = path

    async def stop(self) -> None:
        """Stop taking requests (answers already running finish: they are the daemon's spawned tasks)."""
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None

    async def _serve(self, reader: Any, writer: Any) -> None:
        import asyncio

        peer = _peer(writer)
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
                request = _request(line)
            except (ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
                reason = "no request within 10 s" if isinstance(e, asyncio.TimeoutError) else str(e)
                await self._refused(reason, peer)
                reply: dict[str, Any] = {"ok": False, "error": f"refused: {reason}"}
            else:
                if request["stamp"] != self.stamp or self.stamp is None:
                    reply = {"ok": False, "stale": True}
                else:
                    done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
                    self.spawn("answer", self._answer(request, done))
                    reply = await done
            writer.write(json.dumps(reply, default=str).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass   # the command went away; its answer (if any) is recorded all the same
        finally:
            writer.close()

    async def _answer(self, request: dict[str, Any], done: Any) -> None:
        from ..errors import FaztAgentError

        try:
            await self.executor.sweep_halts()
            result = await self.executor.answer(request["halt"], request["option"], by="cli", note=request["note"])
            reply: dict[str, Any] = {"ok": True, "result": result}
        except FaztAgentError as e:   # HaltError among them: already recorded as a refusal where it is one
            reply = {"ok": False, "error": str(e)}
        except Exception as e:   # supervisor boundary: one request never stops the daemon
            _log().exception("answering halt %s from the command line failed", request["halt"])
            reply = {"ok": False, "error": f"the daemon could not answer ({type(e).__name__}); see its log"}
        if not done.done():
            done.set_result(reply)

    async def _refused(self, reason: str, peer: dict[str, int | None]) -> None:
        from ..event_types import LocalRefused

        _log().warning("local socket: refused a request (%s)", reason)
        try:
            await self.executor.rt.events.emit("local.refused", LocalRefused(reason=reason[:500], **peer),
                                               source="local")
        except Exception:  # supervisor boundary: the refusal is answered all the same
            _log().exception("could not record local.refused")


def _request(line: bytes) -> dict[str, Any]:
    """The request in `line`, checked. Raises ValueError saying what is wrong with it."""
    from ..units import INT64_MAX   # SQLite's largest integer, as every halt id bound

    if not line.endswith(b"\n"):
        raise ValueError("no complete request line")
    try:
        request = json.loads(line)
    except ValueError:
        raise ValueError("not JSON") from None
    if not isinstance(request, dict) or set(request) != FIELDS:
        raise ValueError(f"a request is an object with exactly {sorted(FIELDS)}")
    if request["op"] != "answer":
        raise ValueError(f"unknown op {str(request['op'])[:64]!r}")
    halt = request["halt"]
    if not isinstance(halt, int) or isinstance(halt, bool) or not 1 <= halt <= INT64_MAX:
        raise ValueError("halt must be a halt id (a positive integer)")
    if not isinstance(request["option"], str) or not 0 < len(request["option"]) <= 64:
        raise ValueError("option must be a short string")
    if request["note"] is not None and not isinstance(request["note"], str):
        raise ValueError("note must be a string or null")
    if not isinstance(request["stamp"], str):
        raise ValueError("stamp must be a string")
    return request


def _peer(writer: Any) -> dict[str, int | None]:
    """The connecting process's pid and uid (SO_PEERCRED), for the record."""
    from .._proc import peer_credentials

    pid, uid = peer_credentials(writer.transport) or (None, None)
    return {"peer_pid": pid, "peer_uid": uid}
