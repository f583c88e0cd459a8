"""Reusable fakes for tests and benchmarks: a scripted Anthropic Messages API server.

`ScriptedLLM` is a real HTTP server on 127.0.0.1 that answers `POST /v1/messages` from a queue
of scripted replies, so the official SDK runs unchanged against it (point `base_url` at
`server.url`). A reply is a message body, a `Reply` (status, delay, headers, or waiting on a
`threading.Event`), or a function of the request body returning either. Every request is
recorded with the usage reported for it.

Usage is simulated unless the script gives it: tokens are estimated as UTF-8 bytes / 4 of the
JSON sent; the prefix up to the last `cache_control` breakpoint (tools, then system) counts as
a cache write the first time and a cache read afterwards, when it is at least
`cache_min_tokens` long (the API's minimum for Sonnet models is 1024).
"""

from __future__ import annotations

import itertools
import json
import math
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Union

MODEL = "claude-sonnet-5-5"


@dataclass
class Reply:
    body: dict[str, Any]
    status: int = 200
    delay: float = 0.0                       # seconds before answering
    headers: dict[str, str] = field(default_factory=dict)
    hold: threading.Event | None = None      # answer only once this is set


Script = Union[Reply, dict[str, Any], Callable[[dict[str, Any]], Union[Reply, dict[str, Any]]]]
_ids = itertools.count(1)


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def tool_use(name: str, input: dict[str, Any], id: str | None = None) -> dict[str, Any]:
    return {"type": "tool_use", "id": id or f"toolu_{next(_ids):06d}", "name": name, "input": input}


def message(*blocks: dict[str, Any], stop_reason: str | None = None, usage: dict[str, int] | None = None,
            model: str = MODEL) -> dict[str, Any]:
    """A Messages API response body; stop_reason defaults from the blocks."""
    if stop_reason is None:
        stop_reason = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
    body: dict[str, Any] = {"id": f"msg_{next(_ids):06d}", "type": "message", "role": "assistant", "model": model,
                            "content": list(blocks), "stop_reason": stop_reason, "stop_sequence": None}
    if usage is not None:
        body["usage"] = usage
    return body


def error(status: int, kind: str, text_: str, *, retry_after_ms: int = 20, delay: float = 0.0) -> Reply:
    """An API error reply (e.g. 529 overloaded_error), with a short retry-after for the SDK."""
    return Reply({"type": "error", "error": {"type": kind, "message": text_}}, status=status, delay=delay,
                 headers={"retry-after-ms": str(retry_after_ms)})


def overloaded() -> Reply:
    return error(529, "overloaded_error", "Overloaded")


def tokens(data: Any) -> int:
    """The estimated token count of `data` sent as JSON (UTF-8 bytes / 4)."""
    if not data:
        return 0
    raw = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return math.ceil(len(raw.encode()) / 4)


def _has_breakpoint(part: Any) -> bool:
    return '"cache_control"' in json.dumps(part)


@dataclass
class Recorded:
    body: dict[str, Any]
    headers: dict[str, str]
    status: int
    usage: dict[str, int] = field(default_factory=dict)


class ScriptedLLM:
    """A scripted Messages API on a free loopback port; use as a context manager."""

    def __init__(self, *replies: Script, default: Script | None = None, cache_min_tokens: int = 1024):
        self.queue: list[Script] = list(replies)
        self.default = default
        self.cache_min_tokens = cache_min_tokens
        self.requests: list[Recorded] = []
        self._cached: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="scripted-llm", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, *replies: Script) -> None:
        with self._lock:
            self.queue.extend(replies)

    def __enter__(self) -> ScriptedLLM:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def usage(self, request: dict[str, Any], content: list[dict[str, Any]]) -> dict[str, int]:
        """Simulated usage of one request (see the module docstring)."""
        parts = [request.get("tools"), request.get("system"), request.get("messages")]
        total = sum(tokens(p) for p in parts)
        end = max((i for i, p in enumerate(parts[:2]) if p and _has_breakpoint(p)), default=-1)
        prefix = sum(tokens(p) for p in parts[:end + 1])
        read = write = 0
        if end >= 0 and prefix >= self.cache_min_tokens:
            key = json.dumps(parts[:end + 1], sort_keys=True)
            with self._lock:
                hit = key in self._cached
                self._cached.add(key)
            read, write = (prefix, 0) if hit else (0, prefix)
        return {"input_tokens": total - read - write, "output_tokens": max(1, tokens(content)),
                "cache_read_input_tokens": read, "cache_creation_input_tokens": write}

    def _next(self, request: dict[str, Any]) -> Reply:
        with self._lock:
            script = self.queue.pop(0) if self.queue else self.default
        if script is None:
            return Reply({"type": "error", "error": {"type": "invalid_request_error",
                                                     "message": "the scripted server has no reply left"}},
                         status=400, headers={"x-should-retry": "false"})
        if callable(script):
            script = script(request)
        return script if isinstance(script, Reply) else Reply(script)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                try:
                    request = json.loads(raw)
                except json.JSONDecodeError:
                    request = {}
                reply = server._next(request) if self.path.rstrip("/").endswith("/v1/messages") else \
                    Reply({"type": "error", "error": {"type": "not_found_error", "message": self.path}}, 404)
                body = dict(reply.body)
                if reply.status == 200 and body.get("type") == "message" and "usage" not in body:
                    body["usage"] = server.usage(request, body.get("content", []))
                with server._lock:
                    server.requests.append(Recorded(request, {k.lower(): v for k, v in self.headers.items()},
                                                    reply.status, body.get("usage", {})))
                if reply.hold is not None:
                    while not reply.hold.wait(0.05) and not server._stop.is_set():
                        pass
                if reply.delay and server._stop.wait(reply.delay):
                    return
                data = json.dumps(body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.send_header("request-id", f"req_{next(_ids):06d}")
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

        return Handler
