"""The control plane's front door (`web/front.py`): /healthz and /mcp on bare asyncio, every other
request handed to uvicorn (started at the first), that request answered by the full app. Driven
over real TCP with raw sockets (to see keep-alive, pipelining, framing and timeouts byte for byte)
and httpx."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# -- /mcp served by the front door itself ---------------------------------------------------

class Endpoint:
    """A stand-in for the daemon's /mcp endpoint (the MCP worker's bridge): records what it was
    given, answers by the request's `x-mode` header, and notes when it hears http.disconnect."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.disconnected = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        headers = dict(scope["headers"])
        self.seen.append({"method": scope["method"], "path": scope["path"], "query": scope["query_string"],
                          "body": message["body"], "more": message["more_body"], "headers": headers,
                          "version": scope["http_version"], "client": scope["client"]})
        mode = headers.get(b"x-mode", b"json")
        if mode == b"fail":
            raise RuntimeError("the endpoint broke")
        if mode == b"json":
            body = b'{"echo":' + str(len(message["body"])).encode() + b"}"
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
            await send({"type": "http.response.body", "body": body})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for n in range(3):
            await send({"type": "http.response.body", "body": b"data: %d\n\n" % n, "more_body": True})
        if mode == b"stream":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        # "hold": the stream stays open until the client leaves (or the test releases it)
        waiter = asyncio.ensure_future(self.release.wait())
        gone = asyncio.ensure_future(receive())
        await asyncio.wait([waiter, gone], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if gone.done() and gone.result()["type"] == "http.disconnect":
            self.disconnected.set()
            return
        gone.cancel()
        await send({"type": "http.response.body", "body": b"data: end\n\n", "more_body": False})


@pytest.fixture
async def door() -> Any:
    calls: list[str] = []
    builds: list[int] = []
    endpoint = Endpoint()

    def build() -> Any:
        builds.append(1)
        return full_app(calls)

    front = Front(lambda: (True, {"state": "bare"}), build, lambda: endpoint)
    await front.start("127.0.0.1", 0, "[http] listen")
    front.calls, front.builds, front.endpoint = calls, builds, endpoint   # type: ignore[attr-defined]
    front.port = front.sock.getsockname()[1]   # type: ignore[union-attr,attr-defined]
    yield front
    await front.stop()


def mcp_request(body: bytes = b"{}", *, method: bytes = b"POST", extra: bytes = b"", version: bytes = b"1.1") -> bytes:
    length = b"content-length: %d\r\n" % len(body) if body else b""
    return b"%s /mcp HTTP/%s\r\nhost: 127.0.0.1\r\n%s%s\r\n%s" % (method, version, length, extra, body)


async def test_mcp_is_served_by_the_front_door_without_uvicorn(door: Any) -> None:
    """httpx, keep-alive: /mcp answered by the endpoint, the same connection then /healthz; nothing
    built, uvicorn not started; the scope is what uvicorn would give."""
    url = f"http://127.0.0.1:{door.port}"
    async with httpx.AsyncClient() as client:
        first = await client.post(f"{url}/mcp?x=1", content=b'{"jsonrpc":"2.0"}', headers={"authorization": "Bearer t"})
        second = await client.delete(f"{url}/mcp")
        stream = await client.get(f"{url}/mcp", headers={"x-mode": "stream"})
        healthz = await client.get(f"{url}/healthz")
    assert first.status_code == 200 and first.json() == {"echo": 17}
    assert second.json() == {"echo": 0} and healthz.json() == {"status": "ok", "state": "bare"}
    assert stream.text == "data: 0\n\ndata: 1\n\ndata: 2\n\n" and stream.headers["transfer-encoding"] == "chunked"
    assert first.headers["server"] == "fazt-agent" and "date" in first.headers
    assert door.builds == [] and not door.upgraded
    seen = door.endpoint.seen
    assert [(s["method"], s["path"], s["query"], s["body"], s["more"]) for s in seen] == [
        ("POST", "/mcp", b"x=1", b'{"jsonrpc":"2.0"}', False), ("DELETE", "/mcp", b"", b"", False),
        ("GET", "/mcp", b"", b"", False)]
    assert seen[0]["headers"][b"authorization"] == b"Bearer t" and seen[0]["version"] == "1.1"
    assert seen[0]["client"][0] == "127.0.0.1"


async def test_mcp_requests_pipelined_with_others_and_after_the_takeover(door: Any) -> None:
    """One connection: /mcp, /healthz, /mcp, then a request for another path (handed to uvicorn with
    what follows it). A later /mcp on a new connection is still the front door's."""
    other = b"POST /thing HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\nconnection: close\r\n\r\nabc"
    out = await exchange(door.port, mcp_request(b"ab") + b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"
                         + mcp_request(b"abcd") + other)
    assert out.count(b"HTTP/1.1 200 OK") == 4, out
    assert out.index(b'{"echo":2}') < out.index(b'"state":"bare"') < out.index(b'{"echo":4}') < out.index(b'"/thing"')
    assert door.calls == ["/thing"] and door.upgraded
    again = await exchange(door.port, mcp_request(b"xyz", extra=b"connection: close\r\n"))
    assert again.startswith(b"HTTP/1.1 200 OK") and b"connection: close\r\n" in again and b'{"echo":3}' in again
    assert door.calls == ["/thing"] and len(door.endpoint.seen) == 3


async def test_mcp_over_http_1_0_and_a_stream_end_with_the_connection(door: Any) -> None:
    out = await exchange(door.port, mcp_request(b"{}", version=b"1.0", extra=b"x-mode: stream\r\n"))
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"connection: close" in head and b"transfer-encoding" not in head
    assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    chunked = await exchange(door.port, mcp_request(b"{}", extra=b"x-mode: stream\r\nconnection: close\r\n"))
    assert chunked.endswith(b"\r\n0\r\n\r\n") and b"transfer-encoding: chunked" in chunked


async def test_what_the_front_door_does_not_take_for_mcp_goes_to_uvicorn(door: Any) -> None:
    """A chunked request body, a body over MAX_BODY, a method /mcp does not serve, a repeated
    length, a malformed header: uvicorn reads them (the full app's answer, or its 400)."""
    chunked = b"POST /mcp HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    assert b'"path":"/mcp","method":"POST","body":"hi"' in await exchange(door.port, chunked)
    put = b"PUT /mcp HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\nconnection: close\r\n\r\nx"
    assert b'"method":"PUT"' in await exchange(door.port, put)
    big = b"x" * (front_module.MAX_BODY + 1)
    assert b'"path":"/mcp"' in await exchange(door.port, mcp_request(big, extra=b"connection: close\r\n"))
    twice = b"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 1\r\nconnection: close\r\n\r\nx"
    assert b'"path":"/mcp"' in await exchange(door.port, twice)   # h11 takes two equal lengths; we leave it to it
    for bad in (b"POST /mcp HTTP/1.1\r\nhost: x\r\nbad header: 1\r\ncontent-length: 0\r\n\r\n",
                b"POST /mcp HTTP/1.1\r\nhost: x\r\nx: a\x00b\r\ncontent-length: 0\r\n\r\n"):
        assert (await exchange(door.port, bad)).startswith(b"HTTP/1.1 400"), bad
    assert door.endpoint.seen == []


async def test_a_body_in_parts_and_one_that_never_ends(door: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", door.port)
    request = mcp_request(b'{"a":1}')
    for part in (request[:10], request[10:-3], request[-3:]):
        writer.write(part)
        await writer.drain()
        await asyncio.sleep(0.05)
    assert b'{"echo":7}' in await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    monkeypatch.setattr(front_module, "HEAD_TIMEOUT", 0.3)
    assert await exchange(door.port, mcp_request(b"12345")[:-2], wait=10) == b""   # closed, unanswered
    assert len(door.endpoint.seen) == 1


async def open_stream(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A /mcp request whose answer stays open (the endpoint's "hold"), read up to its third event."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(mcp_request(b"{}", extra=b"x-mode: hold\r\n"))
    got = b""
    while b"data: 2" not in got:
        got += await asyncio.wait_for(reader.read(65536), 5)
    return reader, writer, got


async def test_a_client_leaving_a_stream_is_heard_and_a_failing_endpoint_answers_500(door: Any) -> None:
    _, writer, _ = await open_stream(door.port)
    writer.close()
    await asyncio.wait_for(door.endpoint.disconnected.wait(), 5)
    out = await exchange(door.port, mcp_request(b"{}", extra=b"x-mode: fail\r\n"))
    assert out.startswith(b"HTTP/1.1 500 Internal Server Error") and b"connection: close" in out
    assert (await exchange(door.port, b"GET /healthz HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.1 200 OK")


async def test_stop_lets_a_request_in_progress_finish(door: Any) -> None:
    reader, writer, got = await open_stream(door.port)
    stopping = asyncio.ensure_future(door.stop())
    await asyncio.sleep(0.1)
    assert not stopping.done()
    door.endpoint.release.set()
    got += await asyncio.wait_for(reader.read(-1), 5)   # the end of the stream, then the connection closes
    assert got.endswith(b"data: end\n\n\r\n0\r\n\r\n")
    await asyncio.wait_for(stopping, 5)
    writer.close()


# -- the parser never takes what h11 refuses ------------------------------------------------

_VALID = st.sampled_from([b"host: x", b"Host:127.0.0.1:7070", b"content-length: 12", b"Content-Length:0",
                          b"connection: close", b"connection: keep-alive", b"x-a: \xe9t\xe9", b"accept: */*",
                          b"authorization: Bearer fzt_x", b"x-b:  padded \t"])
_ODD = st.sampled_from([b"x-a: a\x00b", b"x-a: a\rb", b"x-a:\x7f", b"x-a: \x01", b"content-length: -1",
                        b"content-length: +3", b"content-length: 1 2", b"content-length: 0x1", b"Content-Length: 12",
                        b"content-length: 99999999999999999999", b"content-length:", b"host : x", b"Host: y",
                        b"bad name: x", b"x\x00: y", b"\xff: y", b" folded: x", b"\tfolded", b"no colon", b":empty",
                        b"transfer-encoding: chunked", b"Transfer-Encoding: gzip", b"expect: 100-continue",
                        b"upgrade: h2c"])
_LINES = st.lists(st.one_of(_VALID, _VALID, _ODD), max_size=6)
_GOOD_LINE = st.tuples(st.sampled_from([b"POST", b"GET", b"DELETE"]), st.sampled_from([b"/mcp", b"/mcp?a=1", b"/healthz"]),
                       st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
_ODD_LINE = st.tuples(st.sampled_from([b"POST", b"PUT", b"G ET", b"", b"get"]),
                      st.sampled_from([b"/mcp", b"*", b"http://x/mcp", b"/m cp", b"/mcp\x00", b"/\xe9", b""]),
                      st.sampled_from([b"HTTP/1.1", b"HTTP/2", b"http/1.1", b"HTTP/1.1 "]))
_REQUEST_LINES = st.one_of(_GOOD_LINE, _GOOD_LINE, _ODD_LINE)
SERVED: list[bytes] = []   # the heads the property found served: the test below checks there were some


@settings(max_examples=500, deadline=None)
@given(request=_REQUEST_LINES, lines=_LINES)
def test_what_the_parser_takes_h11_takes_alike(request: tuple[bytes, bytes, bytes], lines: list[bytes]) -> None:
    """Differential: every head `_parse` accepts, h11 (uvicorn's parser) accepts too, with the same
    method, target, version, headers and body length; all doubt goes to h11, so the front door never
    serves a request uvicorn would have refused (no smuggling between the two)."""
    import h11

    head = b" ".join(request) + b"".join(b"\r\n" + line for line in lines)
    ours = front_module._parse(head)
    if ours is None or not ours.plain:
        return   # handed to uvicorn: h11 judges it
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head + b"\r\n\r\n")
    event = conn.next_event()   # raises h11.RemoteProtocolError for what it refuses
    assert isinstance(event, h11.Request), event
    assert (event.method, event.target, event.http_version) == (ours.method, ours.path + (b"?" + ours.query if
                                                                ours.query else b""), ours.version)
    assert [(k, v) for k, v in event.headers] == ours.headers
    lengths = [v for k, v in event.headers if k == b"content-length"]
    assert (int(lengths[0]) if lengths else 0) == ours.length
    SERVED.append(head)


def test_the_differential_test_saw_requests_served() -> None:
    """The property above is only worth something if `_parse` took some of its heads."""
    if not SERVED:   # run alone, or before it: drive it now
        test_what_the_parser_takes_h11_takes_alike()
    assert len(SERVED) >= 20, len(SERVED)
