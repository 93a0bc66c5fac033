"""Tests for how the agent's client reads opencode's response heads with `agentserver.http1`
(agent/local_connection.py, agent/local_http.py): informational heads skipped, heads split
anyhow, malformed or oversize ones refused as `Unreachable`, bodies up to the close never
reused, clean kept-alive exchanges reused, and a request HTTP/1.1 cannot carry never sent."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio
import trio.testing

from agentserver.agent.local_connection import Connection
from agentserver.agent.local_http import LocalClient, Unreachable
from agentserver.http1 import MAX_HEAD, ProtocolError
from tests.support.local_origin import Origin, read_body
from tests.support.tcp import serve_on_free_port

Handler = Callable[[trio.SocketStream], Awaitable[None]]


async def _refusal(answer: bytes) -> Unreachable:
    """What a request answered with `answer` fails with."""
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_on_free_port, Origin(answer).serve)
        client = LocalClient(f"http://127.0.0.1:{port}")
        with pytest.raises(Unreachable) as caught:
            await client.request("GET", "/", [])
        nursery.cancel_scope.cancel()
    return caught.value


async def _exchanges(origin: Origin, count: int, method: str = "GET") -> list[bytes]:
    """`count` requests in a row through one client; each body read whole."""
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_on_free_port, origin.serve)
        client = LocalClient(f"http://127.0.0.1:{port}")
        bodies = [await read_body(await client.request(method, "/", [])) for _ in range(count)]
        client.close()
        nursery.cancel_scope.cancel()
    return bodies


async def test_informational_heads_are_skipped_for_the_final_one() -> None:
    """100 Continue and 103 Early Hints before the answer are read past: the response is the
    final head, its own fields only, and its connection is reused."""
    origin = Origin(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    )
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_on_free_port, origin.serve)
        client = LocalClient(f"http://127.0.0.1:{port}")
        for _ in range(2):
            response = await client.request("GET", "/", [])
            assert (response.status, response.headers) == (200, [("content-length", "2")])
            assert await read_body(response) == b"ok"
        client.close()
        nursery.cancel_scope.cancel()
    assert origin.connections == 1


async def test_a_head_arriving_a_byte_at_a_time_is_read_whole() -> None:
    """A head split over as many reads as it has bytes (every CRLF split too) parses as one,
    and the bytes that came with its last one are the body's first ones."""
    wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 5\r\n\r\nhe"
    last = len(wire) - 3  # the final LF, sent with the body's first bytes
    ours, theirs = trio.testing.memory_stream_pair()
    conn = Connection(ours)
    async with trio.open_nursery() as nursery:

        async def trickle() -> None:
            for byte in wire[:last]:
                await theirs.send_all(bytes([byte]))
                await trio.testing.wait_all_tasks_blocked()  # read before the next one
            await theirs.send_all(wire[last:])

        nursery.start_soon(trickle)
        head, early = await conn.receive_head(b"GET")
    assert (head.status, head.headers, head.length) == (
        200,
        [(b"x-a", b"1"), (b"content-length", b"5")],
        5,
    )
    assert early == b"he"


async def test_a_lone_lf_in_a_head_fails_at_once_without_waiting_for_more() -> None:
    """A head whose lines end with LF alone is refused as soon as it is seen, while the peer
    keeps the connection open: no wait for a blank line that never comes."""
    ours, theirs = trio.testing.memory_stream_pair()
    await theirs.send_all(b"HTTP/1.1 200 OK\ncontent-length: 0\n\n")
    with pytest.raises(ProtocolError, match="LF alone"):
        await Connection(ours).receive_head(b"GET")


