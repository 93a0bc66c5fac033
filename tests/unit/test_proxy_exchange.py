"""The fast path's exchange (proxy/exchange.py) over a real loopback socket, with a stand-in
for the subdomain proxy."""

from __future__ import annotations

import socket
from functools import partial
from typing import Any

import h11
import trio
import trio.testing

from agentserver.http1 import parse_request_head
from agentserver.proxy.exchange import LARGE_CHUNK, Client, Exchange
from agentserver.proxy.exchange_states import Browser, Reply
from agentserver.proxy.http import (
    DIRECT_BODY,
    HELD,
    REFUSED,
    RESPOND_NOW,
    WRITTEN,
    Receive,
    Send,
    refuse_framing,
)
from agentserver.proxy.routing import Target
from tests.support.tcp import tcp_pair


class Refusing:
    """Answers every request the way the proxy refuses one for its framing."""

    async def handle(
        self, target: Target, scope: dict[str, Any], receive: Receive, send: Send
    ) -> None:
        await refuse_framing(send, "refused")


async def test_the_proxy_can_end_a_kept_alive_connection() -> None:
    """An answer carrying `Connection: close` ends a keep-alive connection on the fast path:
    the browser is told so and the exchange does not wait for another request."""
    request = parse_request_head(b"GET / HTTP/1.1\r\nHost: oc-abc.localhost\r\n\r\n")
    assert request is not None
    assert request.keep_alive
    async with tcp_pair() as (browser, server):
        proxy: Any = Refusing()
        exchange = Exchange(
            Client(server), request, partial(proxy.handle, Target("opencode", "abc"))
        )
        assert await exchange.run() is False
        reader = h11.Connection(h11.CLIENT)
        reader.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
        reader.receive_data(await browser.receive_some(65536))
        response = reader.next_event()
    assert isinstance(response, h11.Response)
    assert response.status_code == 400
    assert (b"connection", b"close") in response.headers


class Answering:
    """Answers with the given ASGI messages, after reading the request to its end."""

    def __init__(self, *messages: dict[str, Any]) -> None:
        self.messages = messages
        self.received: list[dict[str, Any]] = []

    async def handle(
        self, target: Target, scope: dict[str, Any], receive: Receive, send: Send
    ) -> None:
        while True:
            self.received.append(await receive())
            if not self.received[-1].get("more_body"):
                break
        for message in self.messages:
            await send(message)


