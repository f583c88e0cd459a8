"""The control plane's front door (`web/front.py`): /healthz on bare asyncio, then uvicorn on the same
socket from the first other request, that request answered by the full app. Driven over real TCP
with raw sockets (to see keep-alive, pipelining and timeouts byte for byte) and httpx."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from fazt_agent.web import front as front_module
from fazt_agent.web.front import Front


def full_app(calls: list[str]) -> Any:
    """What the daemon's `_control_plane` returns, small: /healthz and an echo of anything else."""
    from starlette.responses import JSONResponse

    from fazt_agent.web.app import create_app

    async def echo(scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await JSONResponse({"path": scope["path"], "method": scope["method"], "body": body.decode()})(
            scope, receive, send)

    app = create_app(lambda: (True, {"state": "full"}))

    async def serve(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["path"])
        if scope["path"] == "/healthz":
            await app(scope, receive, send)
        else:
            await echo(scope, receive, send)

    return serve


@pytest.fixture
async def front() -> Any:
    health = {"ok": True}
    calls: list[str] = []
    builds: list[int] = []

    def build() -> Any:
        builds.append(1)
        return full_app(calls)

    door = Front(lambda: (health["ok"], {"state": "bare"}), build)
    await door.start("127.0.0.1", 0, "[http] listen")
    door.health_flag, door.calls, door.builds = health, calls, builds   # type: ignore[attr-defined]
    door.port = door.sock.getsockname()[1]   # type: ignore[union-attr,attr-defined]
    yield door
    await door.stop()


async def exchange(port: int, data: bytes, *, until_closed: bool = True, wait: float = 10.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = b""
    try:
        if until_closed:
            out = await asyncio.wait_for(reader.read(-1), wait)
        else:
            out = await asyncio.wait_for(reader.read(65536), wait)
    finally:
        writer.close()
    return out


async def test_healthz_is_answered_bare_and_alike_after_the_takeover(front: Any) -> None:
    url = f"http://127.0.0.1:{front.port}"
    async with httpx.AsyncClient() as client:
        bare = await client.get(f"{url}/healthz")
        head = await client.head(f"{url}/healthz")
        assert front.builds == []   # only /healthz was asked: nothing else built, uvicorn not started
        other = await client.post(f"{url}/anything?x=1", content=b"hello")
        after = await client.get(f"{url}/healthz")
    assert bare.status_code == head.status_code == after.status_code == 200
    assert bare.json() == {"status": "ok", "state": "bare"} and after.json() == {"status": "ok", "state": "full"}
    assert head.content == b"" and head.headers["content-length"] == bare.headers["content-length"]
    assert other.json() == {"path": "/anything", "method": "POST", "body": "hello"}
    assert front.builds == [1] and front.upgraded
    names = sorted(k for k in bare.headers if k != "date")
    assert names == sorted(k for k in after.headers if k != "date") == ["content-length", "content-type", "server"]
    assert bare.headers["server"] == after.headers["server"] == "fazt-agent"


async def test_an_unhealthy_daemon_answers_503(front: Any) -> None:
    front.health_flag["ok"] = False
    async with httpx.AsyncClient() as client:
        reply = await client.get(f"http://127.0.0.1:{front.port}/healthz")
    assert reply.status_code == 503 and reply.json()["status"] == "unhealthy"


async def test_keep_alive_pipelining_and_the_handover_of_what_follows(front: Any) -> None:
    """Two /healthz on one HTTP/1.1 connection, then a request for something else in the same bytes:
    the bare protocol answers the first two and hands the rest, unread by it, to uvicorn."""
    healthz = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"
    other = b"POST /thing HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\nconnection: close\r\n\r\nabc"
    out = await exchange(front.port, healthz + healthz + other)
    assert out.count(b"HTTP/1.1 200 OK") == 3, out
    assert out.count(b'"state":"bare"') == 2 and b'{"path":"/thing","method":"POST","body":"abc"}' in out
    assert front.calls == ["/thing"]


async def test_http_1_0_and_connection_close_end_the_connection(front: Any) -> None:
    for request in (b"GET /healthz HTTP/1.0\r\n\r\n", b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"):
        out = await exchange(front.port, request)   # returns only once the server closed
        assert out.startswith(b"HTTP/1.1 200 OK") and b"connection: close\r\n" in out


async def test_a_request_with_a_body_or_a_malformed_one_goes_to_uvicorn(front: Any) -> None:
    with_body = await exchange(front.port, b"GET /healthz HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n"
                                           b"connection: close\r\n\r\nhi")
    assert with_body.startswith(b"HTTP/1.1 200 OK") and b'"state":"full"' in with_body   # the full app's answer
    for malformed in (b"GET /healthz HTTP/1.1\r\nhost: x\r\nno colon here\r\n\r\n",
                      b"GET /healthz HTTP/1.1\r\n\r\n"):   # HTTP/1.1 without Host
        assert (await exchange(front.port, malformed)).startswith(b"HTTP/1.1 400")


async def test_a_silent_connection_is_closed(front: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(front_module, "HEAD_TIMEOUT", 0.3)
    out = await exchange(front.port, b"GET /healthz HTTP/1.1\r\n", wait=10)   # the head never ends
    assert out == b""
    assert front.builds == []


async def test_many_connections_during_the_takeover_are_all_served(front: Any) -> None:
    async with httpx.AsyncClient() as client:
        replies = await asyncio.gather(*(client.get(f"http://127.0.0.1:{front.port}/{'healthz' if i % 2 else f'p{i}'}")
                                         for i in range(40)))
    assert [r.status_code for r in replies] == [200] * 40
    assert front.builds == [1]
    assert sorted(r.json()["path"] for i, r in enumerate(replies) if i % 2 == 0) == sorted(
        f"/p{i}" for i in range(0, 40, 2))


@pytest.mark.parametrize("failing", ["the build", "uvicorn"])
async def test_a_control_plane_that_fails_to_start_answers_503_and_is_tried_again(
        failing: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The build raising, or uvicorn failing to start on the socket: that request gets 503, the bare
    door still answers /healthz, and the next request tries again."""
    from fazt_agent.web import app as app_module

    attempts: list[int] = []
    real_serve = app_module.serve

    def build() -> Any:
        if failing == "the build":
            attempts.append(1)
            if len(attempts) == 1:
                raise RuntimeError("broken")
        return full_app([])

    async def serve(*args: Any, **kwargs: Any) -> Any:
        if failing == "uvicorn":
            attempts.append(1)
            if len(attempts) == 1:
                raise RuntimeError("uvicorn would not start")
        return await real_serve(*args, **kwargs)

    monkeypatch.setattr(app_module, "serve", serve)
    door = Front(lambda: (True, {"state": "bare"}), build)
    await door.start("127.0.0.1", 0, "[http] listen")
    port = door.sock.getsockname()[1]   # type: ignore[union-attr]
    try:
        async with httpx.AsyncClient() as client:
            first = await client.get(f"http://127.0.0.1:{port}/x")
            healthz = await client.get(f"http://127.0.0.1:{port}/healthz")
            second = await client.get(f"http://127.0.0.1:{port}/x")
        assert first.status_code == 503 and healthz.json() == {"status": "ok", "state": "bare"}
        assert second.status_code == 200 and second.json()["path"] == "/x" and len(attempts) == 2
    finally:
        await door.stop()


async def test_the_address_in_use_names_the_setting(front: Any) -> None:
    from fazt_agent.errors import FaztAgentError

    other = Front(lambda: (True, {}), lambda: None)
    with pytest.raises(FaztAgentError, match=r"cannot listen on 127\.0\.0\.1:\d+ \(\[http\] listen\)"):
        await other.start("127.0.0.1", front.port, "[http] listen")
