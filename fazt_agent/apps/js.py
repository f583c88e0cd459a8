"""The serverless runtime's parent side: a pool of JS worker processes and the /api handler.

A worker runs one request at a time; the pool grows to `size` workers on demand. A request
waits for an idle worker, sends its job (one JSON line), and waits for the answer until the app's
deadline; a worker that misses it is SIGKILLed and replaced, so an infinite loop costs one worker
for one deadline and never touches another request or the daemon. A worker that dies (a crash)
is replaced the same way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any
from urllib.parse import parse_qs

from ..units import format_duration

log = logging.getLogger(__name__)
MAX_BODY = 1024 * 1024
STARTUP_TIMEOUT = 30.0


class Worker:
    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


class JsPool:
    def __init__(self, size: int):
        self.size = size
        self.workers: list[Worker] = []
        self._idle: asyncio.Queue[Worker] = asyncio.Queue()
        self._starting = 0
        self._replacing: set[asyncio.Task[None]] = set()
        self.killed = 0

    async def _spawn(self) -> Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fazt_agent.apps.worker", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, limit=64 * 1024 * 1024)
        assert proc.stdout is not None
        try:   # a request's deadline starts once the worker is ready, never during its start-up
            ready = await asyncio.wait_for(proc.stdout.readline(), STARTUP_TIMEOUT)
        except asyncio.TimeoutError:
            ready = b""
        if ready.strip() != b"ready":
            proc.kill()
            raise OSError(f"the JS worker did not start within {format_duration(STARTUP_TIMEOUT)}")
        w = Worker(proc)
        self.workers.append(w)
        return w

    async def _get(self) -> Worker:
        if self._idle.empty() and len(self.workers) + self._starting < self.size:
            self._starting += 1
            try:
                return await self._spawn()
            finally:
                self._starting -= 1
        return await self._idle.get()

    def _retire(self, w: Worker) -> None:
        """Kill `w` and start its replacement now: requests may be waiting for an idle worker."""
        w.kill()
        if w in self.workers:
            self.workers.remove(w)
        task = asyncio.get_running_loop().create_task(self._replace())
        self._replacing.add(task)
        task.add_done_callback(self._replacing.discard)

    async def _replace(self) -> None:
        self._starting += 1
        try:
            w = await self._spawn()
        except OSError:
            log.exception("cannot start a JS worker")
            return
        finally:
            self._starting -= 1
        self._idle.put_nowait(w)

    async def run(self, job: dict[str, Any], timeout: float) -> dict[str, Any]:
        try:
            w = await self._get()
        except OSError as e:
            log.error("%s", e)
            return {"error": f"no JS worker: {e}", "logs": [], "crashed": True}
        ok = False
        try:
            assert w.proc.stdin is not None and w.proc.stdout is not None
            w.proc.stdin.write(json.dumps(job).encode() + b"\n")
            await w.proc.stdin.drain()
            line = await asyncio.wait_for(w.proc.stdout.readline(), timeout)
            if not line:
                return {"error": "the JS worker crashed", "logs": [], "crashed": True}
            ok = True
            return json.loads(line)
        except asyncio.TimeoutError:
            self.killed += 1
            return {"error": f"timed out: killed at the {format_duration(timeout)} deadline", "logs": [],
                    "timeout": True}
        except (ConnectionError, BrokenPipeError):
            return {"error": "the JS worker crashed", "logs": [], "crashed": True}
        finally:
            if ok:
                self._idle.put_nowait(w)
            else:
                self._retire(w)

    async def aclose(self) -> None:
        for task in list(self._replacing):
            task.cancel()
        for w in list(self.workers):
            w.kill()
            try:
                await asyncio.wait_for(w.proc.wait(), 2)
            except asyncio.TimeoutError:
                pass
        self.workers.clear()

    def pids(self) -> list[int]:
        return [w.pid for w in self.workers if w.proc.returncode is None]


async def read_body(receive: Any, limit: int) -> bytes | None:
    """The request body, or None when it is larger than `limit`."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def parse_request(scope: dict[str, Any], headers: dict[str, str], body: bytes) -> dict[str, Any]:
    query = {k: v[0] if len(v) == 1 else v
             for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True).items()}
    text = body.decode("utf-8", errors="replace")
    ctype = headers.get("content-type", "").split(";")[0].strip().lower()
    parsed: Any = text
    if ctype == "application/json" and text:
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = text
    elif ctype == "application/x-www-form-urlencoded":
        parsed = {k: v[0] if len(v) == 1 else v for k, v in parse_qs(text, keep_blank_values=True).items()}
    return {"method": scope["method"], "path": scope["path"], "query": query, "headers": headers, "body": parsed}


def response(out: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """An answer of the worker as (status, headers, body)."""
    if "error" in out:
        status = 504 if out.get("timeout") else 502 if out.get("crashed") else 500
        body = json.dumps({"error": out["error"], "logs": [e["message"] for e in out.get("logs", [])]}).encode()
        return status, [(b"content-type", b"application/json")], body
    status = out.get("status", 200)
    if not isinstance(status, int) or not 100 <= status <= 599:
        return 500, [(b"content-type", b"application/json")], json.dumps(
            {"error": f"invalid status {status!r}", "logs": []}).encode()
    raw = out.get("headers") or {}
    headers = [(str(k).lower().encode("latin-1", "replace"), str(v).encode("latin-1", "replace"))
               for k, v in (raw.items() if isinstance(raw, dict) else [])
               if str(k).lower() not in ("content-length", "transfer-encoding")]
    if not any(k == b"content-type" for k, _ in headers):
        headers.append((b"content-type", b"text/plain; charset=utf-8" if out.get("string") else b"application/json"))
    return status, headers, str(out.get("body", "")).encode()
