"""Tests for the agent's HTTP/1.1 client to the local opencode (agent/local_http.py): kept-alive
connections reused and dropped when they must be, bodies framed both ways, events streamed as
they come, and every failure before an answer reported as `Unreachable`."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import AsyncIterator

import pytest
import trio

from agentserver.agent.local_http import Broken, LocalClient, Unreachable
from tests.support.bulk_upstream import BulkUpstream, _serve_connection, pattern
from tests.support.local_origin import Origin, read_body
from tests.support.tcp import serve_on_free_port


class Upstream:
    """The bulk upstream, counting the connections it accepted."""

    def __init__(self) -> None:
        self.connections = 0
        self.streams: list[trio.SocketStream] = []
        self.port = 0

    async def serve(self, task_status: trio.TaskStatus[Upstream]) -> None:
        async def handler(stream: trio.SocketStream) -> None:
            self.connections += 1
            self.streams.append(stream)
            await _serve_connection(BulkUpstream(), stream)

        async with trio.open_nursery() as nursery:
            self.port = await nursery.start(serve_on_free_port, handler)
            task_status.started(self)


async def test_sequential_requests_share_one_kept_alive_connection() -> None:
    async with trio.open_nursery() as nursery:
        up = await nursery.start(Upstream().serve)
        client = LocalClient(f"http://127.0.0.1:{up.port}")
        for _ in range(5):
            response = await client.request("GET", "/small", [])
            assert response.status == 200
            assert json.loads(await read_body(response))["size"] == 0
        assert up.connections == 1
        client.close()
        nursery.cancel_scope.cancel()


async def test_a_connection_the_peer_closed_while_idle_is_not_used() -> None:
    async with trio.open_nursery() as nursery:
        up = await nursery.start(Upstream().serve)
        client = LocalClient(f"http://127.0.0.1:{up.port}")
        await read_body(await client.request("GET", "/small", []))
        await up.streams[0].aclose()  # opencode ended the idle connection
        await trio.testing.wait_all_tasks_blocked()
        response = await client.request("GET", "/small", [])
        assert response.status == 200
        await read_body(response)
        assert up.connections == 2
        client.close()
        nursery.cancel_scope.cancel()


async def test_a_response_closed_before_its_end_closes_its_connection() -> None:
    async with trio.open_nursery() as nursery:
        up = await nursery.start(Upstream().serve)
        client = LocalClient(f"http://127.0.0.1:{up.port}")
        response = await client.request("GET", f"/bytes?size={4 * 1024 * 1024}", [])
        response.aclose_now()  # the browser left: the rest must never be read as a next answer
        await read_body(await client.request("GET", "/small", []))
        assert up.connections == 2
        client.close()
        nursery.cancel_scope.cancel()


async def _blocks(count: int) -> AsyncIterator[bytes]:
    for i in range(count):
        yield bytes([i]) * 10_000
        await trio.lowlevel.checkpoint()


@pytest.mark.parametrize("length", [30_000, None])
async def test_a_request_body_arrives_whole_framed_by_length_or_chunked(length: int | None) -> None:
    async with trio.open_nursery() as nursery:
        up = await nursery.start(Upstream().serve)
        client = LocalClient(f"http://127.0.0.1:{up.port}")
        response = await client.request("POST", "/upload", [], _blocks(3), length)
        answer = json.loads(await read_body(response))
        sent = b"".join(bytes([i]) * 10_000 for i in range(3))
        assert answer == {"size": len(sent), "sha256": hashlib.sha256(sent).hexdigest()}
        client.close()
        nursery.cancel_scope.cancel()


async def test_a_download_arrives_complete() -> None:
    size = 3 * 1024 * 1024 + 17
    async with trio.open_nursery() as nursery:
        up = await nursery.start(Upstream().serve)
        client = LocalClient(f"http://127.0.0.1:{up.port}")
        response = await client.request("GET", f"/bytes?size={size}", [])
        assert await read_body(response) == pattern(size)
        client.close()
        nursery.cancel_scope.cancel()


async def test_events_are_handed_on_as_they_arrive_not_held_for_more() -> None:
    async with trio.open_nursery() as nursery:
        up = await nursery.start(Upstream().serve)
        client = LocalClient(f"http://127.0.0.1:{up.port}")
        response = await client.request("GET", "/clock?count=5&every=0.2", [])
        body, done = await response.buffered()
        assert not done
        lags = []
        async for chunk in response.chunks():
            now = time.perf_counter_ns()
            lags += [now - int(line[5:]) for line in chunk.split(b"\n") if line[:5] == b"data:"]
        response.aclose_now()
        assert len(lags) + body.count(b"data:") == 5
        assert max(lags) < 0.15e9  # each well before the next one, 0.2 s later
        client.close()
        nursery.cancel_scope.cancel()


async def test_nothing_listening_is_unreachable() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = LocalClient(f"http://127.0.0.1:{port}")
    with pytest.raises(Unreachable):
        await client.request("GET", "/", [])


async def test_the_host_header_names_opencodes_address_and_headers_pass_in_order() -> None:
    heads: list[bytes] = []

    async def record(stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(65536)
        heads.append(head)
        await stream.send_all(b"HTTP/1.1 204 No Content\r\nx-b: 2\r\nx-a: 1\r\nx-b: 3\r\n\r\n")

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_on_free_port, record)
        client = LocalClient(f"http://127.0.0.1:{port}")
        sent = [("x-b", "1"), ("x-a", "é"), ("x-b", "2")]
        response = await client.request("GET", "/p?q=1", sent)
        assert response.headers == [("x-b", "2"), ("x-a", "1"), ("x-b", "3")]
        assert await read_body(response) == b""
        client.close()
        nursery.cancel_scope.cancel()
    lines = heads[0].split(b"\r\n")
    assert lines[0] == b"GET /p?q=1 HTTP/1.1"
    assert lines[1] == f"host: 127.0.0.1:{port}".encode()
    assert lines[2:5] == [b"x-b: 1", "x-a: é".encode("latin-1"), b"x-b: 2"]


async def test_a_body_opencode_frames_wrongly_is_broken_off_not_a_crash() -> None:
    async def bad_chunks(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nZZ\r\n\r\n")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_on_free_port, bad_chunks)
        client = LocalClient(f"http://127.0.0.1:{port}")
        response = await client.request("GET", "/", [])
        with pytest.raises(Broken):
            await read_body(response)
        response.aclose_now()
        nursery.cancel_scope.cancel()


async def test_a_small_body_written_after_its_head_is_waited_for_and_handed_on_whole() -> None:
    async def late_body(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
        await trio.sleep(0.05)
        await stream.send_all(b"hello")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_on_free_port, late_body)
        client = LocalClient(f"http://127.0.0.1:{port}")
        response = await client.request("GET", "/", [])
        assert await response.buffered() == (b"hello", True)
        response.aclose_now()
        client.close()
        nursery.cancel_scope.cancel()


LARGE = 300_000  # more than SMALL_BODY: read straight from the socket


async def test_a_large_sized_body_arrives_whole_and_its_connection_is_reused() -> None:
    """A body framed by a large Content-Length is handed on whole, nothing past its end is
    read, and its kept-alive connection then carries the next request."""
    body = bytes(range(256)) * (LARGE // 256)
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body
    origin = Origin(answer)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_on_free_port, origin.serve)
        client = LocalClient(f"http://127.0.0.1:{port}")
        for _ in range(3):
            assert await read_body(await client.request("GET", "/", [])) == body
        assert origin.connections == 1
        client.close()
        nursery.cancel_scope.cancel()


async def test_a_large_sized_body_with_connection_close_is_not_reused() -> None:
    """After a large body read straight from the socket, a connection the peer said it closes
    is not kept: the next request opens another."""
    answer = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: %d\r\n\r\n" % LARGE
    answer += b"x" * LARGE
    origin = Origin(answer)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_on_free_port, origin.serve)
        client = LocalClient(f"http://127.0.0.1:{port}")
        for _ in range(2):
            assert await read_body(await client.request("GET", "/", [])) == b"x" * LARGE
        assert origin.connections == 2
        client.close()
        nursery.cancel_scope.cancel()


async def test_a_head_answer_with_a_large_length_has_no_body() -> None:
    """A HEAD answer declares a large length but carries no body: it ends at its head and its
    connection carries the next request."""
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % LARGE
    origin = Origin(answer)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_on_free_port, origin.serve)
        client = LocalClient(f"http://127.0.0.1:{port}")
        for _ in range(2):
            assert await read_body(await client.request("HEAD", "/", [])) == b""
        assert origin.connections == 1
        client.close()
        nursery.cancel_scope.cancel()


async def test_a_large_sized_body_cut_short_is_broken_and_its_connection_closed() -> None:
    """A peer that closes before the end of a large sized body breaks the response off, and
    the connection is not reused."""
    connections: list[int] = []

    async def short(stream: trio.SocketStream) -> None:
        connections.append(1)
        await stream.receive_some(65536)
        head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % LARGE
        await stream.send_all(head + b"x" * (LARGE // 2))
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_on_free_port, short)
        client = LocalClient(f"http://127.0.0.1:{port}")
        response = await client.request("GET", "/", [])
        with pytest.raises(Broken):
            await read_body(response)
        response.aclose_now()
        with pytest.raises(Broken):
            await read_body(await client.request("GET", "/", []))
        assert len(connections) == 2
        client.close()
        nursery.cancel_scope.cancel()


CHUNKED_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
)
EVENTS = b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n"


async def test_a_chunked_answer_arrives_whole_and_its_connection_is_reused() -> None:
    """A chunked body (extensions and trailers skipped) is handed on whole, and once it ended
    cleanly its kept-alive connection carries the next request."""
    answer = CHUNKED_HEAD + b"\r\n" + EVENTS + b"0\r\nx-trailer: 1\r\n\r\n"
    origin = Origin(answer)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_on_free_port, origin.serve)
        client = LocalClient(f"http://127.0.0.1:{port}")
        for _ in range(3):
            assert await read_body(await client.request("GET", "/", [])) == b"hello world"
        assert origin.connections == 1
        client.close()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("head", "after"),
    [
        (b"connection: close\r\n", b""),  # the peer said it closes
        (b"", b"HTTP/1.1 200 OK\r\n"),  # bytes nobody asked for after the end
    ],
)
async def test_a_chunked_answer_that_ended_uncleanly_for_reuse_is_not_reused(
    head: bytes, after: bytes
) -> None:
    """A chunked body read whole still leaves its connection unused when the peer said it
    closes, or sent something after the body's end: the next request opens another."""
    answer = CHUNKED_HEAD + head + b"\r\n" + EVENTS + b"0\r\n\r\n" + after
    origin = Origin(answer)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_on_free_port, origin.serve)
        client = LocalClient(f"http://127.0.0.1:{port}")
        for _ in range(2):
            assert await read_body(await client.request("GET", "/", [])) == b"hello world"
        assert origin.connections == 2
        client.close()
        nursery.cancel_scope.cancel()


