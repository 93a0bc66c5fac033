"""`TunnelStream.answer_whole`: a response that is complete before the receiver took its head
(a small one, in one message) is offered from the tunnel's reader; taken, the receiver finds
the head and an ended, empty body; refused, or too late (the head was taken first), nothing
changes."""

from __future__ import annotations

import trio
import trio.testing

from agentserver.tunnel import RequestReceived, TunnelStream
from agentserver.tunnel.frames import Headers
from tests.unit.test_tunnel_transport import read_all, tunnel_pair

HEADERS = [("content-type", "text/plain"), ("content-length", "2")]


async def whole_at_once(request: RequestReceived, stream: TunnelStream) -> None:
    await stream.send_response(200, HEADERS, b"hi", end=True)


class Whole:
    """Takes (or refuses) what it is offered, and records it with whether the receiver had
    taken the head by then."""

    def __init__(self, take: bool) -> None:
        self.take = take
        self.offered: list[tuple[int, Headers, bytes]] = []

    def __call__(self, status: int, headers: Headers, body: bytes) -> bool:
        self.offered.append((status, tuple(headers), body))
        return self.take


async def test_a_whole_response_is_offered_before_the_receiver_takes_its_head() -> None:
    """Taken: offered once with its complete body; the receiver then gets the head and an
    empty, ended body (nothing is delivered twice)."""
    async with tunnel_pair(whole_at_once) as pair:
        stream = await pair.server.open_request("GET", "/small", body=False)
        whole = Whole(take=True)
        stream.answer_whole(whole)
        status, headers = await stream.receive_response_head()
        assert whole.offered == [(200, tuple(HEADERS), b"hi")]
        assert (status, tuple(headers)) == (200, tuple(HEADERS))
        assert await read_all(stream) == b""
        await stream.aclose()


async def test_a_refused_offer_leaves_the_body_to_the_receiver() -> None:
    async with tunnel_pair(whole_at_once) as pair:
        stream = await pair.server.open_request("GET", "/small", body=False)
        whole = Whole(take=False)
        stream.answer_whole(whole)
        assert (await stream.receive_response_head())[0] == 200
        assert len(whole.offered) == 1
        assert await read_all(stream) == b"hi"
        await stream.aclose()


async def test_a_response_whose_head_was_taken_first_is_not_offered() -> None:
    """The head arrives alone and is taken; the body and end that follow go to the receiver."""
    go_on = trio.Event()

    async def head_then_body(request: RequestReceived, stream: TunnelStream) -> None:
        await stream.send_response_head(200, HEADERS)
        await go_on.wait()
        await stream.send_all(b"hi")
        await stream.send_eof()

    async with tunnel_pair(head_then_body) as pair:
        stream = await pair.server.open_request("GET", "/small", body=False)
        whole = Whole(take=True)
        stream.answer_whole(whole)
        assert (await stream.receive_response_head())[0] == 200
        go_on.set()
        assert await read_all(stream) == b"hi"
        assert whole.offered == []
        await stream.aclose()


async def test_a_stream_closed_before_its_answer_is_not_offered() -> None:
    release = trio.Event()

    async def late(request: RequestReceived, stream: TunnelStream) -> None:
        await release.wait()
        await stream.send_response(200, HEADERS, b"hi", end=True)

    async with tunnel_pair(late) as pair:
        stream = await pair.server.open_request("GET", "/small", body=False)
        whole = Whole(take=True)
        stream.answer_whole(whole)
        await stream.aclose()
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert whole.offered == []


async def test_an_offer_that_fails_leaves_the_response_to_the_receiver_and_the_tunnel_up() -> None:
    """The reader runs the offer: a taker that raises costs its stream nothing but the shortcut
    (logged), and the tunnel goes on serving."""

    def failing(status: int, headers: Headers, body: bytes) -> bool:
        raise RuntimeError("a bug in the taker")

    async with tunnel_pair(whole_at_once) as pair:
        for _ in range(2):
            stream = await pair.server.open_request("GET", "/small", body=False)
            stream.answer_whole(failing)
            assert (await stream.receive_response_head())[0] == 200
            assert await read_all(stream) == b"hi"
            await stream.aclose()
