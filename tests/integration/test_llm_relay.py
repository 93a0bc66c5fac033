"""A sandbox's LLM relay over real sockets: what it passes on, what it refuses, and that no
connection of a sandbox's takes it down (sandboxes/llm_relay.py)."""

from __future__ import annotations

from contextlib import suppress
from functools import partial

import trio

from agentserver.sandboxes import llm_relay
from agentserver.sandboxes.llm_relay import Upstream

PREFIX = "/proxy/anthropic"
ANSWER = b"x" * (4 << 20)  # more than the sockets buffer: a client can leave mid-answer


class FakeServer:
    """Stands in for the server's listener: records each request head, answers ANSWER."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []

    async def handle(self, stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data and (chunk := await stream.receive_some(65536)):
            data += chunk
        self.heads.append(data.partition(b"\r\n\r\n")[0])
        head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        with suppress(trio.BrokenResourceError):  # the client left: carry on, as a server does
            await stream.send_all(head % len(ANSWER) + ANSWER)
        await stream.aclose()


async def start(nursery: trio.Nursery, **options: int) -> tuple[FakeServer, int]:
    fake = FakeServer()
    (listener,) = await nursery.start(partial(trio.serve_tcp, fake.handle, 0, host="127.0.0.1"))
    upstream = Upstream("127.0.0.1", listener.socket.getsockname()[1], PREFIX)
    port = await nursery.start(partial(llm_relay.serve, "127.0.0.1", upstream, **options))
    return fake, port


async def exchange(port: int, request: bytes, *, read_all: bool = True) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        answer = b""
        while chunk := await stream.receive_some(65536):
            answer += chunk
            if not read_all:
                break
    return answer


REQUEST = (
    b"POST /proxy/anthropic/v1/messages HTTP/1.1\r\nhost: relay\r\nconnection: keep-alive\r\n"
    b"content-length: 2\r\n\r\n{}"
)


async def test_a_proxy_request_is_passed_on_and_its_answer_streamed_back(
    nursery: trio.Nursery,
) -> None:
    """A request under the proxy's path reaches the server with `connection: close` instead of
    the sandbox's, and the whole answer comes back."""
    fake, port = await start(nursery)
    answer = await exchange(port, REQUEST)
    assert answer.endswith(ANSWER)
    assert answer.startswith(b"HTTP/1.1 200 OK")
    (head,) = fake.heads
    assert head.startswith(b"POST /proxy/anthropic/v1/messages HTTP/1.1\r\n")
    assert b"connection: close" in head
    assert b"keep-alive" not in head
    nursery.cancel_scope.cancel()


async def test_another_path_is_answered_404_without_reaching_the_server(
    nursery: trio.Nursery,
) -> None:
    """A request for any other path is refused by the relay itself."""
    fake, port = await start(nursery)
    answer = await exchange(port, b"GET /api/auth/config HTTP/1.1\r\nhost: relay\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 404 ")
    assert fake.heads == []
    nursery.cancel_scope.cancel()


async def test_a_client_leaving_mid_answer_does_not_stop_the_relay(
    nursery: trio.Nursery,
) -> None:
    """A sandbox that hangs up while its answer streams (a broken pipe in the relay) leaves
    the relay serving the next request."""
    _, port = await start(nursery)
    for _ in range(3):
        assert (await exchange(port, REQUEST, read_all=False)).startswith(b"HTTP/1.1 200")
    assert (await exchange(port, REQUEST)).endswith(ANSWER)
    nursery.cancel_scope.cancel()


async def test_a_sandbox_holds_a_bounded_number_of_connections(nursery: trio.Nursery) -> None:
    """Connections beyond the relay's limit are answered 503 at once; one that ends frees its
    place for the next."""
    _, port = await start(nursery, max_connections=2)
    held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
    for stream in held:  # each is inside the relay, waiting for its request head
        await stream.send_all(b"POST /proxy/anthropic/v1/messages HTTP/1.1\r\n")
    assert (await exchange(port, b"")).startswith(b"HTTP/1.1 503 ")  # answered before it asks
    await held.pop().aclose()
    answer = b""
    with trio.fail_after(10):
        while not answer.startswith(b"HTTP/1.1 200"):  # the freed place is taken once released
            answer = await exchange(port, REQUEST, read_all=False)
    for stream in held:
        await stream.aclose()
    nursery.cancel_scope.cancel()
