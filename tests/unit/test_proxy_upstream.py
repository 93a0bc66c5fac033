"""The proxy's HTTP/1.1 upstream pool against a real loopback server (no database)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from agentserver.errors import SandboxUnreachable
from agentserver.framing import BodyMismatch
from agentserver.proxy.upstream import Pool, UpstreamTimeout
from tests.support.tcp import read_exactly, serve_on_free_port, tcp_pair
from tests.support.upstream import HTML, RecordingUpstream, serve_upstream


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def fetch(
    pool: Pool, port: int, method: bytes, target: bytes, body: tuple[bytes, ...] = ()
) -> tuple[int, bytes]:
    headers = [(b"host", b"upstream")]
    response = await pool.upstream("127.0.0.1", port).request(
        method, target, headers, chunks(*body), length=sum(map(len, body))
    )
    data = b"".join([c async for c in response.body])
    await response.aclose()
    return response.status, data


@pytest.fixture
async def upstream(nursery: trio.Nursery) -> RecordingUpstream:
    up: RecordingUpstream = await nursery.start(serve_upstream, RecordingUpstream())
    return up


async def test_a_completed_response_returns_its_connection_for_reuse(
    upstream: RecordingUpstream,
) -> None:
    """Two requests in a row share one upstream connection once the first body was read."""
    pool = Pool()
    assert await fetch(pool, upstream.port, b"GET", b"/") == (200, HTML)
    assert pool.idle_count(("127.0.0.1", upstream.port)) == 1
    assert (await fetch(pool, upstream.port, b"GET", b"/json"))[0] == 200
    assert upstream.connections == 1
    pool.close()


async def test_an_abandoned_body_closes_its_connection(upstream: RecordingUpstream) -> None:
    """Closing a response before its end closes the connection instead of pooling it."""
    pool = Pool()
    response = await pool.upstream("127.0.0.1", upstream.port).request(
        b"GET", b"/big?size=10000000", [(b"host", b"u")], chunks(), length=0
    )
    await anext(response.body)
    await response.aclose()
    assert pool.idle_count() == 0
    assert (await fetch(pool, upstream.port, b"GET", b"/"))[0] == 200
    assert upstream.connections == 2
    pool.close()


async def test_a_stale_connection_is_retried_with_a_put_body_replayed(
    upstream: RecordingUpstream,
) -> None:
    """A PUT (idempotent) on a connection the server dropped silently is sent again, body
    included."""
    pool = Pool()
    upstream.drop_after_response = True
    assert await fetch(pool, upstream.port, b"PUT", b"/echo", (b"one", b"-two")) == (
        200,
        b"one-two",
    )
    assert await fetch(pool, upstream.port, b"PUT", b"/echo", (b"three",)) == (200, b"three")
    assert [r.body for r in upstream.seen("/echo")] == [b"one-two", b"three"]
    assert upstream.connections == 2
    pool.close()


class _OneShotAgent:
    """Answers each connection's first request; the second request on the first connection
    is read whole and then the connection is closed unanswered (the agent may have acted)."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.connections = 0
        self.closed = trio.Event()

    async def read_request(self, stream: trio.SocketStream, buffer: bytearray) -> bytes:
        while b"\r\n\r\n" not in buffer:
            buffer += await stream.receive_some(65536)
        head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        while len(rest) < length:
            rest += await stream.receive_some(65536)
        buffer[:] = rest[length:]
        self.requests.append(head.split(b" ", 1)[0] + b" " + rest[:length])
        return rest[:length]

    async def __call__(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        first = self.connections == 1
        buffer = bytearray()
        async with stream:
            body = await self.read_request(stream, buffer)
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body
            )
            if first:
                await self.read_request(stream, buffer)
        self.closed.set()


async def test_a_post_on_a_connection_that_breaks_is_never_sent_twice(
    nursery: trio.Nursery,
) -> None:
    """A POST whose pooled connection breaks before any answer is not replayed: the agent may
    have acted on it, so the caller gets SandboxUnreachable and the agent saw it once."""
    agent = _OneShotAgent()
    port = await nursery.start(serve_on_free_port, agent)
    pool = Pool()
    assert await fetch(pool, port, b"GET", b"/") == (200, b"")
    with pytest.raises(SandboxUnreachable):
        await fetch(pool, port, b"POST", b"/act", (b"launch",))
    assert agent.requests == [b"GET ", b"POST launch"]
    pool.close()


