"""The serverless runtime's parent side: a pool of JS worker processes and the /api handler.

A worker runs one request at a time; the pool grows to `size` workers on demand. A request
waits for an idle worker, writes its job (one line) to the worker's pipe, and waits for the
answer until the app's deadline; a worker that misses it is SIGKILLed and replaced, so an infinite
loop costs one worker for one deadline and never touches another request or the daemon. A worker
that dies (a crash) is replaced the same way.

Per request this side does little, because the daemon's one thread serves every app: the job
line is `SPEC<TAB>REQUEST`, SPEC (the app's side: files, env, limits) encoded once per release
and env; the pipes are plain non-blocking fds read by a loop reader (an asyncio subprocess
transport takes an extra loop iteration per read, and a stream reader a task per wait: together
~40 us of the daemon's thread per request), and the deadline is one timer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import sysconfig
from collections import deque
from typing import Any, Callable
from urllib.parse import parse_qs

from ..units import format_duration, format_size

log = logging.getLogger(__name__)
MAX_BODY = 1024 * 1024
MAX_ANSWER = 64 * 1024 * 1024
STARTUP_TIMEOUT = 30.0
# A worker builds a whole QuickJS runtime (thousands of small allocations) for each request and
# frees the previous one, so the allocator is most of its cost beside QuickJS itself. mimalloc
# (Debian's libmimalloc2.0), preloaded into the workers only, takes ~25 % less CPU per request
# than glibc's malloc; without it, glibc keeps 256 instead of 7 freed chunks per size in its
# per-thread cache (~10 % less). An owner's own LD_PRELOAD and GLIBC_TUNABLES are kept.
MIMALLOC = "libmimalloc.so.2"
MALLOC_TUNABLES = "glibc.malloc.tcache_count=256"


def _expire(waiter: asyncio.Future[bytes | None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Worker:
    """A worker process and the parent's ends of its stdin and stdout. `next_line()` is a future
    of its next answer line: b"" once it has exited or was killed, or its answer overflowed."""

    def __init__(self, proc: asyncio.subprocess.Process, to_worker: int, from_worker: int):
        self.proc = proc
        self._loop = asyncio.get_running_loop()
        self._to, self._from = to_worker, from_worker
        self._buffer = bytearray()
        self._unsent = bytearray()
        self._lines: deque[bytes] = deque()
        self._waiter: asyncio.Future[bytes | None] | None = None
        self.on_line: Callable[[Worker, bytes], None] | None = None   # the pool's, while it runs a job
        self.job: tuple[asyncio.Future[dict[str, Any]], float, asyncio.TimerHandle] | None = None
        self.closed = False
        self.oversized = False
        self._loop.add_reader(from_worker, self._readable)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None and not self.closed

    def send(self, data: bytes) -> None:
        """Write now what the pipe takes, the rest when it drains (a large body)."""
        if self.closed:
            return
        if not self._unsent:
            try:
                n = os.write(self._to, data)
            except BlockingIOError:
                n = 0
            except OSError:   # it died: its stdout's EOF tells the waiting request
                return
            if n == len(data):
                return
            self._loop.add_writer(self._to, self._writable)
            data = data[n:]
        self._unsent += data

    def _writable(self) -> None:
        try:
            n = os.write(self._to, self._unsent)
        except BlockingIOError:
            return
        except OSError:
            n = len(self._unsent)
        del self._unsent[:n]
        if not self._unsent:
            self._loop.remove_writer(self._to)

    def _readable(self) -> None:
        try:
            data = os.read(self._from, 256 * 1024)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close()
        elif not self._buffer and data.find(b"\n") == len(data) - 1:   # most answers: one whole line
            self._lines.append(data)
        else:
            start = len(self._buffer)
            self._buffer += data
            while (end := self._buffer.find(b"\n", start)) >= 0:
                self._lines.append(bytes(self._buffer[:end + 1]))
                del self._buffer[:end + 1]
                start = 0
            if len(self._buffer) > MAX_ANSWER:   # the request fails and this worker is retired
                self.oversized = True
                self._close()
        self._wake()

    def next_line(self) -> asyncio.Future[bytes | None]:
        self._waiter = self._loop.create_future()
        self._wake()
        return self._waiter

    def _wake(self) -> None:
        if self.on_line is not None and (self._lines or self.closed):
            done, self.on_line = self.on_line, None
            done(self, self._lines.popleft() if self._lines else b"")
            return
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._lines:
            waiter.set_result(self._lines.popleft())
        elif self.closed:
            waiter.set_result(b"")

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self._from)
        if self._unsent:
            self._loop.remove_writer(self._to)
            self._unsent.clear()
        os.close(self._from)
        os.close(self._to)
        self._buffer.clear()

    def kill(self) -> None:
        if self.proc.returncode is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        self._close()
        self._wake()


def mimalloc() -> str | None:
    """The path of an installed mimalloc, or None."""
    arch = sysconfig.get_config_var("MULTIARCH") or ""
    for folder in (f"/usr/lib/{arch}", "/usr/lib64", "/usr/lib", "/usr/local/lib"):
        path = os.path.join(folder, MIMALLOC)
        if os.path.exists(path):
            return path
    return None


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = ":".join(filter(None, (MALLOC_TUNABLES, env.get("GLIBC_TUNABLES"))))
    allocator = mimalloc()
    if allocator is not None:
        env["LD_PRELOAD"] = " ".join(filter(None, (allocator, env.get("LD_PRELOAD"))))
    return env


async def _start_worker() -> Worker:
    child_in, to_worker = os.pipe()
    from_worker, child_out = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fazt_agent.apps.worker", stdin=child_in, stdout=child_out,
            stderr=asyncio.subprocess.DEVNULL, env=_worker_env())
    except BaseException:
        for fd in (to_worker, from_worker):
            os.close(fd)
        raise
    finally:
        os.close(child_in)
        os.close(child_out)
    os.set_blocking(to_worker, False)
    os.set_blocking(from_worker, False)
    return Worker(proc, to_worker, from_worker)


class JsPool:
    """Jobs wait in one queue; a worker that answers takes the next job in the same callback that
    reads its answer (no task switch between two jobs of a worker, no future per idle wait), and
    each job's deadline starts when it is written to its worker."""

    def __init__(self, size: int):
        self.size = size
        self.workers: list[Worker] = []
        self._idle: list[Worker] = []
        self._queue: deque[tuple[bytes, float, asyncio.Future[dict[str, Any]]]] = deque()
        self._starting = 0
        self._replacing: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self.killed = 0

    async def _spawn(self) -> Worker:
        w = await _start_worker()
        try:   # a request's deadline starts once the worker is ready, never during its start-up
            ready = await asyncio.wait_for(w.next_line(), STARTUP_TIMEOUT)
        except asyncio.TimeoutError:
            ready = b""
        if ready is None or ready.strip() != b"ready":
            w.kill()
            raise OSError(f"the JS worker did not start within {format_duration(STARTUP_TIMEOUT)}")
        self.workers.append(w)
        return w

    async def run(self, spec: bytes, request: bytes, timeout: float) -> dict[str, Any]:
        """The worker's answer to one job: `spec` from encode_spec, `request` from encode_request."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        answer: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self._queue.append((spec + request, timeout, answer))
        self._dispatch()
        return await answer

    def _dispatch(self) -> None:
        """Give queued jobs to idle workers; start workers (up to `size`) for the rest."""
        if self._closing:
            return
        while self._queue and self._idle:
            data, timeout, answer = self._queue.popleft()
            if answer.done():   # its request went away
                continue
            w = self._idle.pop()
            assert self._loop is not None
            w.job = (answer, timeout, self._loop.call_later(timeout, self._expire, w))
            w.on_line = self._answered
            w.send(data)
            w._wake()   # it died while idle: the job fails as a crash
        while len(self._queue) > self._starting and len(self.workers) + self._starting < self.size:
            self._start_one()

    def _start_one(self) -> None:
        assert self._loop is not None
        self._starting += 1   # counted now, so one dispatch never starts more than it needs
        task = self._loop.create_task(self._add())
        self._replacing.add(task)
        task.add_done_callback(self._replacing.discard)

    async def _add(self) -> None:
        try:
            w = await self._spawn()
        except OSError as e:
            log.error("%s", e)
            if self._queue:   # the job that wanted it fails rather than waits for a worker that never comes
                _, _, answer = self._queue.popleft()
                if not answer.done():
                    answer.set_result({"error": f"no JS worker: {e}", "logs": [], "crashed": True})
            return
        finally:
            self._starting -= 1
        self._idle.append(w)
        self._dispatch()

    def _answered(self, w: Worker, line: bytes) -> None:
        assert w.job is not None
        answer, _, timer = w.job
        w.job = None
        timer.cancel()
        out: Any = None
        if line:
            try:
                out = json.loads(line)
            except ValueError:
                pass
        ok = isinstance(out, dict)
        if not ok:
            out = {"error": _crash(w) if not line else "the JS worker answered garbage", "logs": [], "crashed": True}
        if not answer.done():
            answer.set_result(out)
        if ok:
            self._idle.append(w)
        else:
            self._retire(w)
        self._dispatch()

    def _expire(self, w: Worker) -> None:
        """The deadline: SIGKILL the worker (an infinite loop costs it and nothing else)."""
        if w.job is None:
            return
        answer, timeout, _ = w.job
        w.job, w.on_line = None, None
        self.killed += 1
        if not answer.done():
            answer.set_result({"error": f"timed out: killed at the {format_duration(timeout)} deadline", "logs": [],
                               "timeout": True})
        self._retire(w)
        self._dispatch()

    def _retire(self, w: Worker) -> None:
        """Kill `w` and start its replacement now: requests may be waiting for an idle worker."""
        w.on_line = None
        w.kill()
        if w in self.workers:
            self.workers.remove(w)
        if not self._closing:
            self._start_one()

    async def aclose(self) -> None:
        self._closing = True
        for task in list(self._replacing):
            task.cancel()
        while self._queue:
            _, _, answer = self._queue.popleft()
            if not answer.done():
                answer.set_result({"error": "the apps plane is stopping", "logs": [], "crashed": True})
        for w in list(self.workers):
            if w.job is not None:
                answer, _, timer = w.job
                timer.cancel()
                if not answer.done():
                    answer.set_result({"error": "the apps plane is stopping", "logs": [], "crashed": True})
            self._retire(w)
            try:
                await asyncio.wait_for(w.proc.wait(), 2)
            except asyncio.TimeoutError:
                pass
        self.workers.clear()

    def pids(self) -> list[int]:
        return [w.pid for w in self.workers if w.alive]


def _crash(w: Worker) -> str:
    if w.oversized:
        return f"the answer is larger than {format_size(MAX_ANSWER)}"
    return "the JS worker crashed"


def encode_spec(spec: dict[str, Any]) -> bytes:
    """The app's side of a job line (`SPEC<TAB>`): app_id, name, files, env, memory, data. The
    caller keeps it per release; json.dumps escapes tabs and newlines, so it holds neither."""
    return json.dumps(spec).encode() + b"\t"


def encode_request(scope: dict[str, Any], headers: dict[str, str], body: bytes) -> bytes:
    """The request's side of a job line, newline included."""
    return json.dumps(parse_request(scope, headers, body)).encode() + b"\n"


