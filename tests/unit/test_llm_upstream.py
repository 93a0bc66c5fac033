"""The LLM proxy's client to the Anthropic API (llm/upstream.py) against a scripted HTTP/1.1
server on loopback: the head it sends, keep-alive, stale connections, TLS, failures."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import h11
import httpx
import pytest
import trio
import trio.testing

from agentserver.llm import upstream, upstream_httpx
from agentserver.llm.upstream import (
    Broken,
    InvalidRequest,
    Unreachable,
    UpstreamClient,
    build_request,
)
from tests.support.tcp import serve_on_free_port
from tests.support.tls import ThrowawayAuthority

Received = tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]


@dataclass
class Scripted:
    """An HTTP/1.1 server whose `answer` decides each request's fate; it records requests
    (method, target, headers, body) and counts connections."""

    answer: Callable[[Scripted, h11.Connection, trio.abc.Stream], Awaitable[bool]]
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    streams: list[trio.abc.Stream] = field(default_factory=list)

    async def serve(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        self.streams.append(stream)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                method, target, headers, body = b"", b"", [], b""
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                    elif isinstance(event, h11.Request):
                        method, target, headers = event.method, event.target, list(event.headers)
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:
                        return
                self.received.append((method, target, headers, body))
                if not await self.answer(self, conn, stream):
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            await stream.aclose()


async def ok(server: Scripted, conn: h11.Connection, stream: trio.abc.Stream) -> bool:
    """A small JSON answer."""
    body = b'{"ok": true}'
    data = conn.send(
        h11.Response(
            status_code=200,
            headers=[("content-type", "application/json"), ("content-length", str(len(body)))],
        )
    )
    await stream.send_all((data or b"") + (conn.send(h11.Data(data=body)) or b""))
    await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
    return True


@asynccontextmanager
async def serving(
    answer: Callable[[Scripted, h11.Connection, trio.abc.Stream], Awaitable[bool]] = ok,
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[tuple[Scripted, str]]:
    """A scripted server on loopback and its base URL (https with `tls`)."""
    server = Scripted(answer)

    async def handler(stream: trio.SocketStream) -> None:
        if tls is None:
            await server.serve(stream)
            return
        wrapped = trio.SSLStream(stream, tls, server_side=True)
        try:
            await wrapped.do_handshake()
        except trio.BrokenResourceError:
            return
        await server.serve(wrapped)

    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_on_free_port, handler))
        scheme = "https" if tls is not None else "http"
        yield server, f"{scheme}://127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


async def call(client: UpstreamClient, method: str, url: str, body: bytes = b"") -> bytes:
    """One call, its whole answer read; returns the body."""
    response = await client.send(build_request(method, url, [], body))
    try:
        return b"".join([chunk async for chunk, _ in response.chunks()])
    finally:
        await response.aclose()


def test_the_request_head_is_the_one_httpx_sent() -> None:
    """Host first, httpx's defaults where the caller gave none, the caller's headers in order
    (repeats kept), Content-Length from the body: the head httpx built, in its order."""
    given = [  # the proxy always names an encoding (identity: it reads usage as it passes)
        (b"content-type", b"application/json"),
        (b"accept-encoding", b"identity"),
        (b"anthropic-beta", b"a"),
        (b"anthropic-beta", b"b"),
        (b"user-agent", b"opencode/1"),
    ]
    url = "https://api.example.com:8443/gateway/v1/messages?beta=true&x=%2F"
    request = build_request("POST", url, given, b"{}")
    built = httpx.AsyncClient().build_request("POST", url, headers=given, content=b"{}")
    ours = [(bytes(n), bytes(v)) for n, v in request.head.headers]
    assert ours[0] == (b"host", b"api.example.com:8443")
    assert ours == [(n.lower(), v) for n, v in built.headers.raw]
    assert [v for n, v in ours if n == b"anthropic-beta"] == [b"a", b"b"]
    assert request.head.target == built.url.raw_path
    empty = build_request("POST", url, [], b"")
    assert (b"content-length", b"0") in list(empty.head.headers)
    assert not any(
        n == b"content-length" for n, _ in build_request("GET", url, [], b"").head.headers
    )


@pytest.mark.parametrize(
    ("url", "headers"),
    [
        ("http://example.com:port/v1", []),
        ("ftp://example.com/v1", []),
        ("http://example.com/v1", [(b"bad name", b"x")]),
        ("http://example.com/v1", [(b"x-a", b"line\r\nbreak")]),
    ],
)
def test_what_cannot_be_sent_is_refused_when_built(
    url: str, headers: list[tuple[bytes, bytes]]
) -> None:
    """A URL httpx refuses, a scheme other than http(s), or a header h11 cannot write is an
    `InvalidRequest` before anything is sent."""
    with pytest.raises(InvalidRequest):
        build_request("POST", url, headers, b"")


async def test_calls_share_one_kept_alive_connection() -> None:
    """Calls one after another reuse one connection and each gets its whole answer."""
    client = UpstreamClient()
    async with serving() as (server, url):
        for _ in range(3):
            assert await call(client, "POST", url + "/v1/messages", b"{}") == b'{"ok": true}'
    client.close()
    assert server.connections == 1
    assert [r[1] for r in server.received] == [b"/v1/messages"] * 3


async def test_a_connection_the_server_closed_while_idle_is_not_used() -> None:
    """An idle connection the server has closed is dropped when taken: a POST then goes on a
    new connection and succeeds (nothing was sent on the dead one)."""
    client = UpstreamClient()
    async with serving() as (server, url):
        await call(client, "POST", url + "/v1/messages", b"{}")
        await server.streams[0].aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert await call(client, "POST", url + "/v1/messages", b"{}") == b'{"ok": true}'
    client.close()
    assert server.connections == 2
    assert len(server.received) == 2


def hanging_up_on(
    number: int,
) -> Callable[[Scripted, h11.Connection, trio.abc.Stream], Awaitable[bool]]:
    """Answers every request but the `number`th, on which it closes without a word."""

    async def answer(server: Scripted, conn: h11.Connection, stream: trio.abc.Stream) -> bool:
        if len(server.received) == number:
            return False
        return await ok(server, conn, stream)

    return answer


async def test_a_stale_connection_is_retried_once_for_an_idempotent_call() -> None:
    """A GET whose reused connection closes before any answer is sent again on a new one."""
    client = UpstreamClient()
    async with serving(hanging_up_on(2)) as (server, url):
        await call(client, "GET", url + "/v1/models")
        assert await call(client, "GET", url + "/v1/models") == b'{"ok": true}'
    client.close()
    assert server.connections == 2
    assert len(server.received) == 3


async def test_a_post_is_never_sent_twice() -> None:
    """A POST whose reused connection closes before any answer fails as `Unreachable`: the
    server may have acted on it, so it is not sent again."""
    client = UpstreamClient()
    async with serving(hanging_up_on(2)) as (server, url):
        await call(client, "POST", url + "/v1/messages", b"{}")
        with pytest.raises(Unreachable):
            await call(client, "POST", url + "/v1/messages", b"{}")
    client.close()
    assert server.connections == 1
    assert len(server.received) == 2


async def test_an_answer_broken_off_mid_body_is_broken() -> None:
    """An answer whose connection closes before its declared length is `Broken`, and the
    connection is not kept."""

    async def short(server: Scripted, conn: h11.Connection, stream: trio.abc.Stream) -> bool:
        head = h11.Response(status_code=200, headers=[("content-length", "100")])
        await stream.send_all((conn.send(head) or b"") + (conn.send(h11.Data(data=b"x")) or b""))
        return False

    client = UpstreamClient()
    async with serving(short) as (_, url):
        response = await client.send(build_request("GET", url + "/v1/models", [], b""))
        with pytest.raises(Broken):
            async for _ in response.chunks():
                pass
        await response.aclose()
    assert client.idle.get(response._conn.origin, []) == []
    assert client.slots.value == upstream.MAX_CONNECTIONS


async def test_events_pass_as_they_arrive() -> None:
    """A streamed answer's first chunk reaches the caller while the rest is still held back;
    an answer closed before its end does not keep its connection."""
    release = trio.Event()

    async def stream_events(
        server: Scripted, conn: h11.Connection, stream: trio.abc.Stream
    ) -> bool:
        head = h11.Response(status_code=200, headers=[("content-type", "text/event-stream")])
        data = conn.send(head) or b""
        data += conn.send(h11.Data(data=b"event: message_start\n\n")) or b""
        await stream.send_all(data)
        await release.wait()
        await stream.send_all(conn.send(h11.Data(data=b"event: message_stop\n\n")) or b"")
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
        return True

    client = UpstreamClient()
    async with serving(stream_events) as (_, url):
        response = await client.send(build_request("POST", url + "/v1/messages", [], b"{}"))
        assert response.header(b"content-type") == b"text/event-stream"
        chunks = response.chunks()
        assert await chunks.__anext__() == (b"event: message_start\n\n", False)
        await response.aclose()
        release.set()
    assert client.idle.get(response._conn.origin, []) == []


async def test_a_refused_connection_is_unreachable() -> None:
    """Nothing listening: `Unreachable`, and the connection slot is given back."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()
    client = UpstreamClient()
    with pytest.raises(Unreachable):
        await call(client, "POST", f"http://127.0.0.1:{port}/v1/messages", b"{}")
    assert client.slots.value == upstream.MAX_CONNECTIONS