async def test_a_post_skips_a_pooled_connection_the_agent_already_closed(
    nursery: trio.Nursery,
) -> None:
    """A POST does not go on an idle connection the agent has closed: it opens a fresh one
    and reaches the agent exactly once."""

    agent = _OneShotAgent()
    agent.connections = 1  # every connection answers one request, then closes
    port = await nursery.start(serve_on_free_port, agent)
    pool = Pool()
    assert await fetch(pool, port, b"GET", b"/") == (200, b"")
    await agent.closed.wait()
    assert await fetch(pool, port, b"POST", b"/act", (b"launch",)) == (200, b"launch")
    assert agent.requests == [b"GET ", b"POST launch"]
    assert pool.idle_count() == 1
    pool.close()


async def test_expired_idle_connections_are_not_reused(
    upstream: RecordingUpstream, autojump_clock: trio.testing.MockClock
) -> None:
    """An idle connection older than the expiry is closed, and a fresh one is opened."""
    pool = Pool(idle_expiry=4.0)
    await fetch(pool, upstream.port, b"GET", b"/")
    await trio.sleep(5)  # virtual time: past the idle expiry
    await fetch(pool, upstream.port, b"GET", b"/")
    assert upstream.connections == 2
    pool.close()


async def test_no_answer_within_the_header_wait_is_a_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """An agent that accepts but never answers yields UpstreamTimeout after the header wait."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    accepted: list[trio.SocketStream] = []

    async def silent(stream: trio.SocketStream) -> None:
        accepted.append(stream)
        await trio.sleep_forever()

    await nursery.start(trio.serve_listeners, silent, listeners)
    pool = Pool(header_timeout=30.0)
    with pytest.raises(UpstreamTimeout):
        await fetch(pool, port, b"GET", b"/")
    assert pool.idle_count() == 0
    nursery.cancel_scope.cancel()


async def test_nothing_listening_is_unreachable() -> None:
    """A port with no agent behind it raises SandboxUnreachable, not an OSError."""
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(SandboxUnreachable):
        await fetch(Pool(), port, b"GET", b"/")


async def test_head_and_empty_responses_reuse_the_connection(upstream: RecordingUpstream) -> None:
    """A HEAD answer (a Content-Length but no body) ends cleanly and keeps the connection."""
    pool = Pool()
    assert await fetch(pool, upstream.port, b"HEAD", b"/") == (200, b"")
    assert await fetch(pool, upstream.port, b"GET", b"/") == (200, HTML)
    assert upstream.connections == 1
    pool.close()


async def test_a_spliced_body_arrives_whole_and_frees_its_connection(
    upstream: RecordingUpstream,
) -> None:
    """A sized body moved with splice(2) reaches the browser socket and the link is reused."""
    pool = Pool()
    size = 3_000_017
    response = await pool.upstream("127.0.0.1", upstream.port).request(
        b"GET", f"/big?size={size}".encode(), [(b"host", b"u")], chunks(), length=0
    )
    assert response.splice is not None
    async with tcp_pair() as (sink, browser), trio.open_nursery() as nursery:
        received: list[bytes] = []

        async def read() -> None:
            received.append(await read_exactly(browser, size))

        nursery.start_soon(read)
        assert await response.splice(sink) == size
    assert received == [b"x" * size]
    assert pool.idle_count() == 1
    assert (await fetch(pool, upstream.port, b"GET", b"/json"))[0] == 200
    assert upstream.connections == 1
    pool.close()


async def test_a_body_ended_by_closing_is_read_to_the_end(nursery: trio.Nursery) -> None:
    """A response with no length and no chunking ends when the agent closes; never reused."""

    async def agent(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nhello ")
        await stream.send_all(b"world")
        await stream.aclose()

    port = await nursery.start(serve_on_free_port, agent)
    pool = Pool()
    assert await fetch(pool, port, b"GET", b"/") == (200, b"hello world")
    assert pool.idle_count() == 0
    pool.close()


async def test_a_sandbox_reached_at_a_new_endpoint_drops_the_old_ones_connections(
    upstream: RecordingUpstream, nursery: trio.Nursery
) -> None:
    """When a sandbox's agent moves to another port, the old port's idle connections close."""
    moved: RecordingUpstream = await nursery.start(serve_upstream, RecordingUpstream())
    pool = Pool()
    for port in (upstream.port, moved.port):
        response = await pool.upstream("127.0.0.1", port, "sbx").request(
            b"GET", b"/json", [(b"host", b"u")], chunks(), length=0
        )
        assert [c async for c in response.body]
    assert pool.idle_count(("127.0.0.1", upstream.port)) == 0
    assert pool.idle_count(("127.0.0.1", moved.port)) == 1
    pool.forget_sandbox("sbx")
    assert pool.idle_count() == 0


async def test_expired_connections_nobody_asks_for_again_are_swept(
    upstream: RecordingUpstream, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """An expired idle connection to an endpoint no request uses any more is closed when the
    pool is next used for anything, instead of staying open for good."""
    other: RecordingUpstream = await nursery.start(serve_upstream, RecordingUpstream())
    pool = Pool(idle_expiry=4.0)
    await fetch(pool, upstream.port, b"GET", b"/")
    await trio.sleep(5)  # virtual time: past the idle expiry
    await fetch(pool, other.port, b"GET", b"/")
    assert pool.idle_count(("127.0.0.1", upstream.port)) == 0
    assert pool.idle_count() == 1
    pool.close()


async def test_the_request_is_framed_by_its_length_not_by_its_headers(
    upstream: RecordingUpstream,
) -> None:
    """Framing and Connection fields handed to the writer are replaced by the body's own
    Content-Length, and the connection stays reusable."""
    pool = Pool()
    headers = [
        (b"host", b"u"),
        (b"content-length", b"0"),
        (b"transfer-encoding", b"chunked"),
        (b"connection", b"close"),
    ]
    response = await pool.upstream("127.0.0.1", upstream.port).request(
        b"POST", b"/echo", headers, chunks(b"hello", b" world"), length=11
    )
    assert b"".join([c async for c in response.body]) == b"hello world"
    (seen,) = upstream.requests
    assert seen.header("content-length") == ["11"]
    assert seen.header("transfer-encoding") == seen.header("connection") == []
    assert pool.idle_count() == 1
    pool.close()


@pytest.mark.parametrize(("parts", "length"), [((b"abc", b"def"), 3), ((b"abc",), 10)])
async def test_a_body_not_matching_its_length_closes_its_connection(
    upstream: RecordingUpstream, parts: tuple[bytes, ...], length: int
) -> None:
    """A body longer or shorter than declared raises BodyMismatch, is never a complete request
    to the agent, and its (pooled) connection is closed rather than reused."""
    pool = Pool()
    await fetch(pool, upstream.port, b"GET", b"/")
    with pytest.raises(BodyMismatch):
        await pool.upstream("127.0.0.1", upstream.port).request(
            b"POST", b"/echo", [(b"host", b"u")], chunks(*parts), length=length
        )
    assert pool.idle_count() == 0
    await fetch(pool, upstream.port, b"GET", b"/json")
    assert [r.target for r in upstream.requests] == ["/", "/json"]
    assert upstream.connections == 2
    pool.close()


async def test_a_body_of_unknown_length_goes_chunked(upstream: RecordingUpstream) -> None:
    """With no length, the writer frames the body chunked, and it arrives whole."""
    pool = Pool()
    response = await pool.upstream("127.0.0.1", upstream.port).request(
        b"PUT", b"/echo", [(b"host", b"u")], chunks(b"a", b"", b"bc"), length=None
    )
    assert b"".join([c async for c in response.body]) == b"abc"
    assert upstream.requests[0].header("transfer-encoding") == ["chunked"]
    pool.close()