@pytest.mark.parametrize("ended", [False, True])
async def test_an_oversize_head_is_unreachable(ended: bool) -> None:
    """A head of more than 64 KiB, whether it goes on or ends, is refused as Unreachable."""
    answer = b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * MAX_HEAD + (b"\r\n\r\n" if ended else b"")
    assert "more than" in str(await _refusal(answer))


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (b"HTTP/1.1 2000 OK\r\n\r\n", "status line"),
        (b"HTTP/2 200 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "header line"),
        (b"HTTP/1.1 200 OK\r\nx-a: 1\r\n folded: 2\r\n\r\n", "header line"),
        (b"HTTP/1.1 200 OK\r\nx-a: 1\x00\r\n\r\n", "header line"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nx-a: 1\n\r\n", "LF alone"),
        (b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n", "101"),
    ],
)
async def test_a_malformed_head_is_unreachable(answer: bytes, why: str) -> None:
    """A bad status line, a bad or folded header line, conflicting or invalid Content-Length
    values, a bare LF or a switch nobody asked for: Unreachable, saying which."""
    assert why in str(await _refusal(answer))


async def test_a_body_read_up_to_the_close_arrives_whole_and_is_not_reused() -> None:
    """A response with neither length nor chunks is read until the peer closes, arriving
    whole however it was written, and its connection is never put back for reuse."""
    origin = Origin(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nhello, world", close=True)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_on_free_port, origin.serve)
        client = LocalClient(f"http://127.0.0.1:{port}")
        for _ in range(2):
            assert await read_body(await client.request("GET", "/", [])) == b"hello, world"
            assert client._idle == []  # not even a closed one, for the next request to drop
        client.close()
        nursery.cancel_scope.cancel()
    assert origin.connections == 2


@pytest.mark.parametrize(
    ("method", "answer", "body"),
    [
        ("GET", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", b"hello"),
        ("GET", b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", b""),
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\n", b""),
        ("GET", b"HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n", b""),
        ("HEAD", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", b""),
        ("GET", b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\nx", b"x"),
    ],
)
async def test_a_response_that_keeps_the_connection_alive_is_reused(
    method: str, answer: bytes, body: bytes
) -> None:
    """After a clean answer that keeps the connection (sized, empty, bodiless by status or
    method, HTTP/1.0 with keep-alive), the next requests go over the same connection."""
    origin = Origin(answer)
    assert await _exchanges(origin, 3, method) == [body] * 3
    assert (origin.connections, len(origin.requests)) == (1, 3)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\n",
        b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
    ],
)
async def test_a_response_with_bytes_after_it_or_without_keep_alive_is_not_reused(
    answer: bytes,
) -> None:
    """Bytes nobody asked for after a response's end, or an HTTP/1.0 answer without
    keep-alive: the connection is closed, and the next request opens another."""
    origin = Origin(answer)
    bodies = await _exchanges(origin, 2)
    assert bodies[0] == bodies[1] == (b"" if b" 204 " in answer else b"ok")
    assert origin.connections == 2


@pytest.mark.parametrize(
    ("name", "value"),
    [("x-a", "1\r\nx-evil: 1"), ("x-a", "1\x01"), ("x-a", " 1"), ("x a", "1"), ("", "1")],
)
async def test_a_request_http_1_1_cannot_carry_is_unreachable_and_never_sent(
    name: str, value: str
) -> None:
    """A header name or value HTTP/1.1 cannot carry is Unreachable before any connection is
    made: the server never sees a request."""
    origin = Origin(b"HTTP/1.1 204 No Content\r\n\r\n")
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_on_free_port, origin.serve)
        client = LocalClient(f"http://127.0.0.1:{port}")
        with pytest.raises(Unreachable, match="the request cannot be sent: illegal header"):
            await client.request("GET", "/", [("x-ok", "1"), (name, value)])
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert (origin.connections, origin.requests) == (0, [])


async def _body(size: int) -> AsyncIterator[bytes]:
    yield b"x" * size
    await trio.lowlevel.checkpoint()


@pytest.mark.parametrize("size", [3, 7])
async def test_a_request_body_not_of_its_declared_length_is_unreachable(size: int) -> None:
    """A body longer or shorter than the Content-Length it goes with is refused (the excess
    is never sent), and that connection is closed."""
    origin = Origin(b"HTTP/1.1 204 No Content\r\n\r\n")
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_on_free_port, origin.serve)
        client = LocalClient(f"http://127.0.0.1:{port}")
        with pytest.raises(Unreachable, match="Content-Length"):
            await client.request("POST", "/", [], _body(size), 5)
        await read_body(await client.request("GET", "/", []))
        client.close()
        nursery.cancel_scope.cancel()
    assert origin.connections == 2