async def test_a_handshake_that_never_ends_times_out(autojump_clock: trio.abc.Clock) -> None:
    """A server that accepts but never answers the TLS handshake is `Unreachable` once the
    connect timeout is over."""

    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_on_free_port, silent))
        client = UpstreamClient()
        started = trio.current_time()
        with pytest.raises(Unreachable):
            await call(client, "POST", f"https://127.0.0.1:{port}/v1/messages", b"{}")
        assert trio.current_time() - started == pytest.approx(upstream.CONNECT_TIMEOUT)
        nursery.cancel_scope.cancel()


async def test_tls_is_verified() -> None:
    """Over TLS, a certificate from an authority the client does not trust is refused
    (`Unreachable`, nothing sent); one it trusts is accepted, and ALPN offers http/1.1."""
    authority = ThrowawayAuthority()
    async with serving(tls=authority.server_context()) as (server, url):
        with pytest.raises(Unreachable):
            await call(UpstreamClient(), "POST", url + "/v1/messages", b"{}")
        assert server.received == []
        trusting = UpstreamClient(ssl_context=authority.client_context())
        assert await call(trusting, "POST", url + "/v1/messages", b"{}") == b'{"ok": true}'
        trusting.close()
    assert len(server.received) == 1


def test_a_proxy_in_the_environment_keeps_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTPS_PROXY sends the API's host through httpx (which honours it); NO_PROXY for that
    host, or no proxy at all, uses the proxy's own client."""
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert not upstream_httpx.proxied("https://api.anthropic.com")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    assert upstream_httpx.proxied("https://api.anthropic.com")
    monkeypatch.setenv("NO_PROXY", "api.anthropic.com")
    assert not upstream_httpx.proxied("https://api.anthropic.com")