def start(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http.response.start", "status": 200, "headers": headers}


def body(data: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


GET = b"GET / HTTP/1.1\r\nHost: oc-abc.localhost\r\n\r\n"


async def test_a_reply_short_of_its_content_length_ends_the_connection() -> None:
    """A body that stops before the length its head declared ends SHORT, and the connection
    carries no other request (the browser could not tell where the next answer starts)."""
    request = parse_request_head(GET)
    assert request is not None
    proxy: Any = Answering(start([(b"content-length", b"10")]), body(b"1234"))
    async with tcp_pair() as (browser, server):
        exchange = Exchange(
            Client(server), request, partial(proxy.handle, Target("opencode", "abc"))
        )
        assert await exchange.run() is False
        assert exchange.reply is Reply.SHORT
        assert exchange.browser is Browser.SENT
        assert (await browser.receive_some(65536)).endswith(b"\r\n\r\n1234")


async def test_a_whole_chunked_stream_keeps_the_connection() -> None:
    """A stream of unknown length goes out chunked; once its last chunk is written the
    keep-alive connection may carry the next request."""
    request = parse_request_head(GET)
    assert request is not None
    proxy: Any = Answering(start([]), body(b"data: 1\n\n", more=True), body(b""))
    async with tcp_pair() as (browser, server):
        exchange = Exchange(
            Client(server), request, partial(proxy.handle, Target("opencode", "abc"))
        )
        assert await exchange.run() is True
        assert exchange.reply is Reply.COMPLETE
        reader = h11.Connection(h11.CLIENT)
        reader.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
        reader.receive_data(await browser.receive_some(65536))
        events = []
        while not isinstance(event := reader.next_event(), h11.NEED_DATA | h11.EndOfMessage):
            events.append(event)
    assert isinstance(events[0], h11.Response)
    assert (b"transfer-encoding", b"chunked") in events[0].headers
    assert isinstance(event, h11.EndOfMessage)


async def test_large_and_small_chunks_arrive_whole_and_in_order() -> None:
    """Chunks written with their framing by writev (large ones, beyond what the socket buffer
    takes at once) and by one plain write (small ones) decode to the body, in order."""
    request = parse_request_head(GET)
    assert request is not None
    pieces = [bytes([i]) * size for i, size in enumerate([1_000_000, 5, 16 * 1024, 300_000])]
    messages = [body(piece, more=True) for piece in pieces]
    proxy: Any = Answering(start([]), *messages, body(b"tail"))
    received = bytearray()

    async def read_all(browser: trio.SocketStream) -> None:
        reader = h11.Connection(h11.CLIENT)
        reader.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
        while type(event := reader.next_event()) is not h11.EndOfMessage:
            if event is h11.NEED_DATA:
                reader.receive_data(await browser.receive_some(65536))
            elif type(event) is h11.Data:
                received.extend(event.data)

    async with tcp_pair() as (browser, server), trio.open_nursery() as nursery:
        nursery.start_soon(read_all, browser)
        exchange = Exchange(
            Client(server), request, partial(proxy.handle, Target("opencode", "abc"))
        )
        assert await exchange.run() is True
    assert received == b"".join(pieces) + b"tail"


async def test_a_browser_that_leaves_mid_body_reads_as_a_disconnect() -> None:
    """When the browser closes before sending its whole body, the proxy is told
    `http.disconnect`, is told so again if it asks again, and the connection ends."""
    request = parse_request_head(
        b"POST / HTTP/1.1\r\nHost: oc-abc.localhost\r\nContent-Length: 10\r\n\r\n"
    )
    assert request is not None
    proxy: Any = Answering()
    async with tcp_pair() as (browser, server):
        await browser.send_all(b"1234")
        await browser.send_eof()
        exchange = Exchange(
            Client(server), request, partial(proxy.handle, Target("opencode", "abc"))
        )
        assert await exchange.run() is False
        assert exchange.browser is Browser.GONE
        assert await exchange.receive() == {"type": "http.disconnect"}
    assert [m["type"] for m in proxy.received] == ["http.request", "http.disconnect"]
    assert proxy.received[0]["body"] == b"1234"


async def test_body_bytes_read_after_a_failed_write_leave_the_browser_gone() -> None:
    """A body read that completes after a write to the browser failed meanwhile (the
    proxy answers and reads at once) hands the bytes over and leaves the browser GONE."""
    request = parse_request_head(
        b"POST / HTTP/1.1\r\nHost: oc-abc.localhost\r\nContent-Length: 4\r\n\r\n"
    )
    assert request is not None
    proxy: Any = Answering()
    async with tcp_pair() as (browser, server):
        exchange = Exchange(
            Client(server), request, partial(proxy.handle, Target("opencode", "abc"))
        )
        async with trio.open_nursery() as nursery:
            received: list[dict[str, Any]] = []

            async def read() -> None:
                received.append(await exchange.receive())

            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            exchange._left()  # what a failed write does
            await browser.send_all(b"1234")
    assert received == [{"type": "http.request", "body": b"1234", "more_body": False}]
    assert exchange.browser is Browser.GONE


async def test_an_exchange_while_the_server_drains_says_close_and_ends_the_connection() -> None:
    """An exchange made while the server drains (`closing=True`) answers a keep-alive request
    with `Connection: close` and does not keep the connection for another request."""
    request = parse_request_head(GET)
    assert request is not None
    proxy: Any = Answering(start([(b"content-length", b"2")]), body(b"ok"))
    async with tcp_pair() as (browser, server):
        exchange = Exchange(
            Client(server), request, partial(proxy.handle, Target("opencode", "abc")), closing=True
        )
        assert await exchange.run() is False
        reader = h11.Connection(h11.CLIENT)
        reader.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
        reader.receive_data(await browser.receive_some(65536))
        response = reader.next_event()
    assert isinstance(response, h11.Response)
    assert response.status_code == 200
    assert (b"connection", b"close") in response.headers


class Pausing:
    """Answers a chunked stream whose first body bytes wait for `release`."""

    def __init__(self) -> None:
        self.release = trio.Event()

    async def handle(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await receive()
        await send(start([(b"content-type", b"text/event-stream")]))
        await self.release.wait()
        await send(body(b"data: 1\n\n", more=True))
        await send(body(b""))


async def test_a_held_head_leaves_with_the_first_body_bytes() -> None:
    """With `hold_head`, a chunked answer's head is not sent until its first body bytes, and
    then both go out together; without it the head leaves at once (a stream's browser sees
    the answer begin before any event)."""
    request = parse_request_head(GET)
    assert request is not None
    for hold_head in (True, False):
        handler = Pausing()
        async with tcp_pair() as (browser, server), trio.open_nursery() as nursery:
            exchange = Exchange(Client(server), request, handler.handle, hold_head=hold_head)
            nursery.start_soon(exchange.run)
            await trio.testing.wait_all_tasks_blocked()
            early = browser.socket.is_readable()
            handler.release.set()
            first = await browser.receive_some(65536)
        assert early is not hold_head
        if hold_head:
            assert first.startswith(b"HTTP/1.1 200 ")
            assert b"\r\n\r\n9\r\ndata: 1\n\n\r\n" in first


class Direct:
    """A handler that streams a chunked answer, some pieces through the exchange's direct
    writer (DIRECT_BODY) and some as body messages, recording what the writer answered."""

    def __init__(self, piece: bytes = b"", fill: bool = False) -> None:
        self.piece, self.fill = piece, fill
        self.answers: list[int] = []
        self.written: list[bytes] = []
        self.filled = trio.Event()

    async def handle(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        write = scope["extensions"][DIRECT_BODY]
        self.answers.append(write(b"before the head"))
        await send(start([]))
        if self.fill:  # until the socket takes only part of a piece
            while (answer := write(self.piece)) == WRITTEN:
                self.written.append(self.piece)
            self.answers.append(answer)
            self.written.append(self.piece)  # held: its rest goes first with the next write
            self.answers.append(write(b"while held"))
            self.filled.set()
            await send(body(b"end"))
            return
        self.answers.append(write(b"one"))
        await send(body(b"two", more=True))
        self.answers.append(write(b"three"))
        self.answers.append(write(b""))
        self.answers.append(write(b"L" * LARGE_CHUNK))
        await send(body(b""))


def running(exchange: Exchange, nursery: trio.Nursery) -> list[bool]:
    """Run the exchange in `nursery`; the list gets what `run` returned once it returns."""
    ran: list[bool] = []

    async def run() -> None:
        ran.append(await exchange.run())

    nursery.start_soon(run)
    return ran


async def read_body(browser: trio.SocketStream) -> bytes:
    reader = h11.Connection(h11.CLIENT)
    reader.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    received = bytearray()
    while type(event := reader.next_event()) is not h11.EndOfMessage:
        if event is h11.NEED_DATA:
            reader.receive_data(await browser.receive_some(65536))
        elif type(event) is h11.Data:
            received.extend(event.data)
    return bytes(received)


async def test_a_direct_piece_goes_out_as_a_chunk_in_order_with_the_body_messages() -> None:
    """DIRECT_BODY writes a piece of a chunked answer at once, framed, in order with the body
    messages around it; it refuses before the head, an empty piece and a large one."""
    request = parse_request_head(GET)
    assert request is not None
    handler = Direct()
    async with tcp_pair() as (browser, server):
        exchange = Exchange(Client(server), request, handler.handle)
        assert await exchange.run() is True
        assert await read_body(browser) == b"onetwothree"
    assert handler.answers == [REFUSED, WRITTEN, WRITTEN, REFUSED, REFUSED]


async def test_a_piece_the_socket_takes_in_part_is_held_and_sent_before_the_next() -> None:
    """When the browser's socket takes only part of a piece, the rest is held (HELD), nothing
    more is written directly meanwhile, and the next body message sends the rest first: the
    browser reads every piece whole and in order."""
    request = parse_request_head(GET)
    assert request is not None
    handler = Direct(piece=bytes(range(256)) * 39, fill=True)  # 9,984 bytes: never aligned
    async with tcp_pair() as (browser, server), trio.open_nursery() as nursery:
        server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        browser.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        ran = running(Exchange(Client(server), request, handler.handle), nursery)
        await handler.filled.wait()
        assert handler.answers[1:] == [HELD, REFUSED]
        with trio.fail_after(10):  # a lost rest leaves the browser waiting for the chunk
            assert await read_body(browser) == b"".join(handler.written) + b"end"
    assert ran == [True]


class Whole:
    """A handler that answers through the exchange's RESPOND_NOW (a whole response at once),
    recording what it answered; `first` sends a head the usual way before."""

    def __init__(self, data: bytes, first: bool = False) -> None:
        self.data, self.first = data, first
        self.answers: list[bool] = []

    async def handle(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        respond = scope["extensions"][RESPOND_NOW]
        if self.first:
            await send(start([(b"content-length", b"%d" % len(self.data))]))
        self.answers.append(respond(200, [(b"content-length", b"%d" % len(self.data))], self.data))
        self.answers.append(respond(200, [(b"content-length", b"0")], b""))  # one response only
        if self.first:
            await send(body(self.data))


async def test_a_whole_response_goes_out_at_once_and_only_once() -> None:
    request = parse_request_head(GET)
    assert request is not None
    handler = Whole(b"hello")
    async with tcp_pair() as (browser, server):
        exchange = Exchange(Client(server), request, handler.handle)
        assert await exchange.run() is True  # kept alive: the response was whole
        assert await read_body(browser) == b"hello"
    assert handler.answers == [True, False]
    assert exchange.reply is Reply.COMPLETE


async def test_a_whole_response_is_refused_once_another_began() -> None:
    request = parse_request_head(GET)
    assert request is not None
    handler = Whole(b"hello", first=True)
    async with tcp_pair() as (browser, server):
        exchange = Exchange(Client(server), request, handler.handle)
        assert await exchange.run() is True
        assert await read_body(browser) == b"hello"
    assert handler.answers == [False, False]


async def test_what_the_socket_does_not_take_of_a_whole_response_is_sent_before_the_end() -> None:
    """A response larger than the socket takes at once: the rest is held and the exchange
    sends it before it ends; the browser reads it whole."""
    request = parse_request_head(GET)
    assert request is not None
    data = bytes(range(256)) * 1000
    handler = Whole(data)
    async with tcp_pair() as (browser, server), trio.open_nursery() as nursery:
        server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        browser.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        ran = running(Exchange(Client(server), request, handler.handle), nursery)
        with trio.fail_after(10):
            assert await read_body(browser) == data
    assert handler.answers == [True, False]
    assert ran == [True]
