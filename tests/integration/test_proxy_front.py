"""The listener's two paths on one port: plain sandbox-host requests on the fast path, the rest
(main site, chunked uploads, malformed heads) handed to hypercorn with the bytes already read.

Raw sockets, so what crosses the wire (framing, keep-alive, pipelining) is what is tested.
"""

from __future__ import annotations

import json
from pathlib import Path

import h11
import pytest
import trio

from agentserver.settings import Settings
from tests.conftest import make_settings
from tests.support.proxy_world import World
from tests.support.tcp import serve_on_free_port
from tests.support.upstream import HTML


@pytest.fixture
def server_settings(db_url: str, tmp_path: Path) -> Settings:
    """This module's server waits one second for an agent's response headers."""
    return make_settings(db_url, tmp_path / "data", proxy_timeout="1s")


class Wire:
    """A raw HTTP/1.1 client connection to the server, reading responses with h11."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    async def send(self, raw: bytes) -> None:
        await self.stream.send_all(raw)

    async def response(self) -> tuple[h11.Response, bytes]:
        """The next response and its body (the connection is ready for the next one)."""
        head: h11.Response | None = None
        body = b""
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
                    self.h11.start_next_cycle()
                return head, body
            else:
                raise AssertionError(f"unexpected {event!r}")

    def expect(self, method: bytes) -> None:
        """Tell the reader a request went out (h11 frames responses by their request)."""
        self.h11.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
        self.h11.send(h11.EndOfMessage())


async def wire(world: World) -> Wire:
    return Wire(await trio.open_tcp_stream("127.0.0.1", world.server.port))


def get(world: World, sandbox_id: str, token: str, path: str, extra: str = "") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {world.host(sandbox_id)}\r\n"
        f"Cookie: agentserver_sandbox={token}\r\n{extra}\r\n"
    ).encode()


def header(response: h11.Response, name: bytes) -> bytes | None:
    return next((v for n, v in response.headers if n == name), None)


async def test_one_connection_carries_many_sandbox_requests(world: World) -> None:
    """Keep-alive on the fast path: three requests in turn on one connection all succeed."""
    sid = await world.sandbox()
    token = await world.open(sid)
    client = await wire(world)
    for path in ("/json", "/", "/session"):
        client.expect(b"GET")
        await client.send(get(world, sid, token, path))
        response, body = await client.response()
        assert response.status_code == 200
        assert body == HTML if path == "/" else json.loads(body)["path"] == path
    assert [r.target for r in world.upstream.requests[-3:]] == ["/json", "/", "/session"]


async def test_pipelined_requests_are_answered_in_order(world: World) -> None:
    """Two requests sent in one write get two responses, in the order asked."""
    sid = await world.sandbox()
    token = await world.open(sid)
    client = await wire(world)
    await client.send(get(world, sid, token, "/json") + get(world, sid, token, "/session"))
    paths = []
    for _ in range(2):
        client.expect(b"GET")
        response, body = await client.response()
        assert response.status_code == 200
        paths.append(json.loads(body)["path"])
    assert paths == ["/json", "/session"]


async def test_head_answer_has_no_body_and_keeps_the_connection(world: World) -> None:
    """A HEAD response declares the length but sends no body, and the connection goes on."""
    sid = await world.sandbox()
    token = await world.open(sid)
    client = await wire(world)
    client.expect(b"HEAD")
    await client.send(get(world, sid, token, "/").replace(b"GET", b"HEAD", 1))
    response, body = await client.response()
    assert header(response, b"content-length") == str(len(HTML)).encode()
    assert body == b""
    client.expect(b"GET")
    await client.send(get(world, sid, token, "/json"))
    response, _ = await client.response()
    assert response.status_code == 200


async def test_connection_close_is_honoured(world: World) -> None:
    """A request asking to close gets `Connection: close` and then the end of the stream."""
    sid = await world.sandbox()
    token = await world.open(sid)
    client = await wire(world)
    client.expect(b"GET")
    await client.send(get(world, sid, token, "/json", "Connection: close\r\n"))
    response, _ = await client.response()
    assert header(response, b"connection") == b"close"
    rest = b""
    while chunk := await client.stream.receive_some(65536):
        rest += chunk
    assert rest == b""


async def test_main_site_after_a_sandbox_request_on_the_same_connection(world: World) -> None:
    """A connection that starts on the fast path and then asks the main host is handed to
    hypercorn, which answers the main site."""
    sid = await world.sandbox()
    token = await world.open(sid)
    client = await wire(world)
    client.expect(b"GET")
    await client.send(get(world, sid, token, "/json"))
    first, _ = await client.response()
    client.expect(b"GET")
    await client.send(
        f"GET /healthz HTTP/1.1\r\nHost: localhost:{world.server.port}\r\n\r\n".encode()
    )
    second, body = await client.response()
    assert first.status_code == 200
    assert second.status_code == 200
    assert json.loads(body)["status"] == "ok"


async def test_chunked_upload_to_a_sandbox_goes_through_hypercorn(world: World) -> None:
    """A chunked request body (not a fast-path request) still reaches the agent whole."""
    sid = await world.sandbox()
    token = await world.open(sid)
    client = await wire(world)
    client.expect(b"POST")
    origin = f"http://{world.host(sid)}"
    await client.send(
        (
            f"POST /echo HTTP/1.1\r\nHost: {world.host(sid)}\r\nOrigin: {origin}\r\n"
            f"Cookie: agentserver_sandbox={token}\r\nTransfer-Encoding: chunked\r\n\r\n"
        ).encode()
        + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    response, body = await client.response()
    assert response.status_code == 200
    assert body == b"hello world"


async def test_sized_upload_on_the_fast_path_reaches_the_agent(world: World) -> None:
    """A POST with a Content-Length body is relayed byte for byte."""
    sid = await world.sandbox()
    token = await world.open(sid)
    client = await wire(world)
    client.expect(b"POST")
    payload = bytes(range(256)) * 1000
    origin = f"http://{world.host(sid)}"
    await client.send(
        (
            f"POST /echo HTTP/1.1\r\nHost: {world.host(sid)}\r\nOrigin: {origin}\r\n"
            f"Cookie: agentserver_sandbox={token}\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode()
        + payload
    )
    response, body = await client.response()
    assert response.status_code == 200
    assert body == payload


async def test_malformed_head_is_rejected_by_hypercorn(world: World) -> None:
    """A head the fast path cannot parse gets hypercorn's 400, not a crash or a hang."""
    sid = await world.sandbox()
    client = await wire(world)
    client.expect(b"GET")
    await client.send(f"GET / HTTP/1.1\r\nHost: {world.host(sid)}\r\nBad Header\r\n\r\n".encode())
    response, _ = await client.response()
    assert response.status_code == 400


async def broken_agent(reply: bytes, task_status: trio.TaskStatus[int]) -> None:
    """An agent that answers every request with `reply` and closes."""

    async def answer(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(reply)
        await stream.aclose()

    await serve_on_free_port(answer, task_status)


async def test_an_agent_silent_past_the_proxy_timeout_gets_a_504(
    world: World, nursery: trio.Nursery
) -> None:
    """With --proxy-timeout 1s, an agent that never answers becomes a 504 after that wait."""

    async def silent(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await trio.sleep_forever()

    sid = await world.sandbox(port=await nursery.start(serve_on_free_port, silent))
    token = await world.open(sid)
    async with world.sub(sid, token) as sub:
        response = await sub.get("/json", headers={"Accept": "application/json"})
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "sandbox_timeout"


async def test_a_garbled_agent_response_becomes_a_502_page(
    world: World, nursery: trio.Nursery
) -> None:
    """A sandbox answering with a broken head gets the browser a clear 502, not garbage."""
    port = await nursery.start(broken_agent, b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")
    sid = await world.sandbox(port=port)
    token = await world.open(sid)
    async with world.sub(sid, token) as sub:
        response = await sub.get("/json", headers={"Accept": "application/json"})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "sandbox_unreachable"