async def read_body(receive: Any, limit: int) -> bytes | None:
    """The request body, or None when it is larger than `limit`."""
    message = await receive()   # most requests: one message
    if message["type"] == "http.request" and not message.get("more_body"):
        body = message.get("body", b"")
        return body if len(body) <= limit else None
    chunks, size = [], 0
    while True:
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            break
        message = await receive()
    return b"".join(chunks)


def parse_request(scope: dict[str, Any], headers: dict[str, str], body: bytes) -> dict[str, Any]:
    query = _query(scope.get("query_string", b"").decode("latin-1"))
    if not body and "content-type" not in headers:   # most requests: nothing to decode
        return {"method": scope["method"], "path": scope["path"], "query": query, "headers": headers, "body": ""}
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


def _query(text: str) -> dict[str, Any]:
    """`parse_qs(text, keep_blank_values=True)`, a repeated name as a list; without escapes (most
    query strings) split here, ~4x faster than urllib."""
    if "%" in text or "+" in text:
        return {k: v[0] if len(v) == 1 else v for k, v in parse_qs(text, keep_blank_values=True).items()}
    query: dict[str, Any] = {}
    for pair in text.split("&"):
        if pair:
            name, _, value = pair.partition("=")
            had = query.get(name)
            query[name] = value if had is None else had + [value] if isinstance(had, list) else [had, value]
    return query


def response(out: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """An answer of the worker as (status, headers, body); `json` says the body was encoded as JSON
    by the prelude (an object or a number), else it is the app's own text."""
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
        headers.append((b"content-type", b"application/json" if out.get("json") else b"text/plain; charset=utf-8"))
    return status, headers, str(out.get("body", "")).encode()