async def test_a_chunked_answer_closed_before_its_end_closes_its_connection() -> None:
    """A stream the browser left mid-way is not read to its end: its connection is closed,
    never reused for the next request."""
    answer = CHUNKED_HEAD + b"\r\n" + EVENTS  # no last chunk: the stream goes on
    origin = Origin(answer)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_on_free_port, origin.serve)
        client = LocalClient(f"http://127.0.0.1:{port}")
        for _ in range(2):
            response = await client.request("GET", "/", [])
            assert await response.buffered() == (b"hello world", False)
            response.aclose_now()
        assert origin.connections == 2
        client.close()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "body",
    [
        EVENTS,  # the peer closes before the last chunk
        b"5\r\nhello\r\n1x\r\n",  # a bad chunk size after good data
        b"5\r\nhelloXX",  # data without its CRLF
    ],
)
async def test_a_chunked_answer_cut_short_or_malformed_is_broken_and_its_connection_closed(
    body: bytes,
) -> None:
    """A chunked body that ends before its last chunk, or is framed wrongly after a good
    start, breaks the response off, and the connection is not reused."""
    connections: list[int] = []

    async def cut(stream: trio.SocketStream) -> None:
        connections.append(1)
        await stream.receive_some(65536)
        await stream.send_all(CHUNKED_HEAD + b"\r\n" + body)
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_on_free_port, cut)
        client = LocalClient(f"http://127.0.0.1:{port}")
        for _ in range(2):
            response = await client.request("GET", "/", [])
            with pytest.raises(Broken):
                await read_body(response)
            response.aclose_now()
        assert len(connections) == 2
        client.close()
        nursery.cancel_scope.cancel()