async def test_through_httpx_the_same_head_is_sent() -> None:
    """The httpx fallback sends the head and body the proxy's own client built, unchanged,
    and passes the answer on."""
    given = [(b"content-type", b"application/json"), (b"x-api-key", b"sk-real")]
    async with serving() as (server, url), httpx.AsyncClient() as client:
        request = build_request("POST", url + "/v1/messages?beta=true", given, b"{}")
        answer = await upstream_httpx.HttpxUpstream(client).send(request)
        body = b"".join([chunk async for chunk, _ in answer.chunks()])
        await answer.aclose()
    assert (answer.status_code, body) == (200, b'{"ok": true}')
    method, target, headers, sent = server.received[0]
    assert (method, target, sent) == (b"POST", b"/v1/messages?beta=true", b"{}")
    assert headers == [(bytes(n), bytes(v)) for n, v in request.head.headers]


async def test_a_last_piece_is_known_when_the_end_comes_with_it() -> None:
    """A sized answer read whole at once is one piece marked last (the proxy sends it with
    the answer's end); a stream's pieces before its end are not."""
    client = UpstreamClient()
    async with serving() as (_, url):
        response = await client.send(build_request("GET", url + "/v1/models", [], b""))
        pieces = [piece async for piece in response.chunks()]
        await response.aclose()
    client.close()
    assert pieces == [(b'{"ok": true}', True)]


async def test_an_early_answer_to_a_body_not_read_is_passed_on() -> None:
    """A server that answers (413) after the head and closes without reading a large body
    makes the body's write fail; the answer that came first is still read and passed on."""

    async def early(stream: trio.SocketStream) -> None:
        received = b""
        while b"\r\n\r\n" not in received:
            received += await stream.receive_some(65536)
        await stream.send_all(
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 5\r\nconnection: close\r\n\r\nlarge"
        )
        stream.socket.close()

    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_on_free_port, early))
        client = UpstreamClient()
        url = f"http://127.0.0.1:{port}/v1/messages"
        response = await client.send(build_request("POST", url, [], b"x" * (32 << 20)))
        body = b"".join([chunk async for chunk, _ in response.chunks()])
        await response.aclose()
        nursery.cancel_scope.cancel()
    assert (response.status_code, body) == (413, b"large")
